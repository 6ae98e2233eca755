"""Migrations against a real PostgreSQL: applied once, idempotent, checksummed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from pipeline.db import connect
from pipeline.errors import MigrationError
from pipeline.migrations import load, migrate, pending, sql_dir

SCHEMA = """
select 'column' as kind, table_schema || '.' || table_name || '.' || column_name || ' ' || data_type as what
from information_schema.columns where table_schema in ('public', 'pipeline')
union all
select 'index', schemaname || '.' || indexname || ' ' || indexdef from pg_indexes where schemaname in ('public', 'pipeline')
union all
select 'trigger', event_object_table || '.' || trigger_name || ' ' || event_manipulation
from information_schema.triggers where event_object_schema = 'public'
union all
select 'function', n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname in ('public', 'pipeline')
order by 1, 2
"""


def snapshot(conn: Any) -> list[tuple[str, str]]:
    return [(r["kind"], r["what"]) for r in conn.execute(SCHEMA)]


def test_migrate_twice_changes_nothing(empty_db_url: str) -> None:
    with connect(empty_db_url) as conn:
        names = [m.name for m in load()]
        assert names[:2] == ["0001_init.sql", "0002_segments.sql"]
        assert pending(conn) == names
        assert migrate(conn) == names
        first = snapshot(conn)
        assert migrate(conn) == []
        assert snapshot(conn) == first
        assert pending(conn) == []
    assert len(first) > 40


def test_expected_schema_objects_exist(conn: Any) -> None:
    objects = snapshot(conn)
    functions = {what.split("(")[0] for kind, what in objects if kind == "function"}
    assert {"public.match_dores", "public.match_documents", "pipeline.content_hash", "pipeline.dor_text"} <= functions
    indexes = " ".join(what for kind, what in objects if kind == "index")
    assert "dores_embedding_idx" in indexes and "hnsw" in indexes and "vector_cosine_ops" in indexes
    for table in ("pipeline.queue", "pipeline.failed", "pipeline.state", "pipeline.migrations", "pipeline.lag"):
        assert conn.execute("select to_regclass(%s) is not null as ok", (table,)).fetchone()["ok"], table


def test_changed_migration_is_refused(empty_db_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "sql"
    shutil.copytree(sql_dir(), directory)
    with connect(empty_db_url) as conn:
        migrate(conn, directory)
        (directory / "0001_init.sql").write_text((directory / "0001_init.sql").read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            migrate(conn, directory)


def test_new_migration_is_applied_after_the_old_ones(empty_db_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "sql"
    shutil.copytree(sql_dir(), directory)
    with connect(empty_db_url) as conn:
        migrate(conn, directory)
        (directory / "9999_extra.sql").write_text("create table pipeline.extra (x int);")
        assert migrate(conn, directory) == ["9999_extra.sql"]
        assert conn.execute("select to_regclass('pipeline.extra') is not null as ok").fetchone()["ok"]


def test_existing_dores_table_is_adopted_and_queued(empty_db_url: str) -> None:
    with connect(empty_db_url) as conn:
        conn.execute(
            "create table public.dores (id bigserial primary key, dor_base text not null, solucao_graventum text)"
        )
        conn.execute("insert into public.dores (dor_base) values ('linha que já existia')")
        migrate(conn)
        columns = {
            r["column_name"]
            for r in conn.execute("select column_name from information_schema.columns where table_name = 'dores'")
        }
        assert {"embedding", "segmento", "content_hash", "metadata"} <= columns
        assert conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"] == 1


def test_a_changed_repeatable_file_asks_for_migrate(conn: Any) -> None:
    from pipeline.migrations import require_current

    assert pending(conn) == []
    # As after a code update that changed a definition: the database holds the previous file's checksum.
    conn.execute("update pipeline.state set value = 'previous' where key = 'repeatable:functions.sql'")
    assert pending(conn) == ["repeatable/functions.sql"]
    with pytest.raises(MigrationError, match=r"\(repeatable/functions\.sql\): run `pipeline migrate`"):
        require_current(conn)
    assert migrate(conn) == [] and pending(conn) == []
