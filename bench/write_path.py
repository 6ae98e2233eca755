"""The database's cost per embedded row, statement by statement, and what each index costs.

The worker's own statements (staging table, COPY of the vectors, the UPDATE ... FROM that writes them,
the DELETE of the queue rows, COMMIT; and, where vectors wait for the index, the moves into it that the
worker makes when it is idle) run on precomputed vectors of short Portuguese sentences (ASSIN 2's),
in batches of the worker's claim size, on one connection with nothing else running: the wall time of a
statement is then the server's (and the driver's) time for it. Each variant starts from the same table.

    python bench/write_path.py [--rows 3000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import assin2_sentences, machine, scratch_database, table

HNSW = "create index dores_embedding_idx on public.dores using hnsw (embedding vector_cosine_ops) with ({})"
HALF = (
    "create index dores_embedding_idx on public.dores using hnsw ((embedding::halfvec(384)) halfvec_cosine_ops)"
    " with ({})"
)
BITS = (
    "create index dores_embedding_idx on public.dores using hnsw"
    " ((binary_quantize(embedding)::bit(384)) bit_hamming_ops) with (m = 16, ef_construction = 64)"
)
FTS = (
    "create index dores_fts_idx on public.dores using gin "
    "(to_tsvector('portuguese'::regconfig, pipeline.dor_text(dor_base, solucao_graventum)))"
)
PARTS = ("staging + COPY", "UPDATE ... FROM", "DELETE queue", "COMMIT", "into the index when idle")
LATER = "as shipped, vectors written beside the index and moved into it when idle (the default)"


def variants() -> dict[str, list[str]]:
    """Index changes from the shipped schema (HNSW m 16, ef_construction 64; full-text GIN; segmento)."""
    drop = "drop index if exists dores_embedding_idx"
    return {
        "as shipped, every vector into the index as written (PIPELINE_MAX_UNINDEXED=0)": [],
        LATER: [],
        "no full-text index": ["drop index if exists dores_fts_idx"],
        "HNSW m 16, ef_construction 32": [drop, HNSW.format("m = 16, ef_construction = 32")],
        "HNSW m 12, ef_construction 32": [drop, HNSW.format("m = 12, ef_construction = 32")],
        "HNSW m 8, ef_construction 32": [drop, HNSW.format("m = 8, ef_construction = 32")],
        "HNSW halfvec, m 16, ef_construction 64": [drop, HALF.format("m = 16, ef_construction = 64")],
        "HNSW on binary_quantize (bit, hamming), m 16, ef_construction 64": [drop, BITS],
        "no HNSW index (lower bound)": [drop],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--evaldata", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "evaldata")
    args = parser.parse_args()

    from pipeline.config import Settings
    from pipeline.db import connect, query
    from pipeline.model import load_embedder
    from pipeline.sources import load_sources

    texts = assin2_sentences(args.evaldata, args.rows)
    embedder = load_embedder(Settings(backend="onnx-int8"))
    vectors = embedder.embed(texts)
    claim = Settings().claim_size
    results: dict[str, dict[str, list[float]]] = {}
    with scratch_database() as url, connect(url) as conn:
        conn.execute("insert into pipeline.state (key, value) values ('model', %s)", (embedder.name,))
        (source,) = load_sources(conn, ["dores"])
        for name, statements in variants().items():
            write = source.write_query(index_later=name == LATER)
            results[name] = {part: [] for part in (*PARTS, "total", "while embedding")}
            for _ in range(args.runs):
                conn.execute("truncate public.dores restart identity")
                conn.execute(FTS.replace("create index", "create index if not exists"))
                conn.execute(
                    HNSW.replace("create index", "create index if not exists").format("m = 16, ef_construction = 64")
                )
                for statement in statements:
                    conn.execute(statement)
                with conn.transaction(), conn.cursor().copy("copy public.dores (dor_base) from stdin") as copy:
                    for text in texts:
                        copy.write_row((text,))
                conn.execute("vacuum analyze public.dores")
                rows = conn.execute(
                    "select id::text as key, pipeline.content_hash(pipeline.dor_text(dor_base, solucao_graventum))"
                    " as hash from public.dores order by id"
                ).fetchall()
                spent = dict.fromkeys(PARTS, 0.0)

                def timed(part: str, work: Callable[[], object]) -> None:
                    t0 = time.perf_counter()
                    work()
                    spent[part] += time.perf_counter() - t0  # noqa: B023

                for start in range(0, len(rows), claim):
                    batch = rows[start : start + claim]
                    conn.execute("begin")

                    def stage(batch: list[dict[str, str]] = batch, start: int = start) -> None:
                        conn.execute(query("create_staging"))
                        with conn.cursor().copy(query("copy_rows")) as copy:
                            copy.set_types(["text", "vector", "text"])
                            for i, row in enumerate(batch):
                                copy.write_row((row["key"], vectors[start + i], row["hash"]))

                    timed("staging + COPY", stage)
                    timed(
                        "UPDATE ... FROM",
                        lambda write=write: conn.execute(write, {"model": embedder.name}).fetchall(),
                    )
                    keys = [row["key"] for row in batch]
                    timed(
                        "DELETE queue",
                        lambda keys=keys: conn.execute(query("delete_queue"), {"source": "dores", "ids": keys}),
                    )
                    timed("COMMIT", conn.commit)

                def move() -> None:
                    while True:
                        with conn.transaction():
                            if conn.execute(source.index_waiting_query(), {"limit": claim}).rowcount < claim:
                                return

                timed("into the index when idle", move)
                done = conn.execute("select count(*) as n from public.dores where embedding is not null").fetchone()
                assert done["n"] == len(rows)
                for part, seconds in spent.items():
                    results[name][part].append(1000 * seconds / len(rows))
                results[name]["total"].append(1000 * sum(spent.values()) / len(rows))
                results[name]["while embedding"].append(
                    1000 * (sum(spent.values()) - spent["into the index when idle"]) / len(rows)
                )
    print(
        f"\nmachine: {machine()}; {len(texts)} ASSIN 2 sentences, batches of {claim}; "
        f"ms per row, median of {args.runs} runs\n"
    )
    print(
        table(
            ["variant", *PARTS, "total ms/row", "of it while embedding"],
            [
                [
                    name,
                    *(f"{statistics.median(r[p]):.3f}" for p in PARTS),
                    f"{statistics.median(r['total']):.3f}",
                    f"{statistics.median(r['while embedding']):.3f}",
                ]
                for name, r in results.items()
            ],
        )
    )


if __name__ == "__main__":
    main()
