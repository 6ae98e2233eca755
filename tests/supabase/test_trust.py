"""Trust flows downward only (docs/security.md): what the worker, signed-in users and anon can write is never
executed, loaded or believed by a more privileged role. Each test attacks as that role on the Supabase layout."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from pipeline.config import Settings
from pipeline.db import connect
from pipeline.errors import PipelineError
from pipeline.indexes import restore_vector_indexes
from pipeline.migrations import migrate, pending
from pipeline.model import record_model, recorded_model
from pipeline.security import advisor
from pipeline.segments import fit_database
from pipeline.source_admin import add_source
from pipeline.worker import Worker
from tests.supabase.conftest import Project
from tests.supabase.test_supabase import load_sample, sql_blocks

WORKER = ("pipeline_worker", "change-me")


@pytest.fixture
def worker_url(supabase: Project) -> Iterator[Callable[[], str]]:
    """docs/security.md's worker role, verbatim, created once the schema is migrated (`create()`); dropped after
    the test, since roles belong to the whole cluster."""
    created: list[str] = []

    def create() -> str:
        with psycopg.connect(supabase.postgres_url, autocommit=True) as conn:
            conn.execute("drop role if exists pipeline_worker")
            for block in sql_blocks("security.md", after="## A role for the daemon"):
                conn.execute(block.encode())
        created.append(supabase.url(*WORKER))
        return created[0]

    yield create
    if created:
        with psycopg.connect(supabase.admin_url, autocommit=True) as conn:
            conn.execute("drop owned by pipeline_worker")
            conn.execute("drop role pipeline_worker")


def test_the_worker_cannot_write_what_the_owner_runs_or_loads(
    supabase: Project, embedder: Any, worker_url: Callable[[], str]
) -> None:
    with connect(supabase.postgres_url) as conn:
        migrate(conn)
    worker = worker_url()
    # Nothing recorded yet: the worker may not pick the model the owner's commands will load.
    with connect(worker) as worker_conn, pytest.raises(PipelineError, match="only the owner of its tables records one"):
        record_model(worker_conn, embedder)
    with connect(supabase.postgres_url) as conn:
        conn.execute("insert into dores (dor_base) values ('Clientes faltam'), ('Agenda vazia'), ('Sem retorno')")
        record_model(conn, embedder)
        Worker(embedder=embedder, settings=Settings()).drain(conn)
    attacks = [
        "insert into pipeline.state (key, value) values ('index:x', 'create table public.pwned as select 1')",
        "update pipeline.state set value = '/tmp/model-of-my-choice' where key = 'model'",
        "insert into pipeline.state (key, value) values ('model', 'x') on conflict (key) do update set value = 'x'",
        "delete from pipeline.state where key like 'repeatable:%'",
        "update pipeline.state set key = 'last_sync:x' where key = 'dimension'",
        "truncate pipeline.state",
    ]
    with connect(worker) as worker_conn:
        for attack in attacks:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                worker_conn.execute(attack.encode())
        # Its own bookkeeping still works: it syncs, records the sync, fits segments.
        worker_conn.execute(
            "insert into pipeline.state (key, value) values ('last_sync:dores', now()::text)"
            " on conflict (key) do update set value = excluded.value"
        )
    with connect(supabase.postgres_url) as conn:
        conn.execute("insert into dores (dor_base) values ('nova dor')")
    with connect(worker) as worker_conn:
        assert Worker(embedder=embedder, settings=Settings()).drain(worker_conn).embedded == 1
        fit_database(worker_conn, clusters=2)
    with connect(supabase.postgres_url) as conn:
        assert recorded_model(conn)[0] == embedder.name
        assert pending(conn) == []


def test_set_aside_indexes_are_built_from_a_template_never_from_stored_sql(
    supabase: Project, embedder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    load_sample(supabase, embedder, dores=6)
    with psycopg.connect(supabase.admin_url, autocommit=True) as admin:
        # Rows in the form versions before 0011 kept, as a worker could still write them then.
        admin.execute("drop index public.dores_embedding_idx")
        admin.execute(
            "insert into pipeline.state (key, value) values"
            " ('index:public.dores_embedding_idx', 'CREATE INDEX dores_embedding_idx ON public.dores USING hnsw"
            " (embedding vector_cosine_ops) WITH (m=''16'', ef_construction=''64'')'),"
            " ('index:public.x', 'create table public.pwned as select current_user; grant delete on public.dores to"
            " pipeline_worker'),"
            " ('index:public.y', 'CREATE INDEX y ON public.dores USING hnsw (embedding vector_cosine_ops) WITH"
            " (m=''16''); create table public.pwned ()')"
        )
    with connect(supabase.postgres_url) as conn, caplog.at_level(logging.WARNING):
        assert restore_vector_indexes(conn) == ["public.dores_embedding_idx"]
        assert conn.execute("select to_regclass('public.pwned') as t").fetchone()["t"] is None
        assert conn.execute("select count(*) as n from pipeline.state where key like 'index:%'").fetchone()["n"] == 0
        definition = conn.execute("select pg_get_indexdef('public.dores_embedding_idx'::regclass) as d").fetchone()
        assert "hnsw (embedding vector_cosine_ops) WITH (m='16', ef_construction='64')" in definition["d"]
    assert "index:public.x does not describe a vector index" in caplog.text


def _policies(conn: Any, *tables: str) -> None:
    """What an owner writes so that signed-in users keep their organisation's rows."""
    org = "(metadata ->> 'org_id') = ((select auth.jwt()) ->> 'org_id')"
    for table in tables:
        conn.execute(f"alter table public.{table} enable row level security")
        conn.execute(f"create policy {table}_org on public.{table} for all to authenticated using ({org}) with check ({org})")
        conn.execute(f"grant select, insert, update on public.{table} to authenticated")


