"""Chunks follow their parent: a change of a row's metadata columns reaches its chunks in the same
transaction, composed as the worker composes it (pipeline.chunk_metadata), without embedding anything again."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from pipeline.migrations import migrate
from pipeline.source_admin import add_source, remove_source
from pipeline.worker import Worker
from tests.conftest import invoke

LONG = " ".join(f"Frase {i} sobre confirmação automática de consultas e lembretes por WhatsApp." for i in range(40))
EMAILS = """
create table public.emails (
    id bigint generated always as identity primary key,
    assunto text,
    corpo text,
    caixa text not null default 'vendas',
    headers jsonb
)
"""


def chunks(conn: Any, table: str, key: str) -> list[dict[str, Any]]:
    """Everything a re-embedding would change, and the metadata."""
    return conn.execute(
        f"select id, chunk_index, content, content_hash, embedding::text as embedding, metadata from {table}"
        f" where {key} = %s order by chunk_index",
        (1,),
    ).fetchall()


def composed(conn: Any, source: str, table: str, chunk_table: str, key: str) -> list[tuple[Any, Any]]:
    """Each chunk's metadata beside what pipeline.chunk_metadata composes from its row now."""
    return [
        (r["stored"], r["composed"])
        for r in conn.execute(
            f"select c.metadata as stored, pipeline.chunk_metadata(%s, to_jsonb(t), c.chunk_index) as composed"
            f" from {chunk_table} c join {table} t on t.id = c.{key} order by c.id",
            (source,),
        )
    ]


