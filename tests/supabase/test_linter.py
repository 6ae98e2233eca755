"""Supabase's own database linter (splinter, the dashboard's Security and Performance Advisors) run as
vendored, every lint file, on a Supabase project after everything the pipeline can create there."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pipeline import classifiers
from pipeline.config import Settings
from pipeline.db import connect
from pipeline.migrations import migrate
from pipeline.model import record_model
from pipeline.segments import fit_database
from pipeline.source_admin import add_source
from pipeline.worker import Worker
from tests.supabase.conftest import Project
from tests.supabase.test_supabase import sql_blocks

# PIPELINE_SPLINTER: another checkout of supabase/splinter to lint with (its `lints/` folder is read).
SPLINTER = Path(os.environ.get("PIPELINE_SPLINTER") or Path(__file__).parent / "splinter") / "lints"
# What PostgREST serves on a hosted project unless its owner exposes more (Settings → API → Exposed
# schemas); the lints about the API read it from this setting, as the dashboard sets it.
EXPOSED_SCHEMAS = "public, graphql_public"
# Errors that mean a lint reads a Supabase object this fixture lacks; any other error fails the test.
MISSING_OBJECT = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.UndefinedObject,
    psycopg.errors.InvalidSchemaName,
)
OURS = ("public", "pipeline")
CANARIES = ("linter_canary", "linter_canary_rls")

HOT = ["Orçamento aprovado, queremos fechar o contrato hoje", "Precisamos contratar esta semana, é urgente"]
COLD = ["Só pesquisando, talvez no ano que vem", "Sem orçamento e sem interesse por enquanto"]


def build(project: Project, embedder: Any) -> None:
    """Everything the pipeline creates on a project: migrate, docs/supabase.md's policies, a row source
    and a chunked source on tables the user made first, embedded rows, segments and a classifier."""
    with connect(project.postgres_url) as conn:
        migrate(conn)
        for block in sql_blocks("supabase.md"):
            conn.execute(block.encode())
        # The user's own tables, made the way the dashboard's table editor makes them (RLS on): what the
        # linter says about them is the user's business; what the pipeline adds to them is ours.
        conn.execute(
            "create table public.leads (id uuid primary key default gen_random_uuid(), empresa text not null,"
            " mensagem text, status text)"
        )
        conn.execute(
            "create table public.emails (id bigint generated always as identity primary key, assunto text,"
            " corpo text, caixa text)"
        )
        conn.execute("alter table public.leads enable row level security")
        conn.execute("alter table public.emails enable row level security")
        with conn.cursor() as cursor:
            cursor.executemany(
                "insert into public.leads (empresa, mensagem, status) values (%s, %s, %s)",
                [(f"Empresa {i}", text, "quente") for i, text in enumerate(HOT * 4)]
                + [(f"Empresa {i}", text, "frio") for i, text in enumerate(COLD * 4)],
            )
            cursor.executemany(
                "insert into public.emails (assunto, corpo, caixa) values (%s, %s, 'suporte')",
                [(f"Chamado {i}", "A impressora não liga desde ontem. " * 20) for i in range(3)],
            )
        conn.execute(
            "insert into dores (dor_base, solucao_graventum, metadata) select 'Clientes faltam às consultas ' || g,"
            " 'lembrete automático', '{\"org_id\": \"acme\"}' from generate_series(1, 12) g"
        )
        conn.execute(
            "insert into documents (title, content, metadata)"
            " values ('Proposta', 'Confirmação automática de consultas na clínica.', '{\"org_id\": \"acme\"}')"
        )
        add_source(conn, name="leads", table="public.leads", text="empresa, mensagem")
        add_source(conn, name="emails", table="public.emails", text="assunto, corpo", chunked=True, metadata=["caixa"])
        record_model(conn, embedder)
        Worker(embedder=embedder, settings=Settings(claim_size=64)).drain(conn)
        fit_database(conn, clusters=3)
        fit_database(conn, source="leads", clusters=2)
        classifiers.train(conn, "lead", source="leads", label="status", positive="quente")


def lint_files() -> list[Path]:
    files = sorted(SPLINTER.glob("*.sql"))
    if not files:
        pytest.skip(f"splinter's lints are not at {SPLINTER} (PIPELINE_SPLINTER)")
    return files


def run_linter(url: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every lint's rows, and the lints that could not run here with the reason. Each lint file creates
    its view in schema `lint` inside a savepoint; nothing is kept."""
    findings: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    with psycopg.connect(url, row_factory=dict_row) as conn:
        conn.execute(
            "select set_config('search_path', '', true), set_config('pgrst.db_schemas', %s, true)", (EXPOSED_SCHEMAS,)
        )
        conn.execute("create schema lint")
        for path in lint_files():
            try:
                with conn.transaction():
                    conn.execute(path.read_bytes())
                    findings += conn.execute(f'select * from lint."{path.stem}"'.encode()).fetchall()
            except MISSING_OBJECT as exc:
                skipped[path.stem] = str(exc).splitlines()[0]
        conn.rollback()
    return findings, skipped


def schema(finding: dict[str, Any]) -> str | None:
    return (finding["metadata"] or {}).get("schema")


def name(finding: dict[str, Any]) -> str | None:
    return (finding["metadata"] or {}).get("name")


def show(findings: list[dict[str, Any]]) -> str:
    return "\n".join(f"{f['level']} {f['name']} {schema(f)}.{name(f)}: {f['detail']}" for f in findings)


def test_supabases_linter_finds_nothing_on_the_pipelines_objects(supabase: Project, embedder: Any) -> None:
    build(supabase, embedder)
    with psycopg.connect(supabase.postgres_url, autocommit=True) as conn:
        # Tables the linter must flag, so that a lint that sees nothing here cannot pass unnoticed.
        for table in CANARIES:
            conn.execute(f"create table public.{table} (id bigint primary key, owner uuid)")
            conn.execute(f"create policy mine on public.{table} using (owner = auth.uid())")
        conn.execute(f"alter table public.{CANARIES[1]} enable row level security")
    findings, skipped = run_linter(supabase.postgres_url)
    # No lint fails here: the Supabase objects they read (auth.users, storage.buckets, pg_extension rows)
    # exist or are looked up first. Three return nothing on this fixture whatever the pipeline does:
    # pg_graphql_anon_table_exposed and pg_graphql_authenticated_table_exposed (pg_graphql is not
    # installed) and insecure_queue_exposed_in_api (pgmq is not installed).
    assert skipped == {}, skipped
    canaries = {(f["name"], name(f)) for f in findings if name(f) in CANARIES}
    assert canaries >= {
        ("rls_disabled_in_public", CANARIES[0]),
        ("policy_exists_rls_disabled", CANARIES[0]),
        ("auth_rls_initplan", CANARIES[1]),
    }, canaries
    ours = [f for f in findings if schema(f) in OURS and name(f) not in CANARIES and f["level"] != "INFO"]
    assert ours == [], "\n" + show(ours)
