"""HNSW quality and speed of `match_documents` over many chunks (default 100,000).

Vectors are synthetic but shaped like sentence embeddings: unit vectors scattered around 2,000 topic
centres. Recall@10 of the HNSW index (m 16, ef_construction 64) is measured against an exact scan for
several `hnsw.ef_search` values, with the latency of the SQL call (median and p95). Then the same vectors
as dores, the last `--waiting` of them still waiting for the index (`embedding_indexed` false, as after a
burst: in `embedding`, outside the HNSW graph), searched three ways: `match_dores` (the index plus an exact
scan of the tail), the fast form of plain SQL (the same union, written by hand), and a user's own
`order by embedding <=> q limit 10` (always right: the partial index does not serve it, so it scans). Recall@10
against an exact scan of all of them, and latency.

    python bench/retrieval.py [--rows 100000] [--queries 200] [--m 16] [--ef-construction 64] [--vectors scifact]
                              [--waiting 10000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, scratch_database, table


def vectors(n: int, topics: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, 384))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, topics, n)] + rng.normal(scale=0.06, size=(n, 384))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def scifact_vectors(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """SciFact's 5,183 abstracts (title + text) and 1,109 queries, embedded with the onnx-int8 backend."""
    import json

    from pipeline.config import Settings
    from pipeline.model import load_embedder

    embedder = load_embedder(Settings(backend="onnx-int8"))
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").open(encoding="utf-8")]
    queries = [json.loads(line)["text"] for line in (folder / "queries.jsonl").open(encoding="utf-8")]
    corpus = embedder.embed([f"{d['title']}\n\n{d['text']}" for d in docs])
    return corpus, embedder.embed(queries)


def waiting_tail(
    conn: Any, corpus: np.ndarray, queries: np.ndarray, waiting: int, m: int, ef_construction: int
) -> list[list[object]]:
    """The corpus as dores, all indexed, then with the last `waiting` rows waiting: `match_dores`, the fast
    plain SQL, and the plain `order by`."""
    conn.execute("drop index dores_embedding_idx")
    conn.execute("alter table dores disable trigger user")
    out = []
    for label, tail in (("match_dores, all indexed", 0), (f"match_dores, {waiting} waiting", waiting)):
        conn.execute("truncate dores")
        conn.execute("drop index if exists dores_embedding_idx")
        split = len(corpus) - tail
        with (
            conn.transaction(),
            conn.cursor().copy("copy dores (dor_base, embedding, embedding_indexed) from stdin (format binary)") as copy,  # noqa: E501
        ):
            copy.set_types(["text", "vector", "bool"])
            for i, vector in enumerate(corpus):
                copy.write_row((f"dor {i}", vector, i < split))
        conn.execute("set maintenance_work_mem = '1GB'")
        conn.execute(
            "create index dores_embedding_idx on dores using hnsw (embedding vector_cosine_ops)"
            f" with (m = {m}, ef_construction = {ef_construction}) where embedding_indexed"
        )
        conn.execute("vacuum analyze dores")
        truths = [
            {r["id"] for r in conn.execute("select id from dores order by (embedding <=> %s) + 0 limit 10", (q,))}
            for q in queries
        ]
        for form, statement in FORMS.items():
            recalls, latencies = [], []
            with conn.transaction():
                conn.execute("set local hnsw.ef_search = 100")
                for q, truth in zip(queries, truths, strict=True):
                    t0 = time.perf_counter()
                    got = conn.execute(statement, {"q": q}).fetchall()
                    latencies.append(1000 * (time.perf_counter() - t0))
                    recalls.append(len({r["id"] for r in got} & truth) / 10)
            latencies.sort()
            out.append(
                [
                    f"{label}: {form} (100)",
                    f"{statistics.mean(recalls):.4f}",
                    f"{latencies[len(latencies) // 2]:.2f}",
                    f"{latencies[int(len(latencies) * 0.95)]:.2f}",
                ]
            )
    return out