def test_signed_in_users_cannot_plant_vectors(supabase: Project, embedder: Any) -> None:
    acme = {"role": "authenticated", "claims": {"org_id": "acme", "sub": "u1"}}
    with connect(supabase.postgres_url) as conn:
        migrate(conn)
        conn.execute("create table public.leads (id bigint generated always as identity primary key, msg text, metadata jsonb)")
        add_source(conn, name="leads", table="public.leads", text="msg")
        conn.execute("create table public.notes (id bigint generated always as identity primary key, body text, metadata jsonb)")
        add_source(conn, name="notes", table="public.notes", text="body", chunked=True, metadata=["metadata"])
        _policies(conn, "dores", "documents", "leads", "notes", "notes_chunks", "document_chunks")
        record_model(conn, embedder)
        conn.execute("insert into dores (dor_base, metadata) values ('Pacientes faltam', '{\"org_id\": \"acme\"}')")
        Worker(embedder=embedder, settings=Settings()).drain(conn)
    planted = str(np.ones(embedder.dimension, dtype=np.float32).tolist())
    text = "Clientes somem depois do orçamento"
    own_hash = "encode(sha256(convert_to(%s, 'UTF8')), 'hex')"
    # A new row that arrives with a vector, the recorded model and the matching hash: none of it is kept.
    supabase.api(
        f"insert into public.dores (dor_base, metadata, embedding, embedding_model, content_hash, embedded_at, segmento)"
        f" values (%s, '{{\"org_id\": \"acme\"}}', %s, %s, {own_hash}, now(), 7)",
        (text, planted, embedder.name, text),
        **acme,
    )
    supabase.api(
        f"insert into public.leads (msg, metadata, embedding, embedding_model, content_hash, embedded_at)"
        f" values (%s, '{{\"org_id\": \"acme\"}}', %s, %s, {own_hash}, now())",
        (text, planted, embedder.name, text),
        **acme,
    )
    supabase.api(
        "insert into public.documents (title, content, metadata, embedding_model, content_hash)"
        " values ('Nota', %s, '{\"org_id\": \"acme\"}', %s, 'x')",
        (text, embedder.name),
        **acme,
    )
    # An embedded row's vector and segment, overwritten in place: kept as the pipeline wrote them.
    supabase.api("update public.dores set embedding = %s, segmento = 9, content_hash = 'x'", (planted,), **acme)
    # Chunks are the pipeline's alone, whatever the policy lets through.
    for table, key in (("notes_chunks", "notes_key"), ("document_chunks", "document_id")):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only the pipeline writes"):
            supabase.api(
                f"insert into public.{table} ({key}, chunk_index, content, metadata, embedding, embedding_model, content_hash)"
                f" values (1, 0, 'x', '{{\"org_id\": \"acme\"}}', %s, 'm', 'h')",
                (planted,),
                **acme,
            )
    with connect(supabase.postgres_url) as conn:
        rows = conn.execute(
            "select dor_base, embedding, embedding_model, content_hash, segmento from dores order by id"
        ).fetchall()
        assert rows[0]["embedding_model"] == embedder.name and rows[0]["segmento"] is None
        assert rows[0]["content_hash"] != "x" and not np.allclose(rows[0]["embedding"].to_numpy(), 1)
        assert all(rows[1][c] is None for c in ("embedding", "embedding_model", "content_hash", "segmento"))
        lead = conn.execute("select embedding, embedding_indexed, content_hash from leads").fetchone()
        assert lead == {"embedding": None, "embedding_indexed": True, "content_hash": None}
        assert conn.execute("select content_hash from documents").fetchone()["content_hash"] is None
        Worker(embedder=embedder, settings=Settings()).drain(conn)
        expected = embedder.embed([text])[0]
        for table in ("dores", "leads"):
            vector = conn.execute(
                f"select embedding as v, embedding_model as m from {table}"
                f" where {'dor_base' if table == 'dores' else 'msg'} = %s",
                (text,),
            ).fetchone()
            assert vector["m"] == embedder.name
            assert float(np.dot(vector["v"].to_numpy(), expected)) > 0.999
        assert conn.execute("select count(*) as n from document_chunks").fetchone()["n"] == 1


