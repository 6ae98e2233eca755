"""Segments: fit (the seed's TF-IDF + KMeans, or KMeans on the stored vectors), name, keep numbers
stable across refits, store as data, and read them back."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import numpy as np
from psycopg import sql

from pipeline.db import Connection, query, translate_errors
from pipeline.errors import InputError, PipelineError
from pipeline.indexes import restore_vector_indexes, set_aside_vector_indexes
from pipeline.seed_tfidf import RANDOM_STATE, fit_tfidf, label_from_terms, top_terms
from pipeline.sources import Source, load_sources

logger = logging.getLogger(__name__)

MINIBATCH_ABOVE = 50_000
SILHOUETTE_SAMPLE = 3_000
_LOCK_KEY = 0x73_65_67_73  # "segs": one refit at a time per database



@dataclasses.dataclass
class SegmentInfo:
    segmento: int
    label: str
    top_terms: list[str]
    size: int


# -- stable numbering ----------------------------------------------------------------------------


def match_numbers(previous: np.ndarray | None, new: np.ndarray) -> list[int]:
    """The number each new centroid takes: the previous model's number of the centroid it matches best
    (Hungarian assignment on cosine similarity), fresh numbers for clusters with no counterpart."""
    k = len(new)
    if previous is None or len(previous) == 0:
        return list(range(k))
    from scipy.optimize import linear_sum_assignment

    similarity = _unit(new) @ _unit(previous).T
    rows, cols = linear_sum_assignment(-similarity)
    numbers = [-1] * k
    for r, c in zip(rows, cols, strict=True):
        numbers[r] = int(c)
    fresh = iter(range(len(previous), len(previous) + k))
    return [n if n >= 0 else next(fresh) for n in numbers]


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


# -- database mode -------------------------------------------------------------------------------


@dataclasses.dataclass
class FitResult:
    model_id: int
    method: str
    k: int
    n_rows: int
    changed: int
    score: float | None
    seconds: float
    segments: list[SegmentInfo]

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["seconds"] = round(self.seconds, 2)
        return data


def choose_k(vectors: np.ndarray, k_range: range, *, seed: int = RANDOM_STATE) -> tuple[int, dict[int, float]]:
    """The K in `k_range` with the best cosine silhouette on a sample."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), min(len(vectors), SILHOUETTE_SAMPLE), replace=False)]
    scores: dict[int, float] = {}
    for k in k_range:
        if k >= len(sample):
            break
        labels = KMeans(n_clusters=k, random_state=seed, n_init=3).fit_predict(sample)
        scores[k] = float(silhouette_score(sample, labels, metric="cosine"))
    if not scores:
        raise InputError(f"too few embedded rows ({len(vectors)}) to choose a number of segments")
    best = max(scores, key=lambda k: scores[k])
    return best, scores


def _kmeans(vectors: np.ndarray, k: int, init: np.ndarray | None) -> np.ndarray:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(vectors) > MINIBATCH_ABOVE:
        model: Any = MiniBatchKMeans(
            n_clusters=k,
            init=init if init is not None else "k-means++",
            n_init=1 if init is not None else 3,
            batch_size=4096,
            random_state=RANDOM_STATE,
        )
    else:
        model = KMeans(
            n_clusters=k,
            init=init if init is not None else "k-means++",
            n_init=1 if init is not None else 10,
            random_state=RANDOM_STATE,
        )
    return np.asarray(model.fit_predict(vectors))


def _read_rows(conn: Connection, source: Source) -> tuple[list[str], np.ndarray, list[str]]:
    """Keys, unit vectors and texts of every embedded row of `source`, streamed from a server-side cursor."""
    n = conn.execute(
        sql.SQL("select count(*) as n from {} t where {} is not null").format(source.table, source.vector)
    ).fetchone()["n"]
    keys: list[str] = []
    vectors = None
    texts: list[str] = []
    with conn.transaction(), conn.cursor(name="segment_read") as cursor:
        cursor.itersize = 5000
        cursor.execute(source.segment_read_query(), {})
        for i, row in enumerate(cursor):
            if i >= n:
                break
            vector = row["embedding"].to_numpy()
            if vectors is None:
                vectors = np.empty((n, len(vector)), dtype=np.float32)
            keys.append(row["key"])
            vectors[i] = vector
            texts.append(row["text"])
    count = len(texts)
    if vectors is None:
        vectors = np.empty((0, 384), dtype=np.float32)
    return keys, _unit(vectors[:count]), texts


