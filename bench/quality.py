"""Retrieval and similarity quality through the pipeline, next to the published scores of the same model.

SciFact (BEIR): the 5,183 abstracts are loaded as documents (title + abstract), chunked, embedded and
synced; each of the 300 test queries goes through `match_documents`; a document ranks by its best chunk;
nDCG@10 is compared with MTEB's published score for the model (which embeds title + text, first 256 tokens).
ASSIN 2 (Portuguese STS): every sentence goes in as a dor and is embedded by the sync; the cosine of the two
stored vectors of each pair is compared with the gold similarity (Spearman).

    python bench/quality.py [--evaldata ../shared/evaldata] [--only scifact|assin2] [--backends torch,onnx-int8]

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

from bench.common import ROOT, machine, scratch_database, table

PUBLISHED = {
    "sentence-transformers/all-MiniLM-L6-v2": {"scifact": 0.6451, "assin2": 0.5644},
    "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2": {"scifact": 0.4849, "assin2": 0.7146},
}


def ndcg_at_10(ranked: list[str], relevant: dict[str, int]) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:10]))
    ideal = sorted(relevant.values(), reverse=True)[:10]
    idcg = sum(gain / math.log2(i + 2) for i, gain in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def scifact(url: str, worker: object, data: Path) -> tuple[float, float, dict[str, float]]:
    from pipeline.db import connect

    started = time.perf_counter()
    with connect(url) as conn, connect(url) as spare:
        with conn.transaction(), conn.cursor().copy("copy documents (title, content, metadata) from stdin") as copy:
            for line in (data / "scifact" / "corpus.jsonl").open(encoding="utf-8"):
                doc = json.loads(line)
                copy.write_row((doc["title"], doc["text"], json.dumps({"corpus_id": doc["_id"]})))
        report = worker.drain(conn, ["documents"], spare=spare)  # type: ignore[attr-defined]
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
        scores, latencies = [], []
        for query_id, vector in zip(ids, vectors, strict=True):
            t0 = time.perf_counter()
            rows = conn.execute(
                "select metadata->>'corpus_id' as doc, similarity from match_documents(%s, 100)", (vector,)
            ).fetchall()
            latencies.append(time.perf_counter() - t0)
            ranked: list[str] = []
            for row in rows:  # best chunk first: keep each document's first appearance
                if row["doc"] not in ranked:
                    ranked.append(row["doc"])
            scores.append(ndcg_at_10(ranked, qrels[query_id]))
    latencies.sort()
    extra = {
        "documents": report.embedded,
        "chunks": report.chunks,
        "sync_s": sync_s,
        "query_p50_ms": 1000 * latencies[len(latencies) // 2],
        "query_p95_ms": 1000 * latencies[int(len(latencies) * 0.95)],
        "queries": len(ids),
    }
    return sum(scores) / len(scores), time.perf_counter() - started, extra


def assin2(url: str, worker: object, data: Path) -> tuple[float, float, dict[str, Any]]:
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
    extra = {"pairs": len(pairs), "sentences": len(sentences), "vectors": vectors}
    return float(rho), time.perf_counter() - started, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaldata", type=Path, default=ROOT.parent / "shared" / "evaldata")
    parser.add_argument("--only", choices=["scifact", "assin2"])
    parser.add_argument("--backends", default="torch", help="comma-separated: torch, onnx-int8 (default torch)")
    args = parser.parse_args()

    import numpy as np

    from pipeline.config import Settings
    from pipeline.db import connect
    from pipeline.embedding import parse_identity
    from pipeline.sync import prepare_worker

    rows = []
    reference: dict[str, Any] | None = None
    for backend in args.backends.split(","):
        with scratch_database() as url:
            with connect(url) as conn:
                worker = prepare_worker(conn, Settings(backend=backend))
            name, _ = parse_identity(worker.embedder.name)
            published = PUBLISHED.get(name, {})
            if args.only in (None, "assin2"):
                rho, seconds, extra = assin2(url, worker, args.evaldata)
                vectors = extra["vectors"]
                agreement = ""
                if reference is None:
                    reference = vectors
                else:
                    cosines = np.asarray([float(vectors[s] @ reference[s]) for s in reference])
                    agreement = (
                        f"; cosine to the first backend's vectors: mean {cosines.mean():.4f}, min {cosines.min():.4f}"
                    )
                rows.append(
                    [
                        "ASSIN 2 STS (pt), cosine Spearman",
                        backend,
                        f"{rho:.4f}",
                        published.get("assin2", "-"),
                        f"{seconds:.0f}s",
                        f"{extra['pairs']} pairs, {extra['sentences']} sentences synced as dores{agreement}",
                    ]
                )
            if args.only in (None, "scifact"):
                score, seconds, extra = scifact(url, worker, args.evaldata)
                rows.append(
                    [
                        "SciFact, nDCG@10",
                        backend,
                        f"{score:.4f}",
                        published.get("scifact", "-"),
                        f"{seconds:.0f}s",
                        f"{extra['documents']} documents, {extra['chunks']} chunks, sync {extra['sync_s']:.0f}s; "
                        f"{extra['queries']} queries, match_documents p50 {extra['query_p50_ms']:.1f} ms, "
                        f"p95 {extra['query_p95_ms']:.1f} ms",
                    ]
                )
    print(f"\nmachine: {machine()}; model {name}\n")
    print(table(["benchmark", "backend", "pipeline", "published (MTEB)", "time", "notes"], rows))


if __name__ == "__main__":
    main()