def test_every_search_function_works_for_the_roles_it_is_granted_to(supabase: Project, embedder: Any) -> None:
    with connect(supabase.postgres_url) as conn:
        migrate(conn)
        conn.execute("create table public.leads (id bigint generated always as identity primary key, msg text, metadata jsonb)")
        add_source(conn, name="leads", table="public.leads", text="msg")
        _policies(conn, "dores", "document_chunks", "leads")
        for org in ("acme", "globex"):
            meta = f'{{"org_id": "{org}"}}'
            conn.execute("insert into dores (dor_base, metadata) values (%s, %s)", (f"Pacientes da {org} faltam às consultas", meta))
            conn.execute("insert into leads (msg, metadata) values (%s, %s)", (f"A {org} quer lembretes de consultas", meta))
            conn.execute(
                "insert into documents (title, content, metadata) values (%s, 'Lembretes reduzem faltas às consultas.', %s)",
                (f"Proposta {org}", meta),
            )
        record_model(conn, embedder)
        Worker(embedder=embedder, settings=Settings()).drain(conn)
    query = "faltas às consultas"
    vector = str(embedder.embed([query])[0].tolist())
    calls = {
        "match_dores": {"query_embedding": vector},
        "match_dores_hybrid": {"query_text": query, "query_embedding": vector},
        "match_documents": {"query_embedding": vector},
        "match_documents_hybrid": {"query_text": query, "query_embedding": vector},
        "match_leads": {"query_embedding": vector},
        "match_leads_hybrid": {"query_text": query, "query_embedding": vector},
    }
    for function, args in calls.items():
        for org in ("acme", "globex"):
            found = supabase.api.rpc(function, args, role="authenticated", claims={"org_id": org})
            texts = " ".join(str(r.get("dor_base") or r.get("content")) for r in found)
            assert found and org in texts and ("globex" if org == "acme" else "acme") not in texts, (function, found)
        assert supabase.api.rpc(function, args, role="anon") == [], function
    with connect(supabase.postgres_url) as conn:
        assert advisor(conn) == []


def test_added_sources_are_closed_like_dores_and_status_warns_when_opened(supabase: Project) -> None:
    with connect(supabase.postgres_url) as conn:
        migrate(conn)
        conn.execute("create table public.leads (id bigint primary key, msg text)")
        conn.execute("alter table public.leads enable row level security")
        conn.execute("create table public.notes (id bigint primary key, body text)")
        add_source(conn, name="leads", table="public.leads", text="msg")
        add_source(conn, name="notes", table="public.notes", text="body", chunked=True)
    for role in ("anon", "authenticated"):
        for table in ("leads", "notes", "notes_chunks", "dores", "document_chunks"):
            for statement in (f"truncate public.{table}", f"create trigger t before insert on public.{table} "
                              "for each row execute function pipeline.touch_updated_at()"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    supabase.api(statement, role=role)
    with connect(supabase.postgres_url) as conn:
        assert advisor(conn) == [] or {f.lint for f in advisor(conn)} == {"rls_disabled_in_public"}
        conn.execute("grant truncate on public.leads to anon")
        found = [f for f in advisor(conn) if f.lint == "api_role_table_rights"]
        assert [f.object for f in found] == ["public.leads"] and "anon truncate" in found[0].detail
        migrate(conn)  # `migrate` gives an added source this version's guards again
        assert not [f for f in advisor(conn) if f.lint == "api_role_table_rights"]