def segmentable(conn: Connection, name: str) -> Source:
    """The row source `name`, given a segment column (`segmento`) if it has none yet."""
    (source,) = load_sources(conn, [name])
    if source.chunked:
        raise InputError(f"segments are fitted over row sources; {name} is chunked")
    if source.segment_column:
        return source
    with conn.transaction():
        conn.execute(sql.SQL("alter table {} add column if not exists segmento int").format(source.table))
        conn.execute("update pipeline.sources set segment_column = 'segmento' where name = %s", (name,))
    return dataclasses.replace(source, segment_column="segmento")


def fit_database(
    conn: Connection,
    *,
    source: str = "dores",
    clusters: int | str = 8,
    method: str = "embedding",
    k_range: range = range(2, 21),
    max_features: int = 500,
) -> FitResult:
    """Fit segments over all embedded rows of a row source (dores by default) and make them current, all in
    one transaction: the model, its segments, the rows' segment numbers."""
    if method not in ("embedding", "tfidf"):
        raise InputError(f"unknown method {method!r}: use embedding or tfidf")
    started = time.perf_counter()
    with translate_errors():
        restore_vector_indexes(conn)  # an earlier first fit that was interrupted
        table = segmentable(conn, source)
        ids, vectors, texts = _read_rows(conn, table)
        if len(ids) < 2:
            raise InputError(
                f"only {len(ids)} embedded {source} {'row' if len(ids) == 1 else 'rows'}: run `pipeline sync` first "
                "(segments need at least 2)"
            )
        previous = _active_centroids(conn, source)
        if clusters == "auto":
            k, scores = choose_k(vectors, k_range)
            logger.info("--clusters auto chose K=%d (cosine silhouette %.3f)", k, scores[k])
        else:
            k = int(clusters)
            if k < 2:
                raise InputError(f"--clusters must be at least 2, got {k}")
            if k > len(ids):
                raise InputError(f"{len(ids)} embedded {source} rows cannot make {k} segments: use fewer --clusters")
        params: dict[str, Any] = {"random_state": RANDOM_STATE}
        if method == "embedding":
            warm = previous if previous is not None and len(previous) == k else None
            labels = _kmeans(vectors, k, warm)
            params["warm_start"] = warm is not None
        else:
            labels, vectorizer, kmeans = fit_tfidf(texts, clusters=k, max_features=max_features)
            params.update(
                max_features=max_features,
                vocabulary={t: int(i) for t, i in vectorizer.vocabulary_.items()},
                idf=[round(float(x), 6) for x in vectorizer.idf_],
                tfidf_centroids=[[round(float(x), 6) for x in row] for row in kmeans.cluster_centers_],
            )
        present = sorted(set(int(x) for x in labels))
        centroids = _unit(np.vstack([vectors[labels == c].mean(axis=0) for c in present]))
        numbers = match_numbers(previous, centroids)
        renumber = {c: numbers[i] for i, c in enumerate(present)}
        final = np.asarray([renumber[int(x)] for x in labels], dtype=np.int32)
        terms = top_terms(texts, final.tolist())
        score = _silhouette(vectors, final)
        infos = [
            SegmentInfo(renumber[c], label_from_terms(terms[renumber[c]]), terms[renumber[c]], int((labels == c).sum()))
            for c in present
        ]
        set_aside = set_aside_vector_indexes(conn, table) if _first_fit(conn, table, len(ids)) else []
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            model_id = conn.execute(
                query("insert_segment_model"),
                {
                    "source": source,
                    "method": method,
                    "k": k,
                    "params": json.dumps(params),
                    "n_rows": len(ids),
                    "score": score,
                },
            ).fetchone()["id"]
            with conn.cursor() as cursor:
                cursor.executemany(
                    query("insert_segment"),
                    [
                        {
                            "model_id": model_id,
                            "segmento": info.segmento,
                            "label": info.label,
                            "top_terms": info.top_terms,
                            "size": info.size,
                            "centroid": centroids[i],
                        }
                        for i, info in enumerate(infos)
                    ],
                )
            conn.execute(query("create_segment_staging"))
            with conn.cursor().copy(query("copy_segment_staging")) as copy:
                copy.set_types(["text", "int4"])
                for key, number in zip(ids, final.tolist(), strict=True):
                    copy.write_row((key, number))
            changed = conn.execute(table.apply_segments_query()).rowcount
            conn.execute(query("set_segment_model"), {"model_id": str(model_id), "source": source})
        restore_vector_indexes(conn, set_aside)
    seconds = time.perf_counter() - started
    logger.info(
        "segments: %s K=%d over %d %s rows in %.1fs, %d rows changed segment",
        method,
        k,
        len(ids),
        source,
        seconds,
        changed,
    )
    return FitResult(model_id, method, k, len(ids), changed, score, seconds, sorted(infos, key=lambda s: s.segmento))