FORMS = {
    "match_dores": "select id from match_dores(%(q)s, 10)",
    "plain SQL, fast form": (
        "select id from ((select id, embedding <=> %(q)s as d from dores where embedding_indexed"
        " order by embedding <=> %(q)s limit 10) union all (select id, embedding <=> %(q)s from dores"
        " where embedding is not null and not embedding_indexed order by 2 limit 10)) n order by d limit 10"
    ),
    "plain order by embedding <=> q": "select id from dores order by embedding <=> %(q)s limit 10",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--m", type=int, default=16, help="HNSW m (default 16, the schema's)")
    parser.add_argument("--ef-construction", type=int, default=64, help="HNSW ef_construction (default 64)")
    parser.add_argument(
        "--vectors",
        choices=["synthetic", "scifact"],
        default="synthetic",
        help="scifact: real vectors, SciFact's abstracts (first 256 tokens) and its queries, embedded by onnx-int8",
    )
    parser.add_argument(
        "--waiting", type=int, default=10_000, help="dores whose vectors wait for the index (default: the cap); 0: skip"
    )
    parser.add_argument("--evaldata", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "evaldata")
    args = parser.parse_args()

    from pipeline.db import connect

    if args.vectors == "scifact":
        corpus, queries = scifact_vectors(args.evaldata / "scifact")
        args.rows, args.queries = len(corpus), len(queries)
    else:
        data = vectors(args.rows + args.queries, topics=2000, seed=3)
        corpus, queries = data[: args.rows], data[args.rows :]
    rows = []
    with scratch_database() as url, connect(url) as conn:
        conn.execute("drop index document_chunks_embedding_idx")
        conn.execute("alter table documents disable trigger user")
        doc = conn.execute("insert into documents (title, content) values ('bench', 'x') returning id").fetchone()["id"]
        with (
            conn.transaction(),
            conn.cursor().copy(
                "copy document_chunks (document_id, chunk_index, content, embedding, embedding_model, content_hash) "
                "from stdin (format binary)"
            ) as copy,
        ):
            copy.set_types(["int8", "int4", "text", "vector", "text", "text"])
            for i, vector in enumerate(corpus):
                copy.write_row((doc, i, f"chunk {i}", vector, "synthetic", "x"))
        started = time.perf_counter()
        conn.execute("set maintenance_work_mem = '1GB'")
        conn.execute(
            "create index document_chunks_embedding_idx on document_chunks "
            f"using hnsw (embedding vector_cosine_ops) with (m = {args.m}, ef_construction = {args.ef_construction})"
        )
        build_s = time.perf_counter() - started
        conn.execute("analyze document_chunks")

        exact = []
        for q in queries:
            ids = conn.execute(
                "select id from document_chunks order by (embedding <=> %s) + 0 limit 10", (q,)
            ).fetchall()
            exact.append({r["id"] for r in ids})
        for ef in (40, 64, 100, 200):
            recalls, latencies = [], []
            with conn.transaction():
                conn.execute(f"set local hnsw.ef_search = {ef}")
                for q, truth in zip(queries, exact, strict=True):
                    t0 = time.perf_counter()
                    got = conn.execute(
                        "select id from document_chunks order by embedding <=> %s limit 10", (q,)
                    ).fetchall()
                    latencies.append(1000 * (time.perf_counter() - t0))
                    recalls.append(len({r["id"] for r in got} & truth) / 10)
            latencies.sort()
            rows.append(
                [
                    ef,
                    f"{statistics.mean(recalls):.4f}",
                    f"{latencies[len(latencies) // 2]:.2f}",
                    f"{latencies[int(len(latencies) * 0.95)]:.2f}",
                ]
            )
        # match_documents itself (it sets ef_search = 100 for its own call)
        recalls, latencies = [], []
        for q, truth in zip(queries, exact, strict=True):
            t0 = time.perf_counter()
            got = conn.execute("select id from match_documents(%s, 10)", (q,)).fetchall()
            latencies.append(1000 * (time.perf_counter() - t0))
            recalls.append(len({r["id"] for r in got} & truth) / 10)
        latencies.sort()
        rows.append(
            [
                "match_documents (100)",
                f"{statistics.mean(recalls):.4f}",
                f"{latencies[len(latencies) // 2]:.2f}",
                f"{latencies[int(len(latencies) * 0.95)]:.2f}",
            ]
        )
        if args.waiting:
            rows += waiting_tail(conn, corpus, queries, args.waiting, args.m, args.ef_construction)
    print(
        f"\nmachine: {machine()}; {args.rows} {args.vectors} vectors, {args.queries} queries; HNSW m {args.m}, "
        f"ef_construction {args.ef_construction}, build {build_s:.0f}s\n"
    )
    print(table(["hnsw.ef_search", "recall@10", "median ms", "p95 ms"], rows))


if __name__ == "__main__":
    main()
