"""Every source's search functions (`public.match_NAME` and `public.match_NAME_hybrid`), dores and documents
included, rendered from one template: `pipeline/sql/templates/search.sql`. What differs between sources is
data (their table, key, text, filter and the columns they return); the SQL is written once."""

from __future__ import annotations

import dataclasses
import functools
import re

from psycopg import sql

from pipeline.db import Connection
from pipeline.sources import Source

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)
_WEIGHTS = "full_text_weight float default 1, semantic_weight float default 1, rrf_k int default 20"


@functools.cache
def templates() -> dict[str, str]:
    """The named parts of the template file: `-- name --` then its text (comments kept out)."""
    from pipeline.migrations import sql_dir

    parts = _HEADER.split((sql_dir() / "templates" / "search.sql").read_text(encoding="utf-8"))
    return {
        name: "\n".join(line for line in body.strip().splitlines() if not line.lstrip().startswith("--"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


@dataclasses.dataclass(frozen=True)
class Shape:
    """What a source's search functions take and return, around the shared SQL."""

    returns: str  # the columns before similarity (and score)
    output: str  # their values, over the source's table as `t`
    vector_arguments: str = ""  # after match_count
    hybrid_arguments: str = ", " + _WEIGHTS
    filter: str = "true"  # which rows the vector side may return
    searched: str = "t.embedding is not null"  # which rows the word side counts and ranks
    count: str = "10"  # match_count's default


def shape(source: Source) -> Shape:
    if source.search_function == "match_dores":  # the seed's columns, and a segment filter
        segment = "(filter_segmento is null or t.segmento = filter_segmento)"
        return Shape(
            returns="id bigint, dor_base text, solucao_graventum text, segmento int",
            output="t.id, t.dor_base, t.solucao_graventum, t.segmento",
            vector_arguments=", filter_segmento int default null",
            hybrid_arguments=f", filter_segmento int default null, {_WEIGHTS}",
            filter=segment,
            searched=f"t.embedding is not null and {segment}",
        )
    if source.chunked:  # LangChain's SupabaseVectorStore calls match_documents with these names
        metadata = "(filter = '{}'::jsonb or t.metadata @> filter)"
        filter_argument = "filter jsonb default '{}'"
        hybrid = [filter_argument, _WEIGHTS]
        if source.search_function == "match_documents":  # match_documents_hybrid was released with it last
            hybrid.reverse()
        return Shape(
            returns="id bigint, content text, metadata jsonb",
            output="t.id, t.content, t.metadata",
            vector_arguments=", " + filter_argument,
            hybrid_arguments=", " + ", ".join(hybrid),
            filter=metadata,
            searched=metadata,
            count="null",
        )
    text = f"({source.text_expression})::text"
    return Shape(returns="id text, content text", output=f"t.{_quoted(source.key_column)}::text, {text}")


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def statements(source: Source, dimension: int) -> list[sql.Composed]:
    """`create or replace function` for the source's vector and hybrid search functions."""
    parts = templates()
    form = shape(source)
    table = source.chunks if source.chunked else source.table
    key = sql.Identifier("id" if source.chunked else source.key_column)
    waiting = not source.chunked and source.waits

    def nearest(limit: str) -> sql.Composed:
        common = {"key": key, "table": table, "filter": sql.SQL(form.filter), "limit": sql.SQL(limit)}
        return sql.SQL(parts["nearest"]).format(
            indexed=sql.SQL("t.embedding_indexed" if waiting else "t.embedding is not null"),
            waiting=sql.SQL(parts["waiting"]).format(**common) if waiting else sql.SQL(""),
            **common,
        )

    if source.chunked:
        words, once = sql.SQL("t.fts"), sql.SQL("t.fts || ''::tsvector")
    else:
        words = once = sql.SQL("to_tsvector({}::regconfig, ({})::text)").format(
            sql.Literal(source.language), sql.SQL(source.text_expression)
        )
    common = {
        "dim": sql.SQL(str(int(dimension))),
        "table": table,
        "key": key,
        "returns": sql.SQL(form.returns),
        "output": sql.SQL(form.output),
    }
    vector = sql.SQL(parts["vector"]).format(
        function=sql.Identifier("public", source.search_function),
        count=sql.SQL(form.count),
        arguments=sql.SQL(form.vector_arguments),
        nearest=nearest("match_count"),
        **common,
    )
    hybrid = sql.SQL(parts["hybrid"]).format(
        function=sql.Identifier("public", f"{source.search_function}_hybrid"),
        arguments=sql.SQL(form.hybrid_arguments),
        language=sql.Literal(source.language),
        words=words,
        words_once=once,
        searched=sql.SQL(form.searched),
        nearest=nearest("greatest(match_count, 60)"),
        **common,
    )
    return [vector, hybrid]


def pin_search_path(conn: Connection, *, public: bool = True) -> None:
    """For this transaction, the search_path the functions created next keep (`set search_path from
    current`): the catalog, public (where an added source's text expression may name its own functions) and
    pgvector's schema; and pgvector loaded, so that its settings (hnsw.ef_search) can be attached to them."""
    vector_schema = conn.execute(
        "select extnamespace::regnamespace::text as s from pg_extension where extname = 'vector'"
    ).fetchone()["s"]
    path = f"pg_catalog, public, {vector_schema}" if public else f"pg_catalog, {vector_schema}"
    conn.execute("select set_config('search_path', %s, true)", (path,))
    conn.execute("select '[1]'::vector is not null")


def create(conn: Connection, source: Source, dimension: int) -> None:
    """Create or replace the source's search functions (owner and grants kept); in a transaction. The
    built-in ones (dores, documents) read nothing unqualified outside the catalog and pgvector."""
    pin_search_path(conn, public=source.search_function not in ("match_dores", "match_documents"))
    for statement in statements(source, dimension):
        conn.execute(statement)
