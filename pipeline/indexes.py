"""Setting a table's vector index aside during a bulk write, and building it again afterwards.

Every UPDATE or INSERT of a row with a vector adds an entry to its HNSW index, and that insert is most of
the database's cost per row (docs/benchmarks.md). When nearly every row of a big table is about to be
written (the first segment fit, the first backfill of an adopted table), it is cheaper to drop the index
(concurrently: searches go on, exact and slower), write, and build it again (concurrently: neither
searches nor writes wait for the build). The index's definition is kept in `pipeline.state` until it is
back, so an interrupted rebuild is finished by the next `restore_vector_indexes` (the next fit or
backfill) and `pipeline status` says so meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from psycopg import sql

from pipeline.db import Connection, query
from pipeline.sources import Source, load_sources

logger = logging.getLogger(__name__)


def _identifier(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split("."))


def defer_vector_indexes(conn: Connection, source: Source) -> list[str]:
    """Drop the vector indexes of the source's table (concurrently), keeping their definitions.

    `conn` must be in autocommit mode, outside a transaction.
    """
    target = source.chunks if source.chunked else source.table
    indexes = conn.execute(query("vector_indexes"), {"table": target.as_string(conn)}).fetchall()
    for index in indexes:
        conn.execute(query("keep_index_definition"), {"key": f"index:{index['name']}", "value": index["definition"]})
        conn.execute(sql.SQL("drop index concurrently if exists {}").format(_identifier(index["name"])))
        logger.info("vector index %s set aside for a bulk write; it is built again afterwards", index["name"])
    return [index["name"] for index in indexes]


def restore_vector_indexes(conn: Connection, names: Sequence[str] | None = None) -> list[str]:
    """Build again (concurrently) the vector indexes set aside; all pending ones by default."""
    rebuilt = []
    for row in conn.execute(query("kept_index_definitions")).fetchall():
        name = row["key"].removeprefix("index:")
        if names is not None and name not in names:
            continue
        found = conn.execute(
            "select i.indisvalid as valid from pg_index i where i.indexrelid = to_regclass(%s)", (name,)
        ).fetchone()
        if found is not None and not found["valid"]:  # an interrupted concurrent build
            conn.execute(sql.SQL("drop index concurrently if exists {}").format(_identifier(name)))
        if found is None or not found["valid"]:
            started = time.perf_counter()
            conn.execute("set maintenance_work_mem = '512MB'")
            try:
                conn.execute(row["value"].replace("CREATE INDEX ", "CREATE INDEX CONCURRENTLY ", 1).encode())
            finally:
                conn.execute("reset maintenance_work_mem")
            logger.info("vector index %s built again in %.1fs", name, time.perf_counter() - started)
        conn.execute("delete from pipeline.state where key = %s", (row["key"],))
        rebuilt.append(name)
    return rebuilt


def defer_for_backfill(conn: Connection, sources: Sequence[str] | None, *, threshold: int) -> list[str]:
    """Set aside the vector index of each source with at least `threshold` rows queued and almost nothing
    embedded yet (under 10% of its rows: the index serves few searches); 0 never does."""
    if threshold <= 0:
        return []
    names: list[str] = []
    for source in load_sources(conn, list(sources) if sources is not None else None):
        ready = conn.execute(query("count_ready"), {"sources": [source.name]}).fetchone()["n"]
        if ready < threshold:
            continue
        counts = conn.execute(source.status_query()).fetchone()
        if counts["embedded"] * 10 > counts["rows"]:
            continue
        names += defer_vector_indexes(conn, source)
    return names
