"""The pipeline on Supabase's own role layout: migrated, run and searched as the non-superuser `postgres`,
closed to the public anon key by default, and never dropping queued work it cannot see."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pipeline.config import Settings
from pipeline.db import connect
from pipeline.errors import RowSecurityError
from pipeline.migrations import load, migrate
from pipeline.model import record_model
from pipeline.security import advisor
from pipeline.segments import fit_database
from pipeline.worker import Worker
from tests.conftest import ROOT, daemon_thread, invoke, wait_until
from tests.supabase.conftest import Project

API_ROLES = ("anon", "authenticated")
TABLES = ("dores", "documents", "document_chunks", "segments")

# What Supabase's linter (splinter) checks, written out here independently of pipeline/queries.sql, over
# every schema the pipeline touches. Each row is a finding the dashboard's Security Advisor would show.
LINTS = """
with api(rolname) as (values ('anon'), ('authenticated')),
ours as (select oid from pg_namespace where nspname in ('public', 'pipeline'))
select 'rls_disabled_in_public' as lint, c.oid::regclass::text as object
from pg_class c
where c.relnamespace = 'public'::regnamespace and c.relkind = 'r' and not c.relrowsecurity
  and (has_table_privilege('anon', c.oid, 'SELECT') or has_table_privilege('authenticated', c.oid, 'SELECT'))
union all
select 'security_definer_view', c.oid::regclass::text
from pg_class c
left join pg_depend d on d.objid = c.oid and d.deptype = 'e'
where c.relnamespace in (select oid from ours) and c.relkind = 'v' and d.objid is null
  and not coalesce(lower(c.reloptions::text)::text[] && array['security_invoker=true', 'security_invoker=on'], false)
union all
select 'function_search_path_mutable', p.oid::regprocedure::text
from pg_proc p
left join pg_depend d on d.objid = p.oid and d.deptype = 'e'
where p.pronamespace in (select oid from ours) and d.objid is null
  and not exists (select 1 from unnest(coalesce(p.proconfig, '{}')) c where c like 'search_path=%')
