"""Migrations against a real PostgreSQL: applied once, idempotent, checksummed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
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
    conn.execute(
        "update pipeline.state set value = 'previous'"
        " where key in ('repeatable:queue.sql', 'repeatable:templates/search.sql')"
    )
    assert pending(conn) == ["repeatable/queue.sql", "templates/search.sql"]
    with pytest.raises(MigrationError, match=r"\(repeatable/queue\.sql, templates/search\.sql\): run `pipeline migrate`"):
        require_current(conn)
    # A file of an older version that this one no longer has is forgotten.
    conn.execute("insert into pipeline.state (key, value) values ('repeatable:functions.sql', 'old')")
    assert migrate(conn) == [] and pending(conn) == []
    assert not conn.execute("select 1 from pipeline.state where key = 'repeatable:functions.sql'").fetchone()


def test_a_database_with_vectors_waiting_at_0011_keeps_every_one_in_embedding(
    empty_db_url: str, tmp_path: Path, embedder: Any
) -> None:
    older = tmp_path / "sql"
    older.mkdir()
    for path in sorted(sql_dir().glob("*.sql")):
        if path.name < "0012":
            shutil.copy(path, older / path.name)
    texts = ["Pacientes faltam às consultas", "Estoque não bate", "Fechamento atrasa", "Boleto com vencimento errado"]
    vectors = embedder.embed(texts)
    with connect(empty_db_url) as conn:
        migrate(conn, older)
        assert conn.execute("select to_regclass('public.dores_embedding_unindexed_idx') is not null as ok").fetchone()["ok"]
        # The numbered files alone (this test has no copy of 0011's repeatable files): the rows go in without
        # the queue triggers, as if the worker had written them.
        conn.execute("set session_replication_role = replica")
        for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
            column = "embedding" if i < 2 else "embedding_unindexed"  # the last two wait for the index
            conn.execute(
                f"insert into dores (dor_base, {column}, embedding_model, content_hash, embedded_at)"
                " values (%s, %s, %s, pipeline.content_hash(pipeline.dor_text(%s, null)), now())",
                (text, vector, embedder.name, text),
            )
        conn.execute("reset session_replication_role")
        conn.execute("insert into pipeline.state (key, value) values ('model', %s), ('dimension', '384')", (embedder.name,))

        assert migrate(conn) == ["0012_one_vector_column.sql"]
        rows = conn.execute("select dor_base, embedding, embedding_indexed from dores order by id").fetchall()
        for row, vector, waited in zip(rows, vectors, [False, False, True, True], strict=True):
            assert row["embedding"] is not None and np.allclose(row["embedding"].to_numpy(), vector, atol=1e-6)
            assert row["embedding_indexed"] is not waited
        column = conn.execute(
            "select 1 from information_schema.columns where table_name = 'dores' and column_name = 'embedding_unindexed'"
        ).fetchone()
        assert column is None
        definition = conn.execute("select pg_get_indexdef('public.dores_embedding_idx'::regclass) as d").fetchone()["d"]
        assert definition.endswith("WHERE embedding_indexed") and "m='16'" in definition
        # Every row is found, by plain SQL and by the search function; nothing was queued again.
        found = conn.execute("select * from match_dores(%s, 10)", (vectors[3],)).fetchall()
        assert len(found) == 4 and found[0]["dor_base"] == texts[3]
        plain = conn.execute("select dor_base from dores order by embedding <=> %s limit 1", (vectors[2],)).fetchone()
        assert plain["dor_base"] == texts[2]
        assert conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"] == 0
        assert pending(conn) == []
