"""The statements `Source` composes for the worker, rendered without a database (`as_string()`): identifiers
quoted, the owner's `%` kept from the placeholders, vectors that wait marked only where a source has them, and
the same-text guard in every write."""

from __future__ import annotations

import re
from typing import Any

import pytest
from psycopg import sql

from pipeline.sources import Source

GUARD_ROW = (
    "pipeline.content_hash(case when t.\"id\" = s.pipeline_key::uuid then (empresa || ' ' || mensagem)::text end)"
    " = s.pipeline_hash"
)


def row_source(**changes: Any) -> Source:
    """A row source keyed by uuid in a schema and table whose names need quoting."""
    fields: dict[str, Any] = {
        "name": "leads",
        "table_schema": "Vendas",
        "table_name": "leads 2026",
        "key_column": "id",
        "key_type": "uuid",
        "text_expression": "empresa || ' ' || mensagem",
        "text_columns": ("empresa", "mensagem"),
        "kind": "row",
        "search_function": "match_leads",
    }
    return Source(**{**fields, **changes})


def chunked_source(**changes: Any) -> Source:
    fields: dict[str, Any] = {
        "name": "emails",
        "table_schema": "public",
        "table_name": "emails",
        "key_column": "message_id",
        "key_type": "text",
        "text_expression": "assunto || ' ' || corpo",
        "text_columns": ("assunto", "corpo"),
        "kind": "chunked",
        "search_function": "match_emails",
        "chunk_table": "emails_chunks",
        "chunk_key_column": "emails_key",
        "metadata_columns": ("caixa",),
    }
    return Source(**{**fields, **changes})


def text(query: sql.Composable) -> str:
    """The statement as the server gets it, less its parameters."""
    return " ".join(query.as_string().split())


def placeholders(statement: str) -> list[str]:
    """The `%(name)s` placeholders; any other lone `%` would be taken for one by the driver."""
    unescaped = statement.replace("%%", "")
    found = re.findall(r"%\((\w+)\)s", unescaped)
    assert unescaped.count("%") == len(found), f"a lone % in: {statement}"
    return found


def where(statement: str) -> str:
    return statement.split(" where ", 1)[1]


# -- reading ---------------------------------------------------------------------------------------


def test_read_query_quotes_identifiers_and_casts_the_keys_to_the_key_type() -> None:
    statement = text(row_source().read_query())
    assert 'from "Vendas"."leads 2026" t' in statement
    assert 't."id"::text as key' in statement and 'where t."id" = any(%(keys)s::uuid[])' in statement
    assert "coalesce((empresa || ' ' || mensagem)::text, '') as text" in statement
    assert placeholders(statement) == ["model", "keys"]


def test_read_query_counts_a_row_current_only_with_its_vector() -> None:
    row = text(row_source().read_query())
    chunked = text(chunked_source().read_query())
    assert "t.embedding_model = %(model)s and t.embedding is not null" in row
    assert "embedding is not null" not in chunked  # a chunked source's vectors are in its chunks


def test_an_identifier_with_a_quote_cannot_end_the_name() -> None:
    statement = text(row_source(table_name='leads"; drop table x; --').read_query())
    assert 'from "Vendas"."leads""; drop table x; --" t' in statement


def test_the_owners_percent_signs_reach_the_server_as_written() -> None:
    source = row_source(text_expression="mensagem || (id::text like '%a%')::text")
    for query in (source.read_query(), source.write_query(), source.queue_stale_query()):
        statement = text(query)
        assert "like '%%a%%'" in statement
        placeholders(statement)  # no lone %
    assert "(status %% 2)::text as label" in text(source.labelled_query("status % 2"))


# -- writing ---------------------------------------------------------------------------------------


def test_write_query_guards_on_the_same_text_in_its_where() -> None:
    for query in (row_source().write_query(), row_source(waits=True).write_query(index_later=True)):
        statement = text(query)
        assert where(statement).startswith('t."id" = s.pipeline_key::uuid and ' + GUARD_ROW)
        assert statement.startswith('update "Vendas"."leads 2026" t set embedding = s.pipeline_embedding')
        assert statement.endswith('returning t."id"::text as key')
    chunked = text(chunked_source().write_query())
    assert "pipeline.content_hash(case when t.\"message_id\" = s.pipeline_key::text then (assunto || ' ' || corpo)" in (
        where(chunked)
    )
    assert "embedding =" not in chunked  # the vectors go into the chunks


