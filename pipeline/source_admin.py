"""`pipeline source add | remove`: register any table as a source, or take it out, in one transaction.

Adding validates everything first (the table, its primary key, the text expression compiled against
the table), then adds the vector columns (row) or a table of chunks (chunked), an HNSW index, the
queue triggers and a search function `public.match_NAME`, records the source in `pipeline.sources`
and queues the rows already there. Either all of it happens or none of it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import psycopg
from psycopg import sql

from pipeline.db import Connection, query, translate_errors
from pipeline.errors import InputError
from pipeline.sources import Source, load_sources

logger = logging.getLogger(__name__)

BUILT_IN_FUNCTIONS = ("match_dores", "match_documents")
"""Search functions of the sources that come with the schema (sql/repeatable/)."""

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
COLUMN_LIST = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*(\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*\s*$")
KEY_TYPES = {"int8": "bigint", "int4": "integer", "int2": "integer", "uuid": "uuid", "text": "text", "varchar": "text"}
TRIGGER_FUNCTIONS = ("enqueue_row", "forget_row", "forget_table", "notify_queue", "keep_derived_columns")


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
) -> tuple[Source, int]:
    """Register `table` as source `name`; return it and the number of rows queued."""
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
            deferred=not chunked,
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
    _pin_search_path(conn)
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
        conn.execute(
            sql.SQL("create index if not exists {} on {} using hnsw (embedding vector_cosine_ops)").format(
                sql.Identifier(f"{name}_embedding_idx"), table
            )
        )
        _unindexed_column(conn, source, dim)
    _triggers(conn, source)
    _guard(conn, source)
    _search_function(conn, source, dim)


def _unindexed_column(conn: Connection, source: Source, dim: sql.Composable) -> None:
    """`embedding_unindexed`, where new vectors wait for the vector index (migration 0010 does the same for
    dores), and the partial index that finds them."""
    conn.execute(
        sql.SQL("alter table {} add column if not exists embedding_unindexed vector({})").format(source.table, dim)
    )
    conn.execute(
        sql.SQL("create index if not exists {} on {} ({}) where embedding_unindexed is not null").format(
            sql.Identifier(f"{source.name}_embedding_unindexed_idx"), source.table, sql.Identifier(source.key_column)
        )
    )


def _pin_search_path(conn: Connection) -> None:
    """For this transaction, the search_path the functions created next keep (`set search_path from
    current`): the catalog, public and pgvector's schema; and pgvector loaded, so that its settings
    (hnsw.ef_search) can be attached to them."""
    vector_schema = conn.execute(
        "select extnamespace::regnamespace::text as s from pg_extension where extname = 'vector'"
    ).fetchone()["s"]
    conn.execute("select set_config('search_path', %s, true)", (f"pg_catalog, public, {vector_schema}",))
    conn.execute("select '[1]'::vector is not null")


def refresh_search_functions(conn: Connection) -> list[str]:
    """Give the sources added with `source add` this version's search functions (`migrate` runs it), and
    a row source's table the column where vectors wait for the index, if it lacks it.

    `create or replace` keeps each function's owner and grants; a source whose functions this role may
    not replace keeps them, with a warning. Returns the names of the sources refreshed.
    """
    added = [s for s in load_sources(conn) if s.search_function not in BUILT_IN_FUNCTIONS]
    dim = sql.SQL(str(int(_dimension(conn)))) if added else sql.SQL("")
    refreshed = []
    for source in added:
        try:
            with conn.transaction():
                _pin_search_path(conn)
                if not source.chunked and not source.deferred:
                    _unindexed_column(conn, source, dim)
                    source = dataclasses.replace(source, deferred=True)
                _guard(conn, source)
                _search_function(conn, source, dim)
        except psycopg.Error as exc:
            logger.warning("source %s keeps its search functions: %s", source.name, str(exc).strip().splitlines()[0])
            continue
        refreshed.append(source.name)
    return refreshed


def _close_to_api_roles(conn: Connection, table: sql.Composable) -> None:
    """A table the pipeline creates gets row-level security (0005); `_guard` takes the rest."""
    conn.execute(sql.SQL("alter table {} enable row level security").format(table))


def _guard(conn: Connection, source: Source) -> None:
    """Keep the pipeline's own columns the pipeline's (sql/repeatable/security.sql): a vector, model, hash or
    segment written by any other role is dropped, a chunk written by one refused. And the rights that
    row-level security does not govern are taken from the API roles, as 0005 does for dores."""
    derived = ["embedding_model", "content_hash", "embedded_at"]
    if not source.chunked:
        derived = ["embedding", *(["embedding_unindexed"] if source.deferred else []), *derived]
        derived += [source.segment_column] if source.segment_column else []
    statement = (
        "create or replace trigger pipeline_keep_derived before insert or update of {columns} on {table}"
        " for each row execute function pipeline.keep_derived_columns({args})"
    )
    conn.execute(
        sql.SQL(statement).format(
            columns=sql.SQL(", ").join(map(sql.Identifier, derived)),
            table=source.table,
            args=sql.SQL(", ").join(map(sql.Literal, derived)),
        )
    )
    tables = [source.table]
    if source.chunked:
        conn.execute(
            sql.SQL(
                "create or replace trigger pipeline_keep_derived before insert or update on {}"
                " for each row execute function pipeline.keep_derived_columns()"
            ).format(source.chunks)
        )
        tables.append(source.chunks)
    for row in conn.execute("select rolname from pg_roles where rolname in ('anon', 'authenticated')").fetchall():
        for table in tables:
            conn.execute(
                sql.SQL("revoke truncate, references, trigger on {} from {}").format(
                    table, sql.Identifier(row["rolname"])
                )
            )


def _triggers(conn: Connection, source: Source) -> None:
    table, name = source.table, sql.Literal(source.name)
    args = sql.SQL("{}, {}").format(name, sql.Literal(source.key_column))
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in source.text_columns)
    changed = sql.SQL(" or ").join(
        sql.SQL("old.{c} is distinct from new.{c}").format(c=sql.Identifier(c)) for c in source.text_columns
    )
    statements = [
        ("enqueue_insert", "after insert on {table} for each row execute function pipeline.enqueue_row({args})"),
        (
            "enqueue_update",
            "after update of {cols} on {table} for each row when ({changed})"
            " execute function pipeline.enqueue_row({args})",
        ),
        ("forget", "after delete on {table} for each row execute function pipeline.forget_row({args})"),
        ("truncate", "after truncate on {table} for each statement execute function pipeline.forget_table({name})"),
        (
            "notify",
            "after insert or update of {cols} on {table} for each statement"
            " execute function pipeline.notify_queue({name})",
        ),
    ]
    for suffix, body in statements:
        conn.execute(
            sql.SQL("create trigger {trigger} " + body).format(
                trigger=sql.Identifier(f"pipeline_{source.name}_{suffix}"),
                table=table,
                args=args,
                cols=cols,
                changed=changed,
                name=name,
            )
        )


def _search_function(conn: Connection, source: Source, dim: sql.Composable) -> None:
    """`public.match_NAME`: SECURITY INVOKER (row-level security applies), fixed search_path."""
    function = sql.Identifier("public", source.search_function)
    attributes = sql.SQL(
        "language sql stable security invoker set search_path from current set hnsw.ef_search = 100"
        " set hnsw.iterative_scan = 'relaxed_order'"
    )  # a selective filter still finds match_count rows; the results are put back in order
    if source.chunked:
        conn.execute(
            sql.SQL(
                "create or replace function {function}(query_embedding vector({dim}), match_count int default null,"
                " filter jsonb default '{{}}')"
                " returns table (id bigint, content text, metadata jsonb, similarity float)"
                " {attributes} as $$ select n.id, n.content, n.metadata, 1 - n.distance from ("
                "  select c.id, c.content, c.metadata, c.embedding <=> query_embedding as distance"
                "  from {chunks} c where c.metadata @> filter order by c.embedding <=> query_embedding"
                "  limit match_count) n order by n.distance $$"
            ).format(function=function, dim=dim, attributes=attributes, chunks=source.chunks)
        )
        _hybrid_function(conn, source, dim, attributes)
        return
    parts = {"key": sql.Identifier(source.key_column), "text": sql.SQL(source.text_expression), "table": source.table}
    nearest = sql.SQL(
        "select t.{key}::text as key, ({text})::text as content, t.embedding <=> query_embedding as distance"
        " from {table} t where t.embedding is not null order by t.embedding <=> query_embedding limit match_count"
    ).format(**parts)
    if source.deferred:  # and the nearest of the vectors that wait for the index, scanned exactly
        nearest = sql.SQL(
            "({}) union all (select t.{key}::text, ({text})::text, t.embedding_unindexed <=> query_embedding"
            " from {table} t where t.embedding_unindexed is not null order by 3 limit match_count)"
        ).format(nearest, **parts)
    conn.execute(
        sql.SQL(
            "create or replace function {function}(query_embedding vector({dim}), match_count int default 10)"
            " returns table (id text, content text, similarity float)"
            " {attributes} as $$ select n.key, n.content, 1 - n.distance from ({nearest}) n"
            " order by n.distance, n.key limit match_count $$"
        ).format(function=function, dim=dim, attributes=attributes, nearest=nearest)
    )
    _hybrid_function(conn, source, dim, attributes)


def _hybrid_function(conn: Connection, source: Source, dim: sql.Composable, attributes: sql.Composable) -> None:
    """`public.match_NAME_hybrid(query_text, query_embedding, match_count, ...)`: words and meaning fused by
    reciprocal rank fusion, as `match_documents_hybrid` does, in the source's language (the one a chunked
    source's `fts` column is built with). A row source's text is read at query time: an index over the
    owner's expression could make the owner's own writes fail (an expression that raises for a row)."""
    language = sql.Literal(source.language)
    if source.chunked:
        table, document = source.chunks, sql.SQL("t.fts")
        detoasted = sql.SQL("t.fts || ''::tsvector")  # read once, not once per query word
        indexed = sql.SQL("t.metadata @> filter")
        words_searched = sql.SQL("(filter = '{}'::jsonb or t.metadata @> filter)")
        key, content = sql.SQL("t.id"), sql.SQL("t.content, t.metadata")
        signature = sql.SQL("filter jsonb default '{}', ")
        returns = sql.SQL("id bigint, content text, metadata jsonb, similarity float, score float")
        vector = sql.SQL("t.embedding")
    else:
        text = sql.SQL("({})::text").format(sql.SQL(source.text_expression))
        table = source.table
        document = detoasted = sql.SQL("to_tsvector({}::regconfig, {})").format(language, text)
        vector = sql.SQL("coalesce(t.embedding, t.embedding_unindexed)" if source.deferred else "t.embedding")
        words_searched = sql.SQL("{} is not null").format(vector)
        indexed = sql.SQL("t.embedding is not null")
        key, content = sql.SQL("t.{}").format(sql.Identifier(source.key_column)), text
        signature = sql.SQL("")
        returns = sql.SQL("id text, content text, similarity float, score float")
    nearest = sql.SQL(
        "select {key} as key, t.embedding <=> query_embedding as distance from {table} t where {searched}"
        " order by t.embedding <=> query_embedding limit greatest(match_count, 60)"
    ).format(key=key, table=table, searched=indexed)
    if source.deferred:  # and the nearest of the vectors that wait for the index, scanned exactly
        nearest = sql.SQL(
            "({}) union all (select {} as key, t.embedding_unindexed <=> query_embedding from {} t"
            " where t.embedding_unindexed is not null order by 2 limit greatest(match_count, 60))"
        ).format(nearest, key, table)
    conn.execute(
        sql.SQL(
            "create or replace function {function}(query_text text, query_embedding vector({dim}),"
            " match_count int default 10, {signature}full_text_weight float default 1,"
            " semantic_weight float default 1, rrf_k int default 20)"
            " returns table ({returns}) {attributes} as $$"
            " with words as (select quote_literal(w)::tsquery as q"
            "  from unnest(tsvector_to_array(to_tsvector({language}::regconfig, query_text))) w),"
            " matching as materialized (select {key} as key, {detoasted} as fts from {table} t"
            "  where {document} @@ (select string_agg(q::text, ' | ')::tsquery from words) and {words_searched}),"
            " searched as materialized (select count(*) as n from {table} t where {words_searched}),"
            " weighted as materialized (select w.q, ln(1 + (s.n - df.n + 0.5) / (df.n + 0.5)) as idf"
            "  from words w cross join searched s"
            "  cross join lateral (select count(*) as n from matching m where m.fts @@ w.q) df where df.n > 0),"
            " full_text as (select m.key, row_number() over (order by r.idf desc, m.key) as rank_ix from matching m"
            "  cross join lateral (select round(sum(w.idf)::numeric, 9) as idf from weighted w where m.fts @@ w.q) r"
            "  order by rank_ix limit greatest(match_count, 60)),"
            " semantic as (select n.key, row_number() over (order by n.distance, n.key) as rank_ix"
            "  from ({nearest}) n order by n.distance, n.key limit greatest(match_count, 60))"
            " select {key}{cast}, {content}, 1 - ({vector} <=> query_embedding) as similarity,"
            "  coalesce(1.0 / (rrf_k + full_text.rank_ix), 0.0) * full_text_weight"
            "  + coalesce(1.0 / (rrf_k + semantic.rank_ix), 0.0) * semantic_weight as score"
            " from full_text full outer join semantic on full_text.key = semantic.key"
            " join {table} t on {key} = coalesce(full_text.key, semantic.key)"
            " order by score desc, similarity desc limit match_count $$"
        ).format(
            function=sql.Identifier("public", f"{source.search_function}_hybrid"), dim=dim, attributes=attributes,
            signature=signature, returns=returns, language=language, key=key, document=document, table=table,
            words_searched=words_searched, detoasted=detoasted, content=content, vector=vector, nearest=nearest,
            cast=sql.SQL("" if source.chunked else "::text"),
        )
    )  # fmt: skip


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
                columns += ["embedding", "embedding_unindexed"]
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
