"""Segment fits over many stored 384-dim vectors (default 100,000; synthetic: clustered unit vectors with
matching synthetic texts), with the HNSW index in place as in production.

Reports: the first fit (every row gets a segment), a refit after 5% more rows (warm start + Hungarian
matching: few rows change), and the process's memory.

    python bench/segments.py [--rows 100000] [--clusters 12]
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, scratch_database, table

WORDS = [
    "estoque loja venda produto",
    "paciente consulta clínica agenda",
    "aluno escola matrícula turma",
    "fábrica máquina produção linha",
    "frota entrega rota motorista",
    "imposto contábil fechamento balancete",
    "cliente atendimento reclamação suporte",
    "caixa pagamento cobrança inadimplência",
    "equipe contratação treinamento rotatividade",
    "marketing campanha anúncio conversão",
    "contrato jurídico prazo processo",
    "energia consumo custo desperdício",
]


def synthetic(n: int, clusters: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, 384))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = rng.integers(0, clusters, n)
    vectors = centers[labels] + rng.normal(scale=0.045, size=(n, 384))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = []
    for i, label in enumerate(labels):
        words = WORDS[label % len(WORDS)].split()
        texts.append(f"{words[i % 4]} e {words[(i + 1) % 4]} com problema {i}")
    return vectors.astype(np.float32), texts, labels


def load(conn: object, vectors: np.ndarray, texts: list[str]) -> None:
    with (
        conn.transaction(),
        conn.cursor().copy(  # type: ignore[attr-defined]
            "copy dores (dor_base, embedding, embedding_model, content_hash, embedded_at) from stdin (format binary)"
        ) as copy,
    ):
        copy.set_types(["text", "vector", "text", "text", "timestamptz"])
        now = __import__("datetime").datetime.now(__import__("datetime").UTC)
        for text, vector in zip(texts, vectors, strict=True):
            copy.write_row((text, vector, "synthetic", "x", now))
    conn.execute("delete from pipeline.queue")  # type: ignore[attr-defined]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--clusters", type=int, default=12)
    args = parser.parse_args()

    from sklearn.metrics import adjusted_rand_score

    from pipeline.db import connect
    from pipeline.segments import fit_database

    vectors, texts, truth = synthetic(args.rows + args.rows // 20, args.clusters, seed=1)
    base, extra = args.rows, args.rows // 20
    rows = []
    with scratch_database() as url, connect(url) as conn:
        conn.execute("drop index dores_embedding_idx")
        load(conn, vectors[:base], texts[:base])
        started = time.perf_counter()
        conn.execute("set maintenance_work_mem = '1GB'")
        conn.execute("create index dores_embedding_idx on dores using hnsw (embedding vector_cosine_ops)")
        index_s = time.perf_counter() - started
        before = rss_mib()

        # Meanwhile, another client inserts a row and searches every 0.2 s: how long does each wait?
        waits: dict[str, list[float]] = {"insert": [], "search": []}
        stop = threading.Event()

        def client() -> None:
            with connect(url) as other:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    other.execute("insert into dores (dor_base) values ('cliente novo durante o ajuste')")
                    waits["insert"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    other.execute("select id from match_dores(%s, 5)", (vectors[0],)).fetchall()
                    waits["search"].append(time.perf_counter() - t0)
                    time.sleep(0.2)

        probe = threading.Thread(target=client)
        probe.start()
        first = fit_database(conn, clusters=args.clusters)
        stop.set()
        probe.join()
        conn.execute("delete from dores where embedding is null")
        got = [r["segmento"] for r in conn.execute("select segmento from dores order by id")]
        ari = adjusted_rand_score(truth[:base], got)
        rows.append(
            ["first fit (all rows get a segment)", base, f"{first.seconds:.1f}", first.changed, f"{rss_mib():.0f}"]
        )

        load(conn, vectors[base:], texts[base:])
        previous = {
            r["id"]: r["segmento"] for r in conn.execute("select id, segmento from dores where segmento is not null")
        }
        second = fit_database(conn, clusters=args.clusters)
        now = {r["id"]: r["segmento"] for r in conn.execute("select id, segmento from dores")}
        kept = sum(now[i] == s for i, s in previous.items()) / len(previous)
        rows.append(
            [
                "refit after +5% rows (warm start)",
                base + extra,
                f"{second.seconds:.1f}",
                second.changed,
                f"{rss_mib():.0f}",
            ]
        )

    print(f"\nmachine: {machine()}; synthetic {args.clusters} clusters; HNSW index build {index_s:.0f}s (setup)")
    print(f"process peak RSS before fitting {before:.0f} MiB; ARI of the first fit {ari:.3f}; refit kept {kept:.1%}")
    print(
        f"during the first fit, another client: {len(waits['insert'])} inserts, longest {max(waits['insert']):.2f}s; "
        f"{len(waits['search'])} searches (match_dores), longest {max(waits['search']):.2f}s\n"
    )
    print(table(["fit", "rows", "seconds", "rows changed", "peak RSS MiB"], rows))


if __name__ == "__main__":
    main()