union all
select 'security_definer_function_executable', p.oid::regprocedure::text || ' by ' || a.rolname
from pg_proc p cross join api a
where p.pronamespace in (select oid from ours) and p.prosecdef and has_function_privilege(a.rolname, p.oid, 'EXECUTE')
union all
select 'extension_in_public', e.extname
from pg_extension e where e.extnamespace = 'public'::regnamespace and e.extname <> 'plpgsql'
"""


def lints(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [(r[0], r[1]) for r in conn.execute(LINTS)]


def load_sample(project: Project, embedder: Any, *, dores: int = 30) -> None:
    """Migrate as `postgres`, insert dores and a document, embed them and fit segments."""
    with connect(project.postgres_url) as conn:
        assert migrate(conn)
        conn.execute(
            "insert into dores (dor_base, solucao_graventum) select 'Clientes faltam às consultas ' || g,"
            " 'lembrete automático' from generate_series(1, %s) g",
            (dores,),
        )
        conn.execute(
            "insert into documents (title, content, metadata) values"
            " ('Proposta', 'Confirmação automática de consultas na clínica.', '{\"org_id\": \"a\"}')"
        )
        record_model(conn, embedder)
        Worker(embedder=embedder, settings=Settings(claim_size=64)).drain(conn)
        fit_database(conn, clusters=3)


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {
            "embedded": conn.execute("select count(*) from dores where embedding is not null").fetchone()[0],
            "documents": conn.execute("select count(*) from documents").fetchone()[0],
            "chunks": conn.execute("select count(*) from document_chunks").fetchone()[0],
            "segments": conn.execute("select count(*) from segments").fetchone()[0],
        }


def test_anon_and_authenticated_read_and_change_nothing_after_a_plain_migrate(supabase: Project, embedder: Any) -> None:
    load_sample(supabase, embedder)
    before = counts(supabase.postgres_url)
    assert before == {"embedded": 30, "documents": 1, "chunks": 1, "segments": 3}
    api = supabase.api
    vector = "[" + ",".join(["0.05"] * 384) + "]"
    for role in API_ROLES:
        for table in TABLES:
            assert api(f"select * from public.{table}", role=role) == [], (role, table)
        assert api("update public.dores set embedding = null", role=role) == 0
        assert api("update public.dores set dor_base = 'x'", role=role) == 0
        assert api("delete from public.documents", role=role) == 0
        assert api("delete from public.document_chunks", role=role) == 0
        assert api("update public.segments set label = 'x'", role=role) == 0
        assert api("delete from public.dores", role=role) == 0
        refused = [
            "insert into public.dores (dor_base) values ('falsa')",
            "insert into public.documents (content) values ('falso')",
            f"insert into public.document_chunks (document_id, chunk_index, content, embedding, embedding_model,"
            f" content_hash) values (1, 9, 'falso', '{vector}', 'm', 'h')",
            "insert into public.segments (model_id, segmento, label, size, centroid) values (1, 99, 'x', 1, '[1]')",
            "truncate public.dores",
            "select * from public.current_segments",
            "select * from pipeline.queue",
            "insert into pipeline.queue (source, row_id) values ('dores', 1)",
            "select pipeline.existing_keys('dores', array['1'])",
        ]
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                api(statement, role=role)
                pytest.fail(f"{role} could run: {statement}")
        assert api("select * from public.match_dores(%s::extensions.vector, 5)", (vector,), role=role) == []
        assert api("select * from public.match_documents(%s::extensions.vector, 5)", (vector,), role=role) == []
    assert counts(supabase.postgres_url) == before
    # service_role (n8n's Supabase node) keeps working: it bypasses row-level security.
    assert len(api("select id from public.dores", role="service_role")) == 30
    assert len(api("select * from public.match_dores(%s::extensions.vector, 5)", (vector,), role="service_role")) == 5
    assert api("insert into public.dores (dor_base) values ('vinda do n8n')", role="service_role") == 1
    with psycopg.connect(supabase.postgres_url) as conn:
        assert conn.execute("select count(*) from pipeline.queue").fetchone()[0] == 1


def test_the_security_advisor_finds_nothing_on_the_pipelines_objects(supabase: Project, embedder: Any) -> None:
    load_sample(supabase, embedder)
    assert lints(supabase.postgres_url) == []
    with connect(supabase.postgres_url) as conn:
        assert advisor(conn) == []
        # Every function keeps its fixed search_path and works with vector in schema extensions.
        config = conn.execute("select proconfig from pg_proc where oid = 'public.match_documents'::regproc").fetchone()[
            "proconfig"
        ]
        assert "search_path=pg_catalog, extensions" in config and "hnsw.ef_search=100" in config


def test_rerunning_a_released_file_by_hand_is_noticed_and_repaired(supabase: Project, embedder: Any) -> None:
    load_sample(supabase, embedder, dores=3)
    with psycopg.connect(supabase.postgres_url, autocommit=True) as conn:  # the SQL editor
        conn.execute((ROOT / "pipeline" / "sql" / "0001_init.sql").read_bytes())
    found = {(lint, obj) for lint, obj in lints(supabase.postgres_url)}
    assert ("function_search_path_mutable", "pipeline.enqueue_row()") in found
    status = invoke("status", db_url=supabase.postgres_url)
    assert status.returncode == 0, status.stderr
    assert "warning: pipeline.enqueue_row: queue trigger function lost SECURITY DEFINER" in status.stdout
    migrated = invoke("migrate", db_url=supabase.postgres_url)
    assert migrated.returncode == 0, migrated.stderr
    assert lints(supabase.postgres_url) == []
    assert "warning" not in invoke("status", db_url=supabase.postgres_url).stdout
    # With the triggers' rights back, a writer with no right on schema pipeline still queues its rows.
    assert supabase.api("insert into public.dores (dor_base) values ('api')", role="service_role") == 1


def test_repeatable_file_pasted_in_a_fresh_session_as_postgres(supabase: Project, embedder: Any) -> None:
    load_sample(supabase, embedder, dores=3)
    for path in sorted((ROOT / "pipeline" / "sql" / "repeatable").glob("*.sql")):
        with psycopg.connect(supabase.postgres_url) as conn:  # one transaction, as the SQL editor sends it
            conn.execute(path.read_bytes())
    hybrid = (ROOT / "pipeline" / "sql" / "0003_hybrid_search.sql").read_text()
    with psycopg.connect(supabase.postgres_url) as conn:
        conn.execute(b"select '[1]'::extensions.vector")  # docs/supabase.md: load pgvector first
        conn.execute(hybrid.encode())
    assert invoke("migrate", db_url=supabase.postgres_url).returncode == 0
    assert lints(supabase.postgres_url) == []


def test_migrate_without_vector_changes_nothing_and_says_how_to_enable_it(supabase_without_vector: Project) -> None:
    result = invoke("migrate", db_url=supabase_without_vector.postgres_url)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pipeline: error: the vector extension is not enabled"), lines
    assert "Database → Extensions" in lines[0] and "create extension vector with schema extensions" in lines[0]
    with psycopg.connect(supabase_without_vector.postgres_url) as conn:
        assert conn.execute("select to_regnamespace('pipeline')").fetchone()[0] is None
        assert conn.execute("select to_regclass('public.dores')").fetchone()[0] is None


def _limited_worker(project: Project) -> str:
    """A worker role that row-level security applies to: no BYPASSRLS, not the owner, no policy."""
    with psycopg.connect(project.postgres_url, autocommit=True) as conn:
        conn.execute("create role rls_worker login password 'rls-worker' in role pipeline_reader")
    return project.url("rls_worker", "rls-worker")


def test_a_worker_hidden_by_row_level_security_refuses_and_keeps_the_queue(supabase: Project, embedder: Any) -> None:
    with connect(supabase.postgres_url) as conn:
        migrate(conn)
        record_model(conn, embedder)
        conn.execute("insert into dores (dor_base) select 'dor ' || g from generate_series(1, 20) g")
        conn.execute("create role pipeline_reader")
        conn.execute("grant usage on schema pipeline, extensions to pipeline_reader")
        conn.execute("grant select, update on public.dores, public.documents to pipeline_reader")
        conn.execute("grant select, insert, update, delete on all tables in schema pipeline to pipeline_reader")
        conn.execute("grant execute on function pipeline.existing_keys(text, text[]) to pipeline_reader")
    url = _limited_worker(supabase)
    queued = "select count(*) from pipeline.queue"
    result = invoke("sync", db_url=url)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "row-level security on public.dores" in lines[0] and "BYPASSRLS" in lines[0], lines
    # The batch itself tells hidden rows from deleted ones, for a policy added while a worker runs.
    with connect(url) as conn:
        worker = Worker(embedder=embedder, settings=Settings(claim_size=64))
        with pytest.raises(RowSecurityError, match="20 queued dores rows exist but are hidden"):
            worker.run_batch(conn, "dores")
    with psycopg.connect(supabase.postgres_url) as conn:
        assert conn.execute(queued).fetchone()[0] == 20
        # A deleted row's queue row still goes.
        conn.execute("delete from dores where id <= 5")
        conn.commit()
    with connect(supabase.postgres_url) as conn:
        report = Worker(embedder=embedder, settings=Settings(claim_size=64)).run_batch(conn, "dores")
        assert report.deleted == 5 and report.embedded == 15


def test_the_daemon_and_the_http_api_as_postgres(supabase: Project, embedder: Any) -> None:
    load_sample(supabase, embedder, dores=10)
    with daemon_thread(supabase.postgres_url):
        supabase.api("insert into public.dores (dor_base) values ('inserida pela API')", role="service_role")
        with psycopg.connect(supabase.postgres_url, autocommit=True) as conn:
            embedded = "select segmento from dores where dor_base = 'inserida pela API' and embedding is not null"
            (segmento,) = wait_until(lambda: conn.execute(embedded).fetchone(), 60, "the API's row embedded")
            assert segmento is not None
    from pipeline.api import create_app

    app = create_app(settings=Settings(api_token="t"), url=supabase.postgres_url, embedder=embedder)
    with TestClient(app) as client:
        found = client.post(
            "/ml/search", json={"query": "clientes faltam", "k": 3}, headers={"Authorization": "Bearer t"}
        )
        assert found.status_code == 200, found.text
        assert len(found.json()) == 3 and "Clientes faltam" in found.json()[0]["dor_base"]


def test_transaction_pooler_is_refused_with_a_clear_line() -> None:
    url = "postgresql://postgres.project:secret@aws-0-sa-east-1.pooler.supabase.com:6543/postgres"
    for command in ("run", "migrate"):
        result = invoke(command, db_url=url)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "transaction pooler on port 6543" in lines[0] and "5432" in lines[0], lines
        assert "secret" not in result.stderr


def test_released_migrations_are_all_applied_in_order(supabase: Project) -> None:
    with connect(supabase.postgres_url) as conn:
        assert migrate(conn) == [m.name for m in load()]
        assert migrate(conn) == []


def sql_blocks(doc: str, after: str | None = None) -> list[str]:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    if after:
        text = text.split(after, 1)[1]
    return [block.split("```", 1)[0] for block in text.split("```sql")[1:]]


def test_the_documented_worker_role_works_on_supabase(supabase: Project, embedder: Any) -> None:
    load_sample(supabase, embedder, dores=6)
    with psycopg.connect(supabase.postgres_url, autocommit=True) as conn:
        for block in sql_blocks("security.md", after="## A role for the daemon"):
            conn.execute(block.encode())
        conn.execute("insert into dores (dor_base) values ('nova dor'), ('outra dor')")
    worker_url = supabase.url("pipeline_worker", "change-me")
    for args in (["sync", "--json"], ["segment", "--clusters", "2"], ["search", "nova dor", "-k", "1"], ["status"]):
        result = invoke(*args, db_url=worker_url)
        assert result.returncode == 0, (args, result.stderr)
        if args[0] == "sync":
            assert '"embedded": 2' in result.stdout
        if args[0] == "search":
            assert "nova dor" in result.stdout
    with psycopg.connect(worker_url) as limited, pytest.raises(psycopg.errors.InsufficientPrivilege):
        limited.execute("update dores set dor_base = 'alterado'")


def test_the_supabase_walkthrough(supabase: Project, embedder: Any) -> None:
    with connect(supabase.postgres_url) as conn:
        migrate(conn)
        for block in sql_blocks("supabase.md"):
            conn.execute(block.encode())
        for org in ("acme", "globex"):
            conn.execute(
                "insert into dores (dor_base, metadata) values (%s, jsonb_build_object('org_id', %s::text))",
                (f"Pacientes da {org} faltam às consultas", org),
            )
            conn.execute(
                "insert into documents (title, content, metadata)"
                " values (%s, 'Lembretes automáticos por WhatsApp reduzem faltas.', jsonb_build_object('org_id', %s::text))",
                (f"Proposta {org}", org),
            )
    # A signed-in user of acme adds a dor through the API; the triggers queue it.
    acme = {"role": "authenticated", "claims": {"org_id": "acme", "sub": "user-1"}}
    added = "insert into public.dores (dor_base, metadata) values ('Agenda lotada', '{\"org_id\": \"acme\"}')"
    assert supabase.api(added, **acme) == 1
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # not into another organisation
        supabase.api(added.replace("acme", "globex"), **acme)
    with connect(supabase.postgres_url) as conn:
        record_model(conn, embedder)
        report = Worker(embedder=embedder, settings=Settings()).drain(conn)
        assert report.embedded == 5
    query = embedder.embed(["faltas nas consultas"])[0].tolist()
    chunks = supabase.api.rpc("match_documents", {"query_embedding": str(query), "match_count": 5}, **acme)
    assert [c["metadata"]["org_id"] for c in chunks] == ["acme"]
    dores = supabase.api.rpc("match_dores", {"query_embedding": str(query), "match_count": 5}, **acme)
    assert sorted(d["dor_base"] for d in dores) == ["Agenda lotada", "Pacientes da acme faltam às consultas"]
    assert supabase.api.rpc("match_documents", {"query_embedding": str(query), "match_count": 5}, role="anon") == []
    assert lints(supabase.postgres_url) == []


def test_an_adopted_table_keeps_its_settings_and_status_warns(supabase: Project) -> None:
    with psycopg.connect(supabase.postgres_url, autocommit=True) as conn:  # n8n's table, before the pipeline
        conn.execute(
            "create table public.dores (id bigserial primary key, dor_base text not null, solucao_graventum text)"
        )
        conn.execute("insert into public.dores (dor_base) values ('linha que já existia')")
    assert invoke("migrate", db_url=supabase.postgres_url).returncode == 0
    assert len(supabase.api("select id from public.dores", role="anon")) == 1  # as its owner left it
    assert supabase.api("select * from public.documents", role="anon") == []  # created by the pipeline: closed
    status = invoke("status", "--json", db_url=supabase.postgres_url)
    assert status.returncode == 0, status.stderr
    warnings = json.loads(status.stdout)["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("public.dores: the API roles can anon delete"), warnings
    assert "(rls_disabled_in_public)" in warnings[0]
    assert lints(supabase.postgres_url) == [("rls_disabled_in_public", "dores")]


def test_a_source_added_on_supabase_is_closed_like_the_rest(supabase: Project, embedder: Any) -> None:
    with connect(supabase.postgres_url) as conn:
        migrate(conn)
        conn.execute("create table public.emails (id uuid primary key default gen_random_uuid(), corpo text)")
        conn.execute("insert into public.emails (corpo) values ('A impressora não liga desde ontem.')")
        from pipeline.source_admin import add_source

        add_source(conn, name="emails", table="public.emails", text="corpo", chunked=True)
        record_model(conn, embedder)
        assert Worker(embedder=embedder, settings=Settings()).drain(conn).embedded == 1
    vector = str(embedder.embed(["impressora"])[0].tolist())
    for role in API_ROLES:
        assert supabase.api("select * from public.emails_chunks", role=role) == []
        assert supabase.api.rpc("match_emails", {"query_embedding": vector, "match_count": 3}, role=role) == []
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            supabase.api("truncate public.emails_chunks", role=role)
    found = supabase.api.rpc("match_emails", {"query_embedding": vector, "match_count": 3}, role="service_role")
    assert len(found) == 1 and "impressora" in found[0]["content"]
    # The table existed before the source: its settings are its owner's, and the advisor says so.
    assert lints(supabase.postgres_url) == [("rls_disabled_in_public", "emails")]
    with connect(supabase.postgres_url) as conn:
        assert [f.object for f in advisor(conn)] == ["public.emails"]


def test_classifiers_are_closed_to_the_api_roles_and_open_to_the_service_role(supabase: Project, embedder: Any) -> None:
    from pipeline import classifiers

    load_sample(supabase, embedder)
    with connect(supabase.postgres_url) as conn:
        trained = classifiers.train(
            conn, "urgente", source="dores", label="case when id <= 15 then 'sim' else 'não' end"
        )
        assert trained.scored == 30
    vector = str(embedder.embed(["clientes faltam"])[0].tolist())
    for role in API_ROLES:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            supabase.api.rpc("predict", {"classifier": "urgente", "query_embedding": vector}, role=role)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            supabase.api("select * from pipeline.predictions", role=role)
    rows = supabase.api.rpc("predict", {"classifier": "urgente", "query_embedding": vector}, role="service_role")
    assert sorted(r["label"] for r in rows) == ["não", "sim"] and abs(sum(r["probability"] for r in rows) - 1) < 1e-9
    assert lints(supabase.postgres_url) == []
