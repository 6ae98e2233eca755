"""Setting a table's vector index aside during a bulk write, and building it again afterwards.

Every UPDATE or INSERT of a row with a vector adds an entry to its HNSW index, and that insert is most of
the database's cost per row (docs/benchmarks.md). When nearly every row of a big table is about to be
written (the first segment fit, the first backfill of an adopted table), it is cheaper to drop the index
(concurrently: searches go on, exact and slower), write, and build it again (concurrently: neither
searches nor writes wait for the build). What it takes to build the index again is kept in
`pipeline.state` (key `index:NAME`, written by the owner only) until it is back, so an interrupted rebuild
is finished by the next `restore_vector_indexes` (the next fit or backfill) and `pipeline status` says so
meanwhile.

Nothing kept there is executed: the index is built from a fixed template, and only on the vector column
of a source's table, with an operator class and options of pgvector's.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from pipeline.db import Connection, query, translate_errors
from pipeline.sources import Source, load_sources

logger = logging.getLogger(__name__)

_OPCLASS = re.compile(r"^(vector|halfvec|sparsevec|bit)_(cosine|l2|ip|l1|hamming|jaccard)_ops$")
_OPTIONS = {"hnsw": ("m", "ef_construction"), "ivfflat": ("lists",)}
# How versions before 0011 kept a definition: pg_get_indexdef's text, read here, never executed.
_LEGACY = re.compile(
    r"^CREATE INDEX \S+ ON (?P<table>[\w.\"]+) USING (?P<method>hnsw|ivfflat) \((?P<column>\w+) (?P<opclass>\w+)\)"
    r"(?: WITH \((?P<options>[\w=', ]*)\))?(?P<predicate> WHERE embedding_indexed)?$"
)


def _identifier(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split("."))


def set_aside_vector_indexes(conn: Connection, source: Source) -> list[str]:
    """Drop the vector indexes of the source's table (concurrently), keeping what it takes to build them again.

    `conn` must be in autocommit mode, outside a transaction.
    """
    target = source.chunks if source.chunked else source.table
    indexes = conn.execute(query("vector_indexes"), {"table": target.as_string(conn)}).fetchall()
    for index in indexes:
        value = json.dumps(index["definition"], sort_keys=True)
        conn.execute(query("keep_index_definition"), {"key": f"index:{index['name']}", "value": value})
        conn.execute(sql.SQL("drop index concurrently if exists {}").format(_identifier(index["name"])))
        logger.info("vector index %s set aside for a bulk write; it is built again afterwards", index["name"])
    return [index["name"] for index in indexes]


def index_statement(conn: Connection, name: str, kept: str) -> sql.Composed | None:
    """`create index concurrently` for a kept index, from the fixed template; None when what was kept does not
    describe a vector index on a source's vector column (it is then not built)."""
    try:
        spec: dict[str, Any] = json.loads(kept)
    except ValueError:
        legacy = _LEGACY.match(kept)
        if legacy is None:
            return None
        options = dict(
            (part.split("=", 1)[0].strip(), part.split("=", 1)[1].strip(" '"))
            for part in (legacy["options"] or "").split(",")
            if "=" in part
        )
        spec = {
            **legacy.groupdict(),
            "table": legacy["table"].replace('"', ""),
            "options": options,
            "predicate": "embedding_indexed" if legacy["predicate"] else None,
        }
    if not isinstance(spec, dict):
        return None
    tables = {s.qualified: s for s in load_sources(conn)}
    tables |= {f"{s.table_schema}.{s.chunk_table}": s for s in tables.copy().values() if s.chunk_table}
    table = str(spec.get("table", ""))
    method, options = spec.get("method"), spec.get("options") or {}
    if (
        table not in tables
        or spec.get("column") != "embedding"
        or method not in _OPTIONS
        or not _OPCLASS.match(str(spec.get("opclass", "")))
        or not isinstance(options, dict)
        or any(k not in _OPTIONS[method] or not str(v).isdigit() for k, v in options.items())
        or spec.get("predicate") not in (None, "embedding_indexed")
    ):
        return None
    with_options = sql.SQL("")
    if options:
        with_options = sql.SQL(" with ({})").format(
            sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.SQL(k), sql.Literal(int(options[k])))
                for k in _OPTIONS[method]
                if k in options
            )
        )
    where = sql.SQL(" where embedding_indexed" if spec.get("predicate") else "")  # only the rows in the graph
    statement = "create index concurrently {name} on {table} using {method} ({column} {opclass}){options}{where}"
    return sql.SQL(statement).format(
        name=sql.Identifier(name.rsplit(".", 1)[-1]),  # an index lives in its table's schema
        table=_identifier(table),
        method=sql.SQL(method),
        column=sql.Identifier(spec["column"]),
        opclass=sql.SQL(spec["opclass"]),
        options=with_options,
        where=where,
    )


def restore_vector_indexes(conn: Connection, names: Sequence[str] | None = None) -> list[str]:
    """Build again (concurrently) the vector indexes set aside; all pending ones by default."""
    rebuilt = []
    for row in conn.execute(query("kept_index_definitions")).fetchall():
        name = row["key"].removeprefix("index:")
        if names is not None and name not in names:
            continue
        statement = index_statement(conn, name, row["value"])
        if statement is None:
            logger.warning(
                "pipeline.state %s does not describe a vector index of a source: not built, forgotten", row["key"]
            )
            conn.execute("delete from pipeline.state where key = %s", (row["key"],))
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
                conn.execute(statement)
            finally:
                conn.execute("reset maintenance_work_mem")
            logger.info("vector index %s built again in %.1fs", name, time.perf_counter() - started)
        conn.execute("delete from pipeline.state where key = %s", (row["key"],))
        rebuilt.append(name)
    return rebuilt


def set_aside_for_backfill(conn: Connection, sources: Sequence[str] | None, *, threshold: int) -> list[str]:
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
        names += set_aside_vector_indexes(conn, source)
    return names


def index_waiting(
    conn: Connection, sources: Sequence[Source], *, stop: threading.Event | None = None, step: int = 512
) -> tuple[int, bool]:
    """Mark the vectors that wait for the index into it, `step` rows per transaction, until none wait.

    Returns the rows moved, and whether it stopped early because rows were queued meanwhile (the
    model's work comes first: the next drain picks it up, and this goes on when it is done).
    """
    moved, interrupted = 0, False
    names = [s.name for s in sources]
    for source in sources:
        if not source.waits or interrupted:
            continue
        started, count = time.perf_counter(), 0
        while not (stop and stop.is_set()):
            with translate_errors():
                try:
                    with conn.transaction():
                        step_count = conn.execute(source.index_waiting_query(), {"limit": step}).rowcount
                except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                    break  # its table is gone or changed since the drain began: the batches say so
            count += step_count
            if step_count < step:
                break
            with translate_errors():
                if conn.execute(query("any_ready"), {"sources": names}).fetchone()["ready"]:
                    interrupted = True
                    break
        if count:
            logger.info(
                "%s: %d waiting vectors added to the vector index in %.2fs%s", source.name, count,
                time.perf_counter() - started, " (rows were queued: embedding them first)" if interrupted else "",
            )  # fmt: skip
        moved += count
    return moved, interrupted