# -- the first fit over a big table ----------------------------------------------------------------
#
# A row's UPDATE writes a new version of the whole row, and every index gets an entry for it: the HNSW
# insert is most of its cost (~3 ms a row at 100,000 rows). A first fit changes every row, so over a big
# table the vector index is set aside while the rows are updated (`pipeline.indexes`).

SET_ASIDE_INDEX_FROM = 20_000  # rows without a segment yet; fewer: the UPDATE keeps the index


def _first_fit(conn: Connection, table: Source, rows: int) -> bool:
    if rows < SET_ASIDE_INDEX_FROM:
        return False
    unassigned = conn.execute(
        sql.SQL("select count(*) as n from {} t where {} is not null and t.{} is null").format(
            table.table, table.vector, sql.Identifier(table.segment_column or "segmento")
        )
    ).fetchone()["n"]
    return int(unassigned) >= SET_ASIDE_INDEX_FROM


def _silhouette(vectors: np.ndarray, labels: np.ndarray) -> float | None:
    from sklearn.metrics import silhouette_score

    if len(set(labels.tolist())) < 2:
        return None
    rng = np.random.default_rng(RANDOM_STATE)
    pick = rng.choice(len(vectors), min(len(vectors), SILHOUETTE_SAMPLE), replace=False)
    if not 2 <= len(set(labels[pick].tolist())) < len(pick):  # undefined with one row per segment
        return None
    return round(float(silhouette_score(vectors[pick], labels[pick], metric="cosine")), 4)


def _active_centroids(conn: Connection, source: str) -> np.ndarray | None:
    rows = conn.execute(query("active_centroids"), {"source": source}).fetchall()
    if not rows:
        return None
    size = max(r["segmento"] for r in rows) + 1
    dimension = len(rows[0]["centroid"].to_numpy())
    centroids = np.zeros((size, dimension), dtype=np.float32)
    for r in rows:
        centroids[r["segmento"]] = r["centroid"].to_numpy()
    return centroids


# -- reading -------------------------------------------------------------------------------------


def list_segments(conn: Connection, *, source: str = "dores", examples: int = 3) -> list[dict[str, Any]]:
    """The current segments of a source with their label, size, top terms and the texts nearest their centroid."""
    (table,) = load_sources(conn, [source])
    if not table.segment_column:
        raise PipelineError(f"no segments yet for {source}: run `pipeline segment --source {source}`")
    with translate_errors():
        rows = conn.execute(table.list_segments_query(), {"examples": examples, "source": source}).fetchall()
    if not rows:
        raise PipelineError("no segments yet: run `pipeline segment` (after `pipeline sync`)")
    return [dict(r) for r in rows]


def classify(conn: Connection, embedder: Any, text: str, *, source: str = "dores") -> dict[str, Any]:
    """The current segment (of `source`'s model) nearest to `text`, with its label and the cosine similarity."""
    if not text.strip():
        raise InputError("the text to classify is empty")
    with translate_errors():  # before the model is loaded to embed the text
        fitted = conn.execute(query("active_centroids"), {"source": source}).fetchone()
    if fitted is None:
        raise PipelineError("no segments yet: run `pipeline segment` (after `pipeline sync`)")
    vector = embedder.embed([text])[0]
    with translate_errors():
        row = conn.execute(query("classify"), {"embedding": vector, "source": source}).fetchone()
    if row is None:
        raise PipelineError("no segments yet: run `pipeline segment` (after `pipeline sync`)")
    return {**row, "similarity": round(float(row["similarity"]), 4)}
