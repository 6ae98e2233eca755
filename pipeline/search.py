"""Query embedding plus the SQL functions, for the CLI."""

from __future__ import annotations

from typing import Any

from pipeline.db import Connection, query, translate_errors
from pipeline.embedding import Embedder
from pipeline.errors import InputError


def search_dores(
    conn: Connection, embedder: Embedder, text: str, *, k: int = 5, segmento: int | None = None
) -> list[dict[str, Any]]:
    """The `k` dores nearest to `text`, through `match_dores`."""
    vector = _query_vector(embedder, text, k)
    with translate_errors():
        rows = conn.execute(query("match_dores"), {"embedding": vector, "k": k, "segmento": segmento}).fetchall()
    return [{**row, "similarity": round(float(row["similarity"]), 4)} for row in rows]


def search_documents(
    conn: Connection,
    embedder: Embedder,
    text: str,
    *,
    k: int = 5,
    hybrid: bool = False,
    filter: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The `k` chunks nearest to `text` (`match_documents`), or fused with full text (`match_documents_hybrid`)."""
    import json

    text = text.replace("\x00", "")
    vector = _query_vector(embedder, text, k)
    params = {"embedding": vector, "k": k, "filter": json.dumps(filter or {}), "text": text}
    with translate_errors():
        rows = conn.execute(query("match_documents_hybrid" if hybrid else "match_documents"), params).fetchall()
    results = []
    for row in rows:
        metadata = row["metadata"] or {}
        result = {
            "id": row["id"],
            "document_id": metadata.get("document_id"),
            "title": metadata.get("title"),
            "chunk_index": metadata.get("chunk_index"),
            "similarity": round(float(row["similarity"]), 4),
            "content": row["content"],
        }
        if hybrid:
            result["score"] = round(float(row["score"]), 6)
        results.append(result)
    return results


def _query_vector(embedder: Embedder, text: str, k: int) -> Any:
    if not text.strip():
        raise InputError("the search text is empty")
    if k < 1:
        raise InputError(f"-k must be at least 1, got {k}")
    return embedder.embed([text])[0]
