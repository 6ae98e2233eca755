"""Where things stand: model, rows, queue and failures per table."""

from __future__ import annotations

from typing import Any

import psycopg

from pipeline.db import Connection, query, translate_errors
from pipeline.migrations import pending
from pipeline.model import parse_identity, recorded_model
from pipeline.security import advisor
from pipeline.sources import load_sources


def status(conn: Connection) -> dict[str, Any]:
    """A JSON-ready summary of the database's pipeline state."""
    missing = pending(conn)
    if missing:
        return {"migrations_pending": missing, "model": None, "tables": []}
    recorded, dimension = recorded_model(conn)
    model, backend = parse_identity(recorded) if recorded else (None, None)
    warnings: list[str] = []
    with translate_errors():
        lag = {row["source"]: row for row in conn.execute(query("status_lag"))}
        tables = {}
        for source in load_sources(conn):
            try:
                with conn.transaction():
                    counts = conn.execute(source.status_query()).fetchone()
            except psycopg.errors.UndefinedTable:
                counts = {"rows": None, "embedded": None, "chunks": None, "unindexed": 0, "last_embedded_at": None}
                warnings.append(f"source {source.name}: table {source.qualified} is gone (`pipeline source remove`)")
            tables[source.name] = {**counts, **lag[source.name]}
    synced = {row["source"]: row["updated_at"] for row in conn.execute(query("last_syncs"))}
    result = []
    for source, row in tables.items():
        times = [t for t in (row["last_embedded_at"], synced.get(source)) if t is not None]
        last = max(times) if times else None
        result.append(
            {
                "table": source,
                "rows": row["rows"],
                "embedded": row["embedded"],
                "chunks": row["chunks"],
                "unindexed": row["unindexed"],
                "pending": row["pending"],
                "failed": row["failed"],
                "other_model": row["other_model"],
                "oldest_pending_s": round(row["oldest_pending_s"], 1) if row["oldest_pending_s"] is not None else None,
                "last_sync": last.isoformat() if last else None,
            }
        )
    with translate_errors():
        scored = [dict(row) for row in conn.execute(query("classifier_lag"))]
    warnings += [
        f"vector index {row['key'].removeprefix('index:')} is being rebuilt after a first segment fit, or its "
        "rebuild was interrupted (the next `pipeline segment` builds it)"
        for row in conn.execute(query("kept_index_definitions"))
    ]
    warnings += [str(finding) for finding in advisor(conn)]
    return {
        "migrations_pending": [],
        "model": model,
        "backend": backend,
        "dimension": dimension,
        "tables": result,
        "classifiers": scored,
        "warnings": warnings,
    }


def format_status(data: dict[str, Any]) -> str:
    """The human-readable table `pipeline status` prints."""
    if data["migrations_pending"]:
        return f"schema not up to date: run `pipeline migrate` ({', '.join(data['migrations_pending'])})"
    lines = [
        f"model: {data['model'] or '(none yet: run pipeline sync)'}"
        + (f" ({data['dimension']} dims, backend {data['backend']})" if data["model"] else "")
    ]
    width = max([10, *(len(row["table"]) + 1 for row in data["tables"])])
    header = (
        f"{'source':<{width}} {'rows':>8} {'embedded':>9} {'pending':>8} {'failed':>7} {'oldest pending':>15}"
        "  last sync"
    )
    lines.append(header)
    for row in data["tables"]:
        oldest = f"{row['oldest_pending_s']:.0f}s" if row["oldest_pending_s"] is not None else "-"
        lines.append(
            f"{row['table']:<{width}} {_n(row['rows']):>8} {_n(row['embedded']):>9} {row['pending']:>8} "
            f"{row['failed']:>7} {oldest:>15}  {row['last_sync'] or '-'}"
        )
        if row["chunks"]:
            lines[-1] += f"  ({_count(row['chunks'], 'chunk')})"
        if row["unindexed"]:
            waits = "waits" if row["unindexed"] == 1 else "wait"
            vectors = _count(row["unindexed"], "vector")
            lines.append(f"  {vectors} of {row['table']} {waits} for the vector index (searched exactly)")
        if row["other_model"]:
            lines.append(
                f"  {_count(row['other_model'], 'row')} of {row['table']} embedded with another model: "
                "run `pipeline backfill`"
            )
    for row in data.get("classifiers", []):
        lines.append(
            f"classifier {row['classifier']} v{row['version']} on {row['source']}: "
            + ("- rows" if row["unscored"] is None else _count(row["unscored"], "row"))
            + " unscored"
        )
    lines.extend(f"warning: {warning}" for warning in data.get("warnings", []))
    return "\n".join(lines)


def _n(value: Any) -> Any:
    return "-" if value is None else value


def _count(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")
