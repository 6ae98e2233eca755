"""Query embedding plus each source's SQL search function, for the CLI and the HTTP API."""

from __future__ import annotations

import json
from typing import Any

from psycopg import sql

from pipeline.db import Connection, translate_errors
from pipeline.embedding import Embedder
from pipeline.errors import InputError
from pipeline.sources import Source, load_sources


def search_source(
    conn: Connection,
    embedder: Embedder,
    source: Source,
    text: str,
    *,
    k: int = 5,
    hybrid: bool | None = None,
    filter: dict[str, Any] | None = None,
    segmento: int | None = None,
) -> list[dict[str, Any]]:
    """The `k` rows (or chunks) of `source` that best match `text`, through its SQL function.

    `hybrid` fuses full text with the vectors through `<function>_hybrid`; None (the default) means:
    wherever the source has that function; False: vectors alone. Every result carries the `score` that
    orders it (the RRF score, or the cosine similarity) and its `similarity`. Chunked sources take a
    metadata `filter`; a source with a segment column takes `segmento`.
    """
    text = text.replace("\x00", "")
    if filter and not source.chunked:
        raise InputError(f"filter applies to chunked sources; {source.name} is a row source")
    if segmento is not None and not source.segment_column:
        raise InputError(f"segmento applies to a source with segments; {source.name} has none")
    if hybrid is None or hybrid:
        available = hybrid_available(conn, source)
        if hybrid and not available:
            missing = f"public.{source.search_function}_hybrid"
            raise InputError(f"hybrid search is not available for source {source.name} (no {missing})")
        hybrid = available
    function = source.search_function + ("_hybrid" if hybrid else "")
    vector = _query_vector(embedder, text, k)
    args: dict[str, Any] = {"query_embedding": vector, "match_count": k}
    casts = {"match_count": "int", "filter": "jsonb", "filter_segmento": "int", "query_text": "text"}
    if hybrid:
        args["query_text"] = text
    if source.chunked:
        args["filter"] = json.dumps(filter or {})
    if segmento is not None:
        args["filter_segmento"] = segmento
    with translate_errors():
        named = sql.SQL(", ").join(
            sql.SQL("{} => {}{}").format(
                sql.Identifier(name), sql.Placeholder(name), sql.SQL(f"::{casts[name]}" if name in casts else "")
            )
            for name in args
        )
        statement = sql.SQL("select * from {}({})").format(sql.Identifier("public", function), named)
        rows = conn.execute(statement, args).fetchall()

    def score(row: dict[str, Any]) -> float:
        return round(float(row["score"]), 6) if hybrid else round(float(row["similarity"]), 4)

    if not source.chunked:
        return [{**row, "similarity": round(float(row["similarity"]), 4), "score": score(row)} for row in rows]
    results = []
    for row in rows:
        metadata = row["metadata"] or {}
        result = {
            "id": row["id"],
            source.chunk_key_column or "key": metadata.get(source.chunk_key_column or ""),
            "title": metadata.get("title"),
            "chunk_index": metadata.get("chunk_index"),
            "similarity": round(float(row["similarity"]), 4),
            "score": score(row),
            "content": row["content"],
        }
        results.append(result)
    return results


def hybrid_available(conn: Connection, source: Source) -> bool:
    """Whether `source` has its `<function>_hybrid` (every source does after `pipeline migrate`)."""
    with translate_errors():
        found = conn.execute("select to_regproc(%s) as f", (f"public.{source.search_function}_hybrid",))
        return found.fetchone()["f"] is not None


def search_dores(
    conn: Connection,
    embedder: Embedder,
    text: str,
    *,
    k: int = 5,
    hybrid: bool | None = None,
    segmento: int | None = None,
) -> list[dict[str, Any]]:
    """The `k` dores that best match `text`: words and meaning (`match_dores_hybrid`), or meaning alone."""
    (source,) = load_sources(conn, ["dores"])
    return search_source(conn, embedder, source, text, k=k, hybrid=hybrid, segmento=segmento)


def search_documents(
    conn: Connection,
    embedder: Embedder,
    text: str,
    *,
    k: int = 5,
    hybrid: bool | None = None,
    filter: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The `k` chunks that best match `text`: fused with full text (`match_documents_hybrid`), or by vectors."""
    (source,) = load_sources(conn, ["documents"])
    return search_source(conn, embedder, source, text, k=k, hybrid=hybrid, filter=filter)


def _query_vector(embedder: Embedder, text: str, k: int) -> Any:
    if not text.strip():
        raise InputError("the search text is empty")
    if k < 1:
        raise InputError(f"-k must be at least 1, got {k}")
    return embedder.embed([text])[0]
