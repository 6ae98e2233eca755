"""`pipeline source add | remove`: register any table as a source, or take it out, in one transaction.

Adding validates everything first (the table, its primary key, the text expression compiled against
the table), then adds the vector columns (row) or a table of chunks (chunked), an HNSW index, the
queue triggers and a search function `public.match_NAME`, records the source in `pipeline.sources`
and queues the rows already there. Either all of it happens or none of it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import psycopg
from psycopg import sql

from pipeline import search_functions
from pipeline.db import Connection, query, translate_errors
from pipeline.errors import InputError
from pipeline.source_triggers import TRIGGER_FUNCTIONS, install_guard, install_queue_triggers
from pipeline.sources import Source, load_sources

logger = logging.getLogger(__name__)

BUILT_IN_FUNCTIONS = ("match_dores", "match_documents")
"""Search functions of the sources that come with the schema: `source remove` leaves them."""

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
COLUMN_LIST = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*(\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*\s*$")
KEY_TYPES = {"int8": "bigint", "int4": "integer", "int2": "integer", "uuid": "uuid", "text": "text", "varchar": "text"}


def add_source(
    conn: Connection,
    *,
    name: str,
    table: str,
    text: str,
    chunked: bool = False,
    metadata: list[str] | None = None,
    language: str = "portuguese",
    backfill: bool = True,
    chunks_follow_parent: bool = False,
) -> tuple[Source, int]:
    """Register `table` as source `name`; return it and the number of rows queued. With `chunks_follow_parent`,
    its chunks get the policy of `follow_parent`."""
    if not NAME.match(name):
        raise InputError(f"source name {name!r}: use lowercase letters, digits and _ (starting with a letter)")
    with translate_errors(), conn.transaction():
        if conn.execute("select 1 from pipeline.sources where name = %s", (name,)).fetchone():
            raise InputError(f"a source named {name} exists already (`pipeline source list`)")
        info = conn.execute(query("table_info"), {"table": table}).fetchone()
        if info is None or info["relkind"] not in ("r", "p"):
            raise InputError(f"--table {table}: no such table (give SCHEMA.TABLE)")
        qualified = f"{info['schema']}.{info['name']}"
        taken = conn.execute(
            "select name from pipeline.sources where table_schema = %s and table_name = %s",
            (info["schema"], info["name"]),
        ).fetchone()
        if taken:
            raise InputError(f"{qualified} is already the table of source {taken['name']}")
        if not info["key_columns"] or len(info["key_columns"]) != 1:
            raise InputError(f"{qualified} needs a primary key of one column to be a source")
        key_type = KEY_TYPES.get(info["key_type"])
        if key_type is None:
            raise InputError(f"{qualified}: primary key of type {info['key_type']}; bigint, integer, uuid or text work")
        key_column = info["key_columns"][0]
        columns = {
            r["attname"]: r["type"]
            for r in conn.execute(
                "select attname::text, format_type(atttypid, atttypmod) as type from pg_attribute"
                " where attrelid = %s and attnum > 0 and not attisdropped",
                (info["oid"],),
            )
        }
        expression = _text_expression(text, columns)
        text_columns = _columns_read(conn, info["oid"], qualified, expression)
        metadata = metadata or []
        unknown = [c for c in metadata if c not in columns]
        if unknown:
            raise InputError(f"--metadata: {qualified} has no column {', '.join(unknown)}")
        if chunks_follow_parent and not chunked:
            raise InputError("--chunks-follow-parent applies to chunked sources (--chunked)")
        if metadata and not chunked:
            raise InputError("--metadata applies to chunked sources (--chunked)")
        if not conn.execute(
            "select exists (select 1 from pg_ts_config where cfgname = %s) as ok", (language,)
        ).fetchone()["ok"]:
            raise InputError(f"--language {language}: no such text search configuration (portuguese, english, simple)")
        dimension = _dimension(conn)
        source = Source(
            name=name,
            table_schema=info["schema"],
            table_name=info["name"],
            key_column=key_column,
            key_type=key_type,
            text_expression=expression,
            text_columns=tuple(text_columns),
            kind="chunked" if chunked else "row",
            search_function=f"match_{name}",
            language=language,
            chunk_table=f"{name}_chunks" if chunked else None,
            chunk_key_column=f"{name}_key" if chunked else None,
            metadata_columns=tuple(metadata),
            waits=not chunked,
        )
        chunk_table = f"{info['schema']}.{name}_chunks"
        if chunked and conn.execute("select to_regclass(%s) as t", (chunk_table,)).fetchone()["t"]:
            raise InputError(f"{info['schema']}.{name}_chunks exists already: choose another source name")
        _install(conn, source, dimension, columns)
        conn.execute(
            "insert into pipeline.sources (name, table_schema, table_name, key_column, key_type, text_expression,"
            " text_columns, kind, chunk_table, chunk_key_column, metadata_columns, search_function, language)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                name, source.table_schema, source.table_name, key_column, key_type, expression, text_columns,
                source.kind, source.chunk_table, source.chunk_key_column, metadata, source.search_function, language,
            ),
        )  # fmt: skip
        if chunked:
            _follow_parent_metadata(conn, source)
            if chunks_follow_parent:
                _follow_parent_policy(conn, source, PUBLIC)
        queued = conn.execute(source.queue_all_query()).rowcount if backfill else 0
        conn.execute("select pg_notify('pipeline_queue', %s)", (name,))
    return load_sources(conn, [name])[0], queued


def _text_expression(text: str, columns: dict[str, str]) -> str:
    """A comma-separated list of columns becomes their texts joined by blank lines; anything else is SQL."""
    names = [c.strip() for c in text.split(",")]
    if COLUMN_LIST.match(text) and all(c in columns for c in names):
        if len(names) == 1:
            return sql.Identifier(names[0]).as_string(None)
        joined = ", ".join(f"nullif({sql.Identifier(c).as_string(None)}::text, '')" for c in names)
        return f"concat_ws(E'\\n\\n', {joined})"
    if not text.strip():
        raise InputError("--text is empty: give an SQL expression over the row's columns, or col1,col2")
    return text.strip()


def _columns_read(conn: Connection, oid: int, qualified: str, expression: str) -> list[str]:
    """Compile the expression against the table (through a temporary view) and list the columns it reads."""
    table = sql.Identifier(*qualified.split(".", 1))
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("create temp view pipeline_source_check as select ({})::text as text from {}").format(
                    sql.SQL(expression), table
                )
            )
            read = [r["name"] for r in conn.execute(query("columns_read"), {"table": oid})]
            conn.execute("drop view pg_temp.pipeline_source_check")
    except psycopg.Error as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--text does not work on {qualified}: {message}") from None
    if not read:
        raise InputError(f"--text reads no column of {qualified}: nothing would ever change its text")
    return read


def _dimension(conn: Connection) -> int:
    row = conn.execute(query("column_dimension")).fetchone()
    if row and int(row["dimension"]) > 0:
        return int(row["dimension"])
    state = conn.execute("select value from pipeline.state where key = 'dimension'").fetchone()
    return int(state["value"]) if state else 384


def _install(conn: Connection, source: Source, dimension: int, columns: dict[str, str]) -> None:
    table, name = source.table, source.name
    key = sql.Identifier(source.key_column)
    dim = sql.SQL(str(int(dimension)))
    search_functions.pin_search_path(conn)
    if "embedding" in columns and not columns["embedding"].startswith("vector"):
        raise InputError(f"{source.qualified} has a column `embedding` of type {columns['embedding']}")
    extra = [
        sql.SQL("add column if not exists embedding_model text"),
        sql.SQL("add column if not exists content_hash text"),
        sql.SQL("add column if not exists embedded_at timestamptz"),
    ]
    if not source.chunked:
        extra.insert(0, sql.SQL("add column if not exists embedding vector({})").format(dim))
    conn.execute(sql.SQL("alter table {} {}").format(table, sql.SQL(", ").join(extra)))
    if source.chunked:
        chunks, ckey = source.chunks, sql.Identifier(source.chunk_key_column or "")
        conn.execute(
            sql.SQL(
                "create table {chunks} (id bigint generated by default as identity primary key,"
                " {ckey} {key_type} not null references {table} ({key}) on delete cascade,"
                " chunk_index int not null, content text not null, metadata jsonb not null default '{{}}',"
                " embedding vector({dim}) not null, embedding_model text not null, content_hash text not null,"
                " fts tsvector generated always as (to_tsvector({language}::regconfig, content)) stored,"
                " unique ({ckey}, chunk_index))"
            ).format(
                chunks=chunks, ckey=ckey, key_type=sql.SQL(source.key_type), table=table, key=key, dim=dim,
                language=sql.Literal(source.language),
            )
        )  # fmt: skip
        for index, method in (("embedding_idx", "hnsw (embedding vector_cosine_ops)"), ("fts_idx", "gin (fts)")):
            conn.execute(
                sql.SQL("create index {} on {} using {}").format(
                    sql.Identifier(f"{name}_chunks_{index}"), chunks, sql.SQL(method)
                )
            )
        conn.execute(
            sql.SQL("create index {} on {} using gin (metadata jsonb_path_ops)").format(
                sql.Identifier(f"{name}_chunks_metadata_idx"), chunks
            )
        )
        _close_to_api_roles(conn, chunks)
    else:
        _indexed_flag(conn, source)
        conn.execute(
            sql.SQL(
                "create index if not exists {} on {} using hnsw (embedding vector_cosine_ops) where embedding_indexed"
            ).format(sql.Identifier(f"{name}_embedding_idx"), table)
        )
    install_queue_triggers(conn, source)
    install_guard(conn, source)
    search_functions.create(conn, source, dimension)


def _indexed_flag(conn: Connection, source: Source) -> None:
    """`embedding_indexed`: whether a row's vector is in the HNSW graph, which covers only the rows marked so
    (0012 does the same for dores). A vector is in the graph unless the worker wrote it to wait (searched
    exactly until the worker marks it); and the partial index that finds those."""
    conn.execute(
        sql.SQL("alter table {} add column if not exists embedding_indexed boolean not null default true").format(
            source.table
        )
    )
    waiting = "create index if not exists {} on {} ({}) where embedding is not null and not embedding_indexed"
    conn.execute(
        sql.SQL(waiting).format(
            sql.Identifier(f"{source.name}_embedding_waiting_idx"), source.table, sql.Identifier(source.key_column)
        )
    )


def refresh_search_functions(conn: Connection) -> list[str]:
    """Give every source this version's search functions, rendered from pipeline/sql/templates/search.sql
    (`migrate` runs it in the transaction that applies the repeatable files), and the guards of an added
    source's table (`install_guard`).

    `create or replace` keeps each function's owner and grants; an added source whose functions this role may
    not replace keeps them, with a warning. Returns the names of the sources refreshed.
    """
    dimension = _dimension(conn)
    refreshed = []
    for source in load_sources(conn):
        try:
            with conn.transaction():
                if source.search_function not in BUILT_IN_FUNCTIONS:
                    install_guard(conn, source)
                search_functions.create(conn, source, dimension)
                if source.chunked and source.search_function not in BUILT_IN_FUNCTIONS:
                    _follow_parent_metadata(conn, source)  # documents': sql/repeatable/chunks.sql
        except psycopg.Error as exc:
            if source.search_function in BUILT_IN_FUNCTIONS:
                raise
            logger.warning("source %s keeps its search functions: %s", source.name, str(exc).strip().splitlines()[0])
            continue
        refreshed.append(source.name)
    return refreshed


def _close_to_api_roles(conn: Connection, table: sql.Composable) -> None:
    """A table the pipeline creates gets row-level security (0005); `install_guard` takes the rest."""
    conn.execute(sql.SQL("alter table {} enable row level security").format(table))


def remove_source(conn: Connection, name: str, *, drop_columns: bool = False) -> dict[str, Any]:
    """Take a source out: its triggers, queue and failed rows, search function, chunks; with
    `drop_columns`, the vector columns it added to a row source's table."""
    (source,) = load_sources(conn, [name])
    if source.search_function in BUILT_IN_FUNCTIONS:
        raise InputError(f"{name} comes with the schema and cannot be removed")
    with translate_errors(), conn.transaction():
        exists = conn.execute("select to_regclass(%s) as t", (source.qualified,)).fetchone()["t"] is not None
        if exists:
            for row in conn.execute(
                "select t.tgname from pg_trigger t join pg_proc p on p.oid = t.tgfoid"
                " where t.tgrelid = to_regclass(%s) and p.pronamespace = 'pipeline'::regnamespace"
                " and p.proname = any(%s) and not t.tgisinternal",
                (source.qualified, list(TRIGGER_FUNCTIONS)),
            ).fetchall():
                conn.execute(sql.SQL("drop trigger {} on {}").format(sql.Identifier(row["tgname"]), source.table))
        for function in (source.search_function, f"{source.search_function}_hybrid"):
            conn.execute(sql.SQL("drop function if exists {}").format(sql.Identifier("public", function)))
        if source.chunked:
            conn.execute(sql.SQL("drop table if exists {}").format(source.chunks))
        if drop_columns and exists:
            columns = ["embedding_model", "content_hash", "embedded_at"]
            if not source.chunked:
                columns += ["embedding", "embedding_indexed"]
            conn.execute(
                sql.SQL("alter table {} {}").format(
                    source.table,
                    sql.SQL(", ").join(sql.SQL("drop column if exists {}").format(sql.Identifier(c)) for c in columns),
                )
            )
        queued = conn.execute("delete from pipeline.queue where source = %s", (name,)).rowcount
        failed = conn.execute("delete from pipeline.failed where source = %s", (name,)).rowcount
        conn.execute("delete from pipeline.sources where name = %s", (name,))
    return {
        "source": name,
        "chunked": source.chunked,
        "queued_dropped": queued,
        "failed_dropped": failed,
        "columns_dropped": drop_columns,
    }


