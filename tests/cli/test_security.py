"""The daemon's least-privilege role (docs/security.md) is enough to sync and segment, and no more."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pipeline.db import connect
from pipeline.model import record_model
from tests.conftest import ROOT, invoke


def role_block() -> str:
    """The SQL block of docs/security.md that creates the worker's role, verbatim."""
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    return text.split("## A role for the daemon", 1)[1].split("```sql", 1)[1].split("```", 1)[0]


def test_least_privilege_role_syncs_and_segments(db_url: str, embedder: Any) -> None:
    with connect(db_url) as conn:
        conn.execute("drop role if exists pipeline_worker")
    try:
        with connect(db_url) as conn:
            conn.execute(role_block().encode())
            conn.execute("insert into dores (dor_base) select 'dor número ' || g from generate_series(1, 30) g")
            conn.execute("insert into documents (title, content) values ('Doc', 'Um documento.')")
            record_model(conn, embedder)  # the owner records the model; the worker may not
        worker_url = make_conninfo(db_url, user="pipeline_worker")
        synced = invoke("sync", "--json", db_url=worker_url)
        assert synced.returncode == 0, synced.stderr
        assert '"embedded": 31' in synced.stdout
        segmented = invoke("segment", "--clusters", "3", db_url=worker_url)
        assert segmented.returncode == 0, segmented.stderr
        status = invoke("status", db_url=worker_url)
        assert status.returncode == 0, status.stderr
        with (
            psycopg.connect(worker_url, autocommit=True) as limited,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            limited.execute("update dores set dor_base = 'alterado' where id = 1")
        # A writer without any right on schema pipeline still queues rows through the triggers.
        with connect(db_url) as conn:
            conn.execute("drop role if exists n8n_writer")
            conn.execute("create role n8n_writer login")
            conn.execute("grant usage on schema public to n8n_writer")
            conn.execute("grant insert, select on public.dores to n8n_writer")
            # Row-level security is on for the tables the pipeline created: docs/security.md's writer policy.
            conn.execute("create policy \"n8n inserts dores\" on public.dores for insert to n8n_writer with check (true)")
        with psycopg.connect(make_conninfo(db_url, user="n8n_writer"), autocommit=True) as writer:
            writer.execute("insert into dores (dor_base) values ('vinda do n8n')")
        with connect(db_url) as conn:
            assert conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"] == 1
    finally:
        with connect(db_url) as conn:
            for role in ("pipeline_worker", "n8n_writer"):
                if conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone():
                    conn.execute(f"drop owned by {role} cascade")
                    conn.execute(f"drop role {role}")
