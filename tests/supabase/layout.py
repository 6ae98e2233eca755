"""Lay a fresh pgserver cluster out like a hosted Supabase project, with Supabase's own setup scripts.

The steps follow ../shared/supabase/README.md (the order of Supabase's `migrate.sh`): `postgres` becomes a
non-superuser that owns the database, `anon` / `authenticated` / `service_role` get Supabase's default
grants, PostgREST's `authenticator` can switch to them, and pgvector lives in schema `extensions`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

SCRIPTS = Path(__file__).resolve().parents[2].parent / "shared" / "supabase"
PASSWORD = "postgres-test-password"
AUTHENTICATOR_PASSWORD = "authenticator-test-password"


def scripts_dir() -> Path:
    override = os.environ.get("PIPELINE_SUPABASE_SCRIPTS")
    return Path(override) if override else SCRIPTS


def _up_part(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return text.split("-- migrate:down", 1)[0]


def _psql(psql: Path, url: str, sql: str) -> None:
    """Run a script statement by statement, going on after errors (extensions this server lacks)."""
    subprocess.run(
        [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=0", "-d", url, "-f", "-"],
        input=sql,
        text=True,
        capture_output=True,
        check=False,
        env={**os.environ, "PGOPTIONS": "-c client_min_messages=error"},
    )


def lay_out(superuser_url: str, pgdata: Path, psql: Path) -> None:
    """Turn the cluster behind `superuser_url` (initial superuser `postgres`) into Supabase's layout."""
    scripts = scripts_dir()
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        conn.execute("create role layout_admin superuser login")
    with psycopg.connect(make_conninfo(superuser_url, user="layout_admin"), autocommit=True) as conn:
        conn.execute("alter role postgres rename to supabase_admin")
    admin_url = make_conninfo(superuser_url, user="supabase_admin")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("drop role layout_admin")
        conn.execute(f"create role postgres superuser login password '{PASSWORD}'")
        conn.execute("alter database postgres owner to postgres")
    postgres_url = make_conninfo(superuser_url, user="postgres")
    for path in sorted((scripts / "init-scripts").glob("*.sql")):
        _psql(psql, postgres_url, _up_part(path))
    for path in sorted((scripts / "migrations").glob("*.sql")):
        _psql(psql, admin_url, _up_part(path))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"alter role authenticator with login password '{AUTHENTICATOR_PASSWORD}'")
        conn.execute("alter role authenticator reset session_preload_libraries")
        conn.execute(
            "create or replace function auth.jwt() returns jsonb language sql stable as $$"
            " select coalesce(nullif(current_setting('request.jwt.claim', true), ''),"
            " nullif(current_setting('request.jwt.claims', true), ''))::jsonb $$"
        )
        conn.execute("grant execute on function auth.jwt() to postgres, anon, authenticated, service_role")
        superuser = conn.execute("select rolsuper from pg_roles where rolname = 'postgres'").fetchone()
        assert superuser is not None and superuser[0] is False, "postgres is still a superuser"
    hba = pgdata / "pg_hba.conf"
    hba.write_text("local all supabase_admin trust\nlocal all all scram-sha-256\n", encoding="utf-8")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("select pg_reload_conf()")


def url_for(base_url: str, *, user: str, dbname: str) -> str:
    password = {"postgres": PASSWORD, "authenticator": AUTHENTICATOR_PASSWORD}.get(user)
    params = conninfo_to_dict(base_url)
    params.update(user=user, dbname=dbname)
    if password:
        params["password"] = password
    else:
        params.pop("password", None)
    return make_conninfo(**params)