# -- chunks follow their parent ---------------------------------------------------------------------------

FOLLOW_PARENT = "chunks follow their parent"
"""The name of the policy `follow_parent` puts on a table of chunks."""

PUBLIC = ("public",)


def _follow_parent_metadata(conn: Connection, source: Source) -> int:
    """The trigger that copies a change of the row's metadata columns into its chunks in the same transaction,
    and the chunks written before it brought up to date (sql/repeatable/chunks.sql); how many were rewritten."""
    return int(conn.execute("select pipeline.follow_parent_metadata(%s) as n", (source.name,)).fetchone()["n"])


def follow_parent(conn: Connection, name: str, *, roles: list[str] | None = None, off: bool = False) -> dict[str, Any]:
    """Make a chunked source's chunks visible to `roles` (default: every role) exactly when their row is: a
    policy on the chunk table whose test reads the row under the caller's own row-level security. Owners
    write their policies once, on the table they know. `off` drops it. Running it again replaces it."""
    (source,) = load_sources(conn, [name])
    if not source.chunked:
        raise InputError(f"{name} is a row source: its vectors are in its own rows, which its own policies govern")
    roles = list(dict.fromkeys(r.strip() for r in (roles or PUBLIC) if r.strip())) or list(PUBLIC)
    with translate_errors(), conn.transaction():
        if conn.execute("select to_regclass(%s) as t", (source.qualified,)).fetchone()["t"] is None:
            raise InputError(f"{source.qualified}, the table of source {name}, does not exist")
        if off:
            conn.execute(sql.SQL("drop policy if exists {} on {}").format(sql.Identifier(FOLLOW_PARENT), source.chunks))
            return {"source": name, "table": f"{source.table_schema}.{source.chunk_table}", "policy": None}
        known = {r["rolname"] for r in conn.execute("select rolname from pg_roles where rolname = any(%s)", (roles,))}
        unknown = [r for r in roles if r != "public" and r not in known]
        if unknown:
            raise InputError(f"--roles: no role named {', '.join(unknown)}")
        warnings = _follow_parent_policy(conn, source, tuple(roles))
    return {
        "source": name,
        "table": f"{source.table_schema}.{source.chunk_table}",
        "policy": FOLLOW_PARENT,
        "roles": roles,
        "warnings": warnings,
    }