def queued(conn: Any) -> int:
    return int(conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"])


def test_a_documents_metadata_reaches_its_chunks_in_the_same_transaction(conn: Any, worker: Worker) -> None:
    conn.execute(
        'insert into documents (title, content, metadata) values (\'Proposta\', %s, \'{"org_id": "a", "tipo": "p"}\'),'
        " ('Outra', 'Texto curto.', '{\"org_id\": \"a\"}')",
        (LONG,),
    )
    worker.drain(conn)
    before = chunks(conn, "document_chunks", "document_id")
    embedded_at = conn.execute("select embedded_at from documents where id = 1").fetchone()["embedded_at"]
    assert len(before) > 1 and {c["metadata"]["org_id"] for c in before} == {"a"}
    # The worker and the trigger compose the same way: pipeline.chunk_metadata, over the row as it is.
    assert all(
        stored == now for stored, now in composed(conn, "documents", "documents", "document_chunks", "document_id")
    )
    assert before[1]["metadata"] == {
        "org_id": "a",
        "tipo": "p",
        "title": "Proposta",
        "document_id": 1,
        "chunk_index": 1,
    }

    with conn.transaction():
        conn.execute("""update documents set metadata = metadata || '{"org_id": "b"}' where id = 1""")
        inside = chunks(conn, "document_chunks", "document_id")
        assert {c["metadata"]["org_id"] for c in inside} == {"b"}  # before the commit, in this transaction
    after = chunks(conn, "document_chunks", "document_id")
    assert [c["metadata"] for c in after] == [{**c["metadata"], "org_id": "b"} for c in before]
    unchanged = ("id", "chunk_index", "content", "content_hash", "embedding")
    assert [{k: c[k] for k in unchanged} for c in after] == [{k: c[k] for k in unchanged} for c in before]
    assert conn.execute("select embedded_at from documents where id = 1").fetchone()["embedded_at"] == embedded_at
    assert queued(conn) == 0 and worker.drain(conn).claimed == 0
    other = conn.execute("select metadata from document_chunks where document_id = 2").fetchone()["metadata"]
    assert other["org_id"] == "a"

    # A new title is a new text: embedded again by the worker, and meanwhile the old chunks carry it.
    conn.execute("update documents set title = 'Proposta revisada' where id = 1")
    assert {c["metadata"]["title"] for c in chunks(conn, "document_chunks", "document_id")} == {"Proposta revisada"}
    assert queued(conn) == 1
    report = worker.drain(conn)
    assert report.embedded == 1
    assert all(
        stored == now for stored, now in composed(conn, "documents", "documents", "document_chunks", "document_id")
    )


def test_a_chunked_sources_metadata_columns_reach_its_chunks(conn: Any, worker: Worker) -> None:
    conn.execute(EMAILS)
    conn.execute(
        "insert into emails (assunto, corpo, caixa, headers) values ('Proposta', %s, 'vendas', '{\"lang\": \"pt\"}')",
        (LONG,),
    )
    add_source(
        conn, name="emails", table="public.emails", text="assunto, corpo", chunked=True, metadata=["caixa", "headers"]
    )
    worker.drain(conn)
    before = chunks(conn, "emails_chunks", "emails_key")
    assert len(before) > 1
    assert before[0]["metadata"] == {"caixa": "vendas", "lang": "pt", "emails_key": 1, "chunk_index": 0}
    assert all(stored == now for stored, now in composed(conn, "emails", "emails", "emails_chunks", "emails_key"))

    conn.execute("""update emails set caixa = 'suporte', headers = '{"lang": "en", "prioridade": 1}'""")
    after = chunks(conn, "emails_chunks", "emails_key")
    assert [c["metadata"] for c in after] == [
        {"caixa": "suporte", "lang": "en", "prioridade": 1, "emails_key": 1, "chunk_index": i}
        for i in range(len(before))
    ]
    assert [c["embedding"] for c in after] == [c["embedding"] for c in before]
    assert queued(conn) == 0
    # A value that is not an object is kept whole, under its column's name; null too.
    conn.execute("""update emails set headers = '["a", "b"]'""")
    assert chunks(conn, "emails_chunks", "emails_key")[0]["metadata"] == {
        "caixa": "suporte", "headers": ["a", "b"], "emails_key": 1, "chunk_index": 0,
    }  # fmt: skip
    conn.execute("update emails set headers = null")
    assert chunks(conn, "emails_chunks", "emails_key")[0]["metadata"] == {
        "caixa": "suporte", "headers": None, "emails_key": 1, "chunk_index": 0,
    }  # fmt: skip
    assert queued(conn) == 0
    assert all(stored == now for stored, now in composed(conn, "emails", "emails", "emails_chunks", "emails_key"))
    remove_source(conn, "emails")  # and its trigger with it
    assert not conn.execute(
        "select 1 from pg_trigger where tgrelid = 'emails'::regclass and not tgisinternal"
    ).fetchone()
    conn.execute("update emails set caixa = 'vendas'")


def test_migrate_installs_the_trigger_and_brings_older_chunks_up_to_date(conn: Any, worker: Worker) -> None:
    conn.execute(EMAILS)
    conn.execute("insert into emails (assunto, corpo) values ('Oi', 'Texto do e-mail.')")
    conn.execute("""insert into documents (title, content, metadata) values ('Nota', 'Texto.', '{"org_id": "a"}')""")
    add_source(conn, name="emails", table="public.emails", text="assunto, corpo", chunked=True, metadata=["caixa"])
    worker.drain(conn)
    # As a database migrated by an older version: no trigger, and metadata changed since the chunks were written.
    conn.execute("drop trigger pipeline_documents_chunk_metadata on documents")
    conn.execute("drop trigger pipeline_emails_chunk_metadata on emails")
    conn.execute("""update documents set metadata = '{"org_id": "b"}'""")
    conn.execute("update emails set caixa = 'suporte'")
    assert conn.execute("select metadata ->> 'org_id' as o from document_chunks").fetchone()["o"] == "a"
    vectors = conn.execute("select id, embedding::text as e from document_chunks union all select id, embedding::text"
                           " from emails_chunks order by 1, 2").fetchall()  # fmt: skip
    migrate(conn)
    assert conn.execute("select metadata ->> 'org_id' as o from document_chunks").fetchone()["o"] == "b"
    assert conn.execute("select metadata ->> 'caixa' as c from emails_chunks").fetchone()["c"] == "suporte"
    assert conn.execute("select id, embedding::text as e from document_chunks union all select id, embedding::text"
                        " from emails_chunks order by 1, 2").fetchall() == vectors  # fmt: skip
    conn.execute("""update documents set metadata = '{"org_id": "c"}'""")
    conn.execute("update emails set caixa = 'financeiro'")
    assert conn.execute("select metadata ->> 'org_id' as o from document_chunks").fetchone()["o"] == "c"
    assert conn.execute("select metadata ->> 'caixa' as c from emails_chunks").fetchone()["c"] == "financeiro"
    assert queued(conn) == 0


def test_the_trigger_function_serves_only_its_sources_table(conn: Any) -> None:
    conn.execute("create table public.impostor (id bigint primary key, metadata jsonb, title text)")
    conn.execute(
        "create trigger t after update of metadata on impostor for each row"
        " execute function pipeline.copy_metadata_to_chunks('documents')"
    )  # the owner can; nobody else may execute it
    conn.execute("insert into impostor values (1, '{}', 'x')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not that source's table"):
        conn.execute("""update impostor set metadata = '{"org_id": "b"}'""")
    granted = conn.execute(
        "select has_function_privilege('public', 'pipeline.copy_metadata_to_chunks()', 'execute') as ok"
    ).fetchone()["ok"]
    assert granted is False


def test_follow_parent_from_the_command_line(db_url: str, conn: Any) -> None:
    conn.execute(EMAILS)
    add_source(conn, name="emails", table="public.emails", text="corpo", chunked=True)
    result = invoke("source", "follow-parent", "emails", "--json", db_url=db_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["policy"] == "chunks follow their parent"
    assert "public.emails has no row-level security" in result.stderr
    policy = conn.execute(
        "select roles::text[] as roles, cmd, qual from pg_policies where tablename = 'emails_chunks'"
    ).fetchone()
    assert policy["roles"] == ["public"] and policy["cmd"] == "SELECT"
    assert "FROM emails p" in policy["qual"] and "emails_chunks.emails_key" in policy["qual"]
    refused = invoke("source", "follow-parent", "dores", db_url=db_url)
    assert refused.returncode == 1 and "row source" in refused.stderr
    assert invoke("source", "follow-parent", "emails", "--off", db_url=db_url).returncode == 0
    assert conn.execute("select count(*) as n from pg_policies where tablename = 'emails_chunks'").fetchone()["n"] == 0