def test_embedding_indexed_only_for_sources_whose_vectors_wait() -> None:
    assert "embedding_indexed" not in text(row_source().write_query())
    assert "embedding_indexed" not in text(row_source().write_query(index_later=True))
    waits = row_source(waits=True)
    assert "embedding_indexed = false" in text(waits.write_query(index_later=True))
    assert "embedding_indexed = true" in text(waits.write_query())
    assert "embedding_indexed" not in text(chunked_source().write_query(index_later=True))


def test_write_query_moves_a_row_to_its_nearest_segment_only_for_sources_with_segments() -> None:
    assert "segment" not in text(row_source().write_query())
    statement = text(row_source(segment_column="Segmento").write_query())
    assert '"Segmento" = coalesce(pipeline.nearest_source_segment(\'leads\', s.pipeline_embedding), t."Segmento")' in (
        statement
    )


def test_insert_chunks_query_composes_metadata_from_the_metadata_columns_and_the_key_once() -> None:
    statement = text(chunked_source(metadata_columns=("caixa", "message_id")).insert_chunks_query())
    assert statement.startswith('insert into "public"."emails_chunks" ("emails_key", chunk_index, content,')
    assert (
        "pipeline.chunk_metadata('emails', jsonb_build_object('caixa', t.\"caixa\")"
        " || jsonb_build_object('message_id', t.\"message_id\"), s.pipeline_chunk_index)"
    ) in statement
    assert statement.count("jsonb_build_object('message_id'") == 1
    assert 'join "public"."emails" t on t."message_id" = s.pipeline_key::text' in statement
    assert placeholders(statement) == ["model", "keys"]


def test_delete_chunks_query_casts_to_the_key_type() -> None:
    statement = text(chunked_source(key_type="bigint").delete_chunks_query())
    assert statement == 'delete from "public"."emails_chunks" where "emails_key" = any(%(keys)s::bigint[])'


# -- queueing --------------------------------------------------------------------------------------


def test_queue_stale_query_queues_missing_and_stale_vectors_but_not_dead_letters() -> None:
    row = text(row_source().queue_stale_query())
    assert where(row).startswith(
        "(t.embedding is null or t.embedding_model is distinct from %(model)s"
        " or t.content_hash is distinct from pipeline.content_hash((empresa || ' ' || mensagem)::text))"
    )
    assert "not exists (select 1 from pipeline.failed f where f.source = 'leads' and f.row_id = t.\"id\"::text)" in row
    assert row.endswith("on conflict (source, row_id) do nothing")
    chunked = text(chunked_source().queue_stale_query())
    assert "embedding is null" not in chunked and "t.embedding_model is distinct from %(model)s" in chunked


def test_a_source_name_is_a_literal() -> None:
    statement = text(row_source(name="it's").queue_all_query())
    assert 'select \'it\'\'s\', t."id"::text from "Vendas"."leads 2026" t' in statement


# -- vectors that wait, status ---------------------------------------------------------------------


def test_index_waiting_query_picks_its_rows_once() -> None:
    statement = text(row_source(waits=True).index_waiting_query())
    assert statement.startswith('with picked as materialized (select w."id" from "Vendas"."leads 2026" w')
    assert "limit %(limit)s for update skip locked)" in statement
    assert statement.endswith(
        'update "Vendas"."leads 2026" t set embedding_indexed = true from picked p where t."id" = p."id"'
    )


@pytest.mark.parametrize(
    ("source", "unindexed", "chunks"),
    [
        (row_source(), "0 as unindexed", "null::bigint as chunks"),
        (
            row_source(waits=True),
            "count(*) filter (where embedding is not null and not embedding_indexed) as unindexed",
            "null::bigint as chunks",
        ),
        (chunked_source(), "0 as unindexed", '(select count(*) from "public"."emails_chunks") as chunks'),
    ],
)
def test_status_query(source: Source, unindexed: str, chunks: str) -> None:
    statement = text(source.status_query())
    assert unindexed in statement and chunks in statement
    embedded = "embedded_at is not null" if source.chunked else "embedding is not null"
    assert f"count(*) filter (where {embedded}) as embedded" in statement
