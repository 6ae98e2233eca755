"""Daemon steady-state throughput against raw `SentenceTransformer.encode` of the same texts.

For each run: raw encode of N texts; then the daemon (model already loaded, waiting on NOTIFY) gets N rows
in one committed INSERT and the clock runs until every row is embedded (written and searchable), then
until every vector is in the HNSW index (the daemon moves waiting vectors into it once the queue is
empty). Prints a Markdown table.

    python bench/throughput.py [--rows 5000] [--runs 3] [--source leads] [--texts assin2] [--classifier]
                               [--backend onnx-int8] [--max-unindexed 0]

`--source leads` runs the same texts through a registered source keyed by uuid (`pipeline source add`)
instead of the built-in dores.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from bench.common import assin2_sentences, dores_texts, machine, scratch_database, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--batch-size", type=int, help="texts per forward pass, for both sides (default: the pipeline's, 32)"
    )
    parser.add_argument(
        "--source", choices=["dores", "leads"], default="dores", help="leads: a uuid-keyed source added by command"
    )
    parser.add_argument(
        "--texts",
        choices=["dores", "assin2"],
        default="dores",
        help="assin2: ASSIN 2's short Portuguese sentences (10-20 tokens) from --evaldata, as dor_base",
    )
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="on", help="the worker's commits")
    parser.add_argument(
        "--classifier", action="store_true", help="with an active 3-class classifier that scores every row"
    )
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx-int8"],
        default="torch",
        help="onnx-int8: the daemon and the raw side run that backend; raw torch encode is timed beside it",
    )
    parser.add_argument(
        "--max-unindexed",
        type=int,
        help="PIPELINE_MAX_UNINDEXED for the daemon (0: every vector goes into the HNSW index as it is written)",
    )
    parser.add_argument("--evaldata", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "evaldata")
    args = parser.parse_args()

    from pipeline.config import Settings
    from pipeline.daemon import Daemon
    from pipeline.db import connect
    from pipeline.model import resolve_model
    from pipeline.worker import prepare_worker

    if args.texts == "assin2":
        pairs = [(text, "") for text in assin2_sentences(args.evaldata, args.rows)]
        args.rows = len(pairs)
    else:
        pairs = dores_texts(args.rows)
    texts = [f"{d}\n{s}" if s else d for d, s in pairs]
    settings = Settings(interval=300.0, synchronous_commit=args.synchronous_commit, backend=args.backend)
    if args.batch_size:
        settings = dataclasses.replace(settings, batch_size=args.batch_size)
    if args.max_unindexed is not None:
        settings = dataclasses.replace(settings, max_unindexed=args.max_unindexed)
    with scratch_database() as url, connect(url) as conn:
        started = time.perf_counter()
        worker = prepare_worker(conn, settings)
        load_s = time.perf_counter() - started
        target = "dores (dor_base, solucao_graventum)"
        if args.source == "leads":
            from pipeline.source_admin import add_source

            conn.execute("create table leads (id uuid primary key default gen_random_uuid(), dor text, solucao text)")
            add_source(conn, name="leads", table="leads", text="concat_ws(E'\\n', dor, nullif(solucao, ''))")
            target = "leads (dor, solucao)"
        if args.classifier:  # trained on 300 rows first; the weights stay when the table is emptied
            from pipeline import classifiers

            with conn.transaction(), conn.cursor().copy(f"copy {target} from stdin") as copy:
                for dor, solucao in pairs[:300]:
                    copy.write_row((dor, solucao))
            worker.drain(conn)
            label = "(length(" + ("dor" if args.source == "leads" else "dor_base") + ") % 3)::text"
            classifiers.train(conn, "bench", source=args.source, label=label, score=False)
        name = worker.embedder.name
        if args.backend == "torch":
            model = worker.embedder.model  # type: ignore[attr-defined]
        else:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(resolve_model(None).source, device="cpu")
            worker.embedder.embed(texts[:256])  # warm-up
        model.encode(texts[:256], batch_size=settings.batch_size)  # warm-up

        daemon = Daemon(settings=settings, url=url, worker=worker)
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        time.sleep(1.0)

        def torch_run() -> float:
            t0 = time.perf_counter()
            model.encode(texts, batch_size=settings.batch_size, normalize_embeddings=True)
            return time.perf_counter() - t0

        def raw_run() -> float:
            if args.backend == "torch":
                return torch_run()
            torch_times.append(torch_run())
            t0 = time.perf_counter()
            worker.embedder.embed(texts)
            return time.perf_counter() - t0

        def pipeline_run() -> float:
            conn.execute(f"truncate {args.source}")
            with conn.transaction(), conn.cursor().copy(f"copy {target} from stdin") as copy:
                for dor, solucao in pairs:
                    copy.write_row((dor, solucao))
            t0 = time.perf_counter()  # committed: the NOTIFY is out
            # The queue empties in the same transaction that writes the vectors. Poll it gently while
            # batches remain (a scan over thousands of just-deleted queue rows 50 times a second would
            # steal CPU from the model), then often once the last claim is in flight, so that the end is
            # seen within 10 ms rather than up to a quarter of a second late (3% of a 4 s run).
            while left := conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"]:
                time.sleep(0.25 if left > settings.claim_size else 0.01)
            elapsed = time.perf_counter() - t0
            done = conn.execute(
                f"select count(*) as n from {args.source} where embedding is not null"
            ).fetchone()["n"]
            assert done == args.rows, f"only {done} of {args.rows} rows embedded"
            if args.classifier:
                scored = conn.execute("select count(*) as n from pipeline.predictions").fetchone()["n"]
                assert scored == args.rows, f"only {scored} of {args.rows} rows scored"
            waiting = f"select exists (select from {args.source} where not embedding_indexed) as waiting"
            while conn.execute(waiting).fetchone()["waiting"]:
                time.sleep(0.25)
            index_times.append(time.perf_counter() - t0)
            return elapsed

        # This machine's speed drifts by 10-20% over minutes: alternate which side goes first and
        # compare each pipeline run with the raw run beside it.
        raw_times, pipe_times, ratios, torch_times, index_times = [], [], [], [], []
        for run in range(args.runs):
            if run % 2 == 0:
                raw_times.append(raw_run())
                pipe_times.append(pipeline_run())
            else:
                pipe_times.append(pipeline_run())
                raw_times.append(raw_run())
            ratios.append(raw_times[-1] / pipe_times[-1])
            print(
                f"run {run + 1}: raw {raw_times[-1]:.2f}s, pipeline {pipe_times[-1]:.2f}s "
                f"(all in the index at {index_times[-1]:.2f}s), ratio {ratios[-1]:.3f}",
                file=sys.stderr,
            )
        daemon.stop.set()
        thread.join(10)

    raw, pipe, ratio = statistics.median(raw_times), statistics.median(pipe_times), statistics.median(ratios)
    raw_name = "raw SentenceTransformer.encode" if args.backend == "torch" else f"raw {args.backend} embed"
    extra = []
    if torch_times:
        speedups = [t / r for t, r in zip(torch_times, raw_times, strict=True)]
        torch_s = statistics.median(torch_times)
        extra = [
            ["raw SentenceTransformer.encode (torch fp32)", f"{torch_s:.2f}", f"{args.rows / torch_s:.0f}"],
            [
                f"speed-up of {args.backend} over torch (median of per-run ratios)",
                f"{statistics.median(speedups):.2f}",
                "",
            ],
        ]
    print(
        f"\nmachine: {machine()}; model {name}; {args.rows} {args.texts} texts into source {args.source}; "
        f"batch {settings.batch_size}, claim {settings.claim_size}, synchronous_commit {settings.synchronous_commit}, "
        f"max_unindexed {settings.max_unindexed}"
        f"{', one active classifier' if args.classifier else ''}; "
        f"median of {args.runs} runs\n"
    )
    print(
        table(
            ["what", "seconds", "rows/s"],
            [
                *extra,
                [raw_name, f"{raw:.2f}", f"{args.rows / raw:.0f}"],
                ["daemon: commit to all embedded (searchable)", f"{pipe:.2f}", f"{args.rows / pipe:.0f}"],
                ["ratio (raw / pipeline, median of per-run ratios)", f"{ratio:.3f}", ""],
                ["daemon: commit to all in the HNSW index", f"{statistics.median(index_times):.2f}", ""],
                ["model load (separate)", f"{load_s:.2f}", ""],
            ],
        )
    )


if __name__ == "__main__":
    main()
