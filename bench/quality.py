"""Retrieval and similarity quality through the pipeline, next to the published scores of the same model.

SciFact (BEIR, English): the 5,183 abstracts go into a table registered as a chunked source with the
English full-text configuration (`pipeline source add scifact --chunked --language english`), are chunked,
embedded and synced; each of the 300 test queries goes through `match_scifact` (vectors alone, the same
function as match_documents) and `match_scifact_hybrid` (the default search path); a document ranks by its
best chunk; nDCG@10 is compared with MTEB's published score for the model (title + text, first 256 tokens).
`--chunk-tokens 254,128,192` runs it once per chunk size (each in its own database).
ASSIN 2 (Portuguese): every sentence goes in as a dor and is embedded by the sync; the cosine of the two
stored vectors of each pair is compared with the gold similarity (Spearman). The same rows then serve as a
Portuguese retrieval test: each pair with similarity >= 4 is a query (one sentence) and its answer (the
other), searched among all sentences through match_dores and match_dores_hybrid (nDCG@10, the query's own
row left out). Sample dores: the rank of the README's example through both.

    python bench/quality.py [--evaldata ../shared/evaldata] [--only scifact|assin2|dores]
                            [--backends torch,onnx-int8] [--chunk-tokens 254,128]

With several backends, each runs in its own database, and the ASSIN 2 sentences' stored vectors of each
backend are compared with the first's (mean and minimum cosine).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, SAMPLE, machine, scratch_database, table

PUBLISHED = {
    "sentence-transformers/all-MiniLM-L6-v2": {"scifact": 0.6451, "assin2": 0.5644},
    "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2": {"scifact": 0.4849, "assin2": 0.7146},
}


def ndcg_at_10(ranked: list[str], relevant: dict[str, int]) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:10]))
    ideal = sorted(relevant.values(), reverse=True)[:10]
    idcg = sum(gain / math.log2(i + 2) for i, gain in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def scifact(url: str, worker: object, data: Path, rrf_k: int = 20) -> tuple[dict[str, float], float, dict[str, Any]]:
    from pipeline.db import connect
    from pipeline.source_admin import add_source

    started = time.perf_counter()
    with connect(url) as conn, connect(url) as spare:
        conn.execute("create table public.scifact (id text primary key, title text, body text)")
        add_source(
            conn, name="scifact", table="public.scifact", text="pipeline.document_text(title, body)",
            chunked=True, language="english", backfill=False,
        )  # fmt: skip
        with conn.transaction(), conn.cursor().copy("copy scifact (id, title, body) from stdin") as copy:
            for line in (data / "scifact" / "corpus.jsonl").open(encoding="utf-8"):
                doc = json.loads(line)
                copy.write_row((doc["_id"], doc["title"], doc["text"]))
        report = worker.drain(conn, ["scifact"], spare=spare)  # type: ignore[attr-defined]
        sync_s = time.perf_counter() - started
        qrels: dict[str, dict[str, int]] = defaultdict(dict)
        for line in (data / "scifact" / "qrels" / "test.tsv").read_text().splitlines()[1:]:
            query_id, corpus_id, score = line.split("\t")
            qrels[query_id][corpus_id] = int(score)
        queries = {
            q["_id"]: q["text"]
            for q in map(json.loads, (data / "scifact" / "queries.jsonl").open())
            if q["_id"] in qrels
        }
        ids = list(queries)
        vectors = worker.embedder.embed([queries[i] for i in ids])  # type: ignore[attr-defined]
        calls = {
            "vector": ("match_scifact(%(v)s, 100)", lambda q, v: {"v": v}),
            "hybrid": (
                "match_scifact_hybrid(%(q)s, %(v)s, 100, rrf_k => %(k)s)",
                lambda q, v: {"q": q, "v": v, "k": rrf_k},
            ),
        }
        scores: dict[str, list[float]] = defaultdict(list)
        latencies: dict[str, list[float]] = defaultdict(list)
        for query_id, vector in zip(ids, vectors, strict=True):
            for mode, (call, params) in calls.items():
                t0 = time.perf_counter()
                rows = conn.execute(
                    f"select c.scifact_key as doc from {call} with ordinality m"
                    " join scifact_chunks c on c.id = m.id order by m.ordinality",
                    params(queries[query_id], vector),
                ).fetchall()
                latencies[mode].append(time.perf_counter() - t0)
                ranked: list[str] = []
                for row in rows:  # best chunk first: keep each document's first appearance
                    if row["doc"] not in ranked:
                        ranked.append(row["doc"])
                scores[mode].append(ndcg_at_10(ranked, qrels[query_id]))
    extra = {
        "documents": report.embedded,
        "chunks": report.chunks,
        "sync_s": sync_s,
        "queries": len(ids),
        "p50_ms": {mode: 1000 * sorted(values)[len(values) // 2] for mode, values in latencies.items()},
    }
    return {mode: sum(v) / len(v) for mode, v in scores.items()}, time.perf_counter() - started, extra


def assin2(url: str, worker: object, data: Path, rrf_k: int = 20) -> tuple[float, float, dict[str, Any]]:
    from scipy.stats import spearmanr

    from pipeline.db import connect

    started = time.perf_counter()
    pairs = [
        (p.findtext("t") or "", p.findtext("h") or "", float(p.get("similarity", "0")))
        for p in ET.parse(data / "assin2" / "assin2-test.xml").getroot().iter("pair")
    ]
    sentences = sorted({s for t, h, _ in pairs for s in (t, h)})
    with connect(url) as conn, connect(url) as spare:
        with conn.transaction(), conn.cursor().copy("copy dores (dor_base) from stdin") as copy:
            for sentence in sentences:
                copy.write_row((sentence,))
        worker.drain(conn, ["dores"], spare=spare)  # type: ignore[attr-defined]
        vectors = {
            r["dor_base"]: r["embedding"].to_numpy() for r in conn.execute("select dor_base, embedding from dores")
        }
        cosines = [float(vectors[t] @ vectors[h]) for t, h, _ in pairs]
        rho = spearmanr(cosines, [gold for _, _, gold in pairs]).statistic
        ids = {r["dor_base"]: r["id"] for r in conn.execute("select id, dor_base from dores")}
        retrieval: dict[str, list[float]] = defaultdict(list)
        for t, h, gold in pairs:
            if gold < 4:
                continue
            calls = (
                ("vector", "match_dores(%(v)s, 11)"),
                ("hybrid", "match_dores_hybrid(%(q)s, %(v)s, 11, rrf_k => %(k)s)"),
            )
            for mode, call in calls:
                found = [r["id"] for r in conn.execute(f"select id from {call}", {"q": t, "v": vectors[t], "k": rrf_k})]
                ranked = [i for i in found if i != ids[t]][:10]
                retrieval[mode].append(1 / math.log2(ranked.index(ids[h]) + 2) if ids[h] in ranked else 0.0)
    extra = {
        "pairs": len(pairs),
        "sentences": len(sentences),
        "vectors": vectors,
        "retrieval": {mode: sum(v) / len(v) for mode, v in retrieval.items()},
        "queries": len(retrieval["vector"]),
    }
    return float(rho), time.perf_counter() - started, extra


README_QUERY, README_TARGET = "clientes faltam às consultas", "Pacientes faltam às consultas"


def sample_dores(url: str, worker: object) -> dict[str, int | None]:
    """The rank of the README's example dor for the README's query, by vectors and by hybrid search."""
    from pipeline.csvio import import_dores
    from pipeline.db import connect
    from pipeline.search import search_dores

    with connect(url) as conn, connect(url) as spare:
        import_dores(conn, SAMPLE)
        worker.drain(conn, ["dores"], spare=spare)  # type: ignore[attr-defined]
        ranks: dict[str, int | None] = {}
        for mode, hybrid in (("vector", False), ("hybrid", True)):
            rows = search_dores(conn, worker.embedder, README_QUERY, k=50, hybrid=hybrid)  # type: ignore[attr-defined]
            found = [i for i, row in enumerate(rows, 1) if row["dor_base"].startswith(README_TARGET)]
            ranks[mode] = found[0] if found else None
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaldata", type=Path, default=ROOT.parent / "shared" / "evaldata")
    parser.add_argument("--only", choices=["scifact", "assin2", "dores"])
    parser.add_argument("--backends", default="torch", help="comma-separated: torch, onnx-int8 (default torch)")
    parser.add_argument(
        "--chunk-tokens", default="", help="SciFact: comma-separated chunk sizes in tokens (default: the model's)"
    )
    parser.add_argument("--rrf-k", type=int, default=20, help="SciFact, ASSIN 2: the hybrid functions' rrf_k (20)")
    parser.add_argument("--chunk-overlap", type=float, default=0.15, help="SciFact: share of a chunk repeated (0.15)")
    args = parser.parse_args()

    import numpy as np

    from pipeline.config import Settings
    from pipeline.db import connect
    from pipeline.model import parse_identity
    from pipeline.worker import prepare_worker

    def fresh_worker(url: str, backend: str, chunk_tokens: int | None = None) -> Any:
        with connect(url) as conn:
            settings = Settings(backend=backend, chunk_tokens=chunk_tokens, chunk_overlap=args.chunk_overlap)
            return prepare_worker(conn, settings)

    rows = []
    reference: dict[str, Any] | None = None
    sizes = [int(size) for size in args.chunk_tokens.split(",") if size] or [None]
    for backend in args.backends.split(","):
        if args.only in (None, "assin2"):
            with scratch_database() as url:
                worker = fresh_worker(url, backend)
                name, _ = parse_identity(worker.embedder.name)
                published = PUBLISHED.get(name, {})
                rho, seconds, extra = assin2(url, worker, args.evaldata, args.rrf_k)
            vectors = extra["vectors"]
            agreement = ""
            if reference is None:
                reference = vectors
            else:
                cosines = np.asarray([float(vectors[s] @ reference[s]) for s in reference])
                agreement = f"; cosine to the first backend's: mean {cosines.mean():.4f}, min {cosines.min():.4f}"
            rows.append(
                [
                    "ASSIN 2 STS (pt), cosine Spearman", backend, f"{rho:.4f}", "", published.get("assin2", "-"),
                    f"{seconds:.0f}s", f"{extra['pairs']} pairs, {extra['sentences']} sentences as dores{agreement}",
                ]
            )  # fmt: skip
            retrieval = extra["retrieval"]
            rows.append(
                [
                    "ASSIN 2 as retrieval (pt), nDCG@10", backend, f"{retrieval['vector']:.4f}",
                    f"{retrieval['hybrid']:.4f}", "-", "",
                    f"{extra['queries']} pairs with similarity >= 4: one sentence finds the other among all, "
                    "match_dores vs match_dores_hybrid",
                ]
            )  # fmt: skip
        if args.only in (None, "dores"):
            with scratch_database() as url:
                worker = fresh_worker(url, backend)
                name, _ = parse_identity(worker.embedder.name)
                ranks = sample_dores(url, worker)
            rows.append(
                [
                    "sample dores, rank of the README's dor", backend, str(ranks["vector"]), str(ranks["hybrid"]), "-",
                    "", f'"{README_QUERY}" -> "{README_TARGET}..." (goal: top 3)',
                ]
            )  # fmt: skip
        if args.only in (None, "scifact"):
            for size in sizes:
                with scratch_database() as url:
                    worker = fresh_worker(url, backend, size)
                    name, _ = parse_identity(worker.embedder.name)
                    published = PUBLISHED.get(name, {})
                    scores, seconds, extra = scifact(url, worker, args.evaldata, args.rrf_k)
                rows.append(
                    [
                        f"SciFact (en), nDCG@10, chunks of {worker.chunk_tokens} tokens, overlap {args.chunk_overlap}",
                        backend,
                        f"{scores['vector']:.4f}", f"{scores['hybrid']:.4f}", published.get("scifact", "-"),
                        f"{seconds:.0f}s",
                        f"{extra['documents']} documents, {extra['chunks']} chunks, sync {extra['sync_s']:.0f}s; "
                        f"{extra['queries']} queries, p50 {extra['p50_ms']['vector']:.1f} ms vector, "
                        f"{extra['p50_ms']['hybrid']:.1f} ms hybrid",
                    ]
                )  # fmt: skip
    print(f"\nmachine: {machine()}; model {name}\n")
    print(table(["benchmark", "backend", "vector", "hybrid", "published (MTEB)", "time", "notes"], rows))


if __name__ == "__main__":
    main()