def _follow_parent_policy(conn: Connection, source: Source, roles: tuple[str, ...]) -> list[str]:
    """(Re)create the policy; return what makes it less than the owner may expect."""
    assert source.chunk_table and source.chunk_key_column
    conn.execute(sql.SQL("drop policy if exists {} on {}").format(sql.Identifier(FOLLOW_PARENT), source.chunks))
    # The chunk table's own name, not an alias: inside the subquery it names the chunk row being tested.
    conn.execute(
        sql.SQL(
            "create policy {policy} on {chunks} for select to {roles}"
            " using (exists (select 1 from {table} p where p.{key} = {chunk_key}))"
        ).format(
            policy=sql.Identifier(FOLLOW_PARENT),
            chunks=source.chunks,
            roles=sql.SQL(", ").join(sql.SQL("public") if r == "public" else sql.Identifier(r) for r in roles),
            table=source.table,
            key=sql.Identifier(source.key_column),
            chunk_key=sql.Identifier(source.chunk_table, source.chunk_key_column),
        )
    )
    conn.execute(sql.SQL("alter table {} enable row level security").format(source.chunks))
    warnings = []
    secured = "select relrowsecurity as secured from pg_class where oid = to_regclass(%s)"
    if not conn.execute(secured, (source.qualified,)).fetchone()["secured"]:
        warnings.append(f"{source.qualified} has no row-level security: all of its rows are visible, so all chunks are")
    readable = "select has_table_privilege(%s, %s, 'SELECT') as ok"
    for role in roles:
        if role != "public" and not conn.execute(readable, (role, source.qualified)).fetchone()["ok"]:
            warnings.append(
                f"{role} may not read {source.qualified}, so it sees no chunk: `grant select on {source.qualified}"
                f" to {role}` (its row-level security still decides which rows)"
            )
    return warnings
