"""Chunks follow their parent on Supabase: a document (or an added source's row) moved to another organisation by
a metadata update is moved in its chunks in the same transaction, under per-organisation policies on the chunks'
own metadata or under the policy "chunks follow their parent"; nothing is embedded again."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pipeline.config import Settings
from pipeline.db import connect
from pipeline.migrations import migrate
from pipeline.model import record_model
from pipeline.source_admin import add_source, follow_parent
from pipeline.worker import Worker
from tests.supabase.conftest import Project
from tests.supabase.test_supabase import lints

ORG = "(select auth.jwt()) ->> 'org_id'"
MANAGER = "(select auth.jwt()) ->> 'user_role' = 'manager'"
EMAILS = "create table public.emails (id bigint generated always as identity primary key, corpo text, org text)"
# What an owner writes so that each organisation reads its rows, and managers may hand one to another.
PARENT_POLICIES = f"""
alter table public.emails enable row level security;
create policy "org reads its documents" on public.documents for select to authenticated
    using (metadata ->> 'org_id' = {ORG});
create policy "org reads its emails" on public.emails for select to authenticated using (org = {ORG});
create policy "managers move documents" on public.documents for all to authenticated
    using ({MANAGER}) with check ({MANAGER});
create policy "managers move emails" on public.emails for all to authenticated using ({MANAGER}) with check ({MANAGER});
"""
# docs/supabase.md before "chunks follow their parent": policies on the chunks' own metadata.
CHUNK_POLICIES = f"""
create policy "org reads its chunks" on public.document_chunks for select to authenticated
    using (metadata ->> 'org_id' = {ORG});
create policy "org reads its email chunks" on public.emails_chunks for select to authenticated
    using (metadata ->> 'org' = {ORG});
"""
SOURCES = {  # search function → the chunk metadata key that names the parent row
    "match_documents": "document_id",
    "match_emails": "emails_key",
}


def load(project: Project, embedder: Any, *, follow: bool) -> None:
    """Two organisations' documents and e-mails, embedded; the parents' policies; the chunks' policies."""
    with connect(project.postgres_url) as conn:
        migrate(conn)
        conn.execute(EMAILS)
        add_source(
            conn, name="emails", table="public.emails", text="corpo", chunked=True, metadata=["org"],
            chunks_follow_parent=follow,
        )  # fmt: skip
        for org, text in (("a", "Confirmação automática de consultas por WhatsApp."), ("b", "Rotas de entrega.")):
            conn.execute(
                "insert into documents (title, content, metadata) values ('Proposta', %s, %s)",
                (text, json.dumps({"org_id": org})),
            )
            conn.execute("insert into emails (corpo, org) values (%s, %s)", (text, org))
        conn.execute(PARENT_POLICIES.encode())
        if follow:
            assert follow_parent(conn, "documents", roles=["authenticated"])["warnings"] == []
        else:
            conn.execute(CHUNK_POLICIES.encode())
        record_model(conn, embedder)
        assert Worker(embedder=embedder, settings=Settings()).drain(conn).embedded == 4


def found(project: Project, vector: str, org: str) -> dict[str, set[int]]:
    """Per search function, the parent rows whose chunks `org`'s signed-in user finds."""
    return {
        function: {
            r["metadata"][key]
            for r in project.api.rpc(
                function, {"query_embedding": vector, "match_count": 10}, role="authenticated", claims={"org_id": org}
            )
        }
        for function, key in SOURCES.items()
    }


def derived(project: Project) -> list[Any]:
    """What embedding writes: the chunks' rows and vectors, the parents' hashes and times, the queue."""
    with psycopg.connect(project.postgres_url) as conn:
        return [
            conn.execute(f"select id, {key}, content_hash, embedding::text from public.{table} order by id").fetchall()
            for table, key in (("document_chunks", "document_id"), ("emails_chunks", "emails_key"))
        ] + [
            conn.execute("select id, content_hash, embedded_at from public.documents order by id").fetchall(),
            conn.execute("select id, content_hash, embedded_at from public.emails order by id").fetchall(),
            conn.execute("select * from pipeline.queue").fetchall(),
        ]


def move_and_search(project: Project, vector: str) -> dict[str, dict[str, set[int]]]:
    """The owner hands org a's document and e-mail to org b; then, in the same transaction (nothing committed,
    no sync), each organisation's signed-in user searches: what each finds there is returned."""
    seen = {}
    with psycopg.connect(project.postgres_url, row_factory=dict_row) as conn:
        conn.execute("""update public.documents set metadata = metadata || '{"org_id": "b"}' where id = 1""")
        conn.execute("update public.emails set org = 'b' where id = 1")
        conn.execute("set local role authenticated")
        for org in ("a", "b"):
            conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps({"org_id": org}),))
            seen[org] = {
                function: {
                    r["metadata"][key]
                    for r in conn.execute(f"select * from public.{function}(%s::extensions.vector, 10)", (vector,))
                }
                for function, key in SOURCES.items()
            }
        conn.commit()
    return seen


@pytest.mark.parametrize("follow", [False, True], ids=["per-org-chunk-policies", "chunks-follow-parent"])
def test_a_document_moved_to_another_organisation_moves_its_chunks_at_once(
    supabase: Project, embedder: Any, follow: bool
) -> None:
    load(supabase, embedder, follow=follow)
    vector = str(embedder.embed(["confirmação de consultas"])[0].tolist())
    assert found(supabase, vector, "a") == {"match_documents": {1}, "match_emails": {1}}
    assert found(supabase, vector, "b") == {"match_documents": {2}, "match_emails": {2}}
    before = derived(supabase)

    moved = {
        "a": {"match_documents": set(), "match_emails": set()},
        "b": {"match_documents": {1, 2}, "match_emails": {1, 2}},
    }
    assert move_and_search(supabase, vector) == moved
    assert {org: found(supabase, vector, org) for org in ("a", "b")} == moved
    assert derived(supabase) == before  # no chunk, vector or hash rewritten; nothing queued
    rows = supabase.api.rpc(
        "match_documents", {"query_embedding": vector, "match_count": 10}, role="authenticated", claims={"org_id": "b"}
    )
    assert {r["metadata"]["org_id"] for r in rows} == {"b"}  # the metadata moved too, whatever the policy

    # And back, by a signed-in manager through the API: its UPDATE rewrites the chunks through the trigger, which
    # writes as the pipeline's owner (the chunk tables refuse a chunk written by an API role: test_trust.py).
    manager = {"role": "authenticated", "claims": {"org_id": "b", "user_role": "manager", "sub": "m"}}
    assert supabase.api("""update public.documents set metadata = '{"org_id": "a"}' where id = 1""", **manager) == 1
    assert supabase.api("update public.emails set org = 'a' where id = 1", **manager) == 1
    assert found(supabase, vector, "a") == {"match_documents": {1}, "match_emails": {1}}
    assert found(supabase, vector, "b") == {"match_documents": {2}, "match_emails": {2}}
    assert derived(supabase) == before
    assert supabase.api.rpc("match_documents", {"query_embedding": vector}, role="anon") == []
    assert lints(supabase.postgres_url) == []
