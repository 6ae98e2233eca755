"""A PostgreSQL laid out like a hosted Supabase project (../shared/supabase), and PostgREST's way in.

One cluster per test session; each test gets a fresh database cloned from a laid-out template, with
pgvector enabled in schema `extensions` (`supabase`) or not enabled at all (`supabase_without_vector`).
The pipeline connects as the non-superuser `postgres`, as a Supabase user does.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.supabase.layout import lay_out, scripts_dir, url_for

BARE = "sb_bare"
TEMPLATE = "sb_template"


@dataclasses.dataclass(frozen=True)
class Cluster:
    base_url: str

    def url(self, user: str, dbname: str = "postgres") -> str:
        return url_for(self.base_url, user=user, dbname=dbname)


class PostgREST:
    """What PostgREST does per request: a transaction as `authenticator` that switches to the request's
    role and JWT claims (`SET LOCAL role`, `request.jwt.claims`) before running its one statement."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(
        self, sql: str, params: Any = None, *, role: str = "anon", claims: dict[str, Any] | None = None
    ) -> Any:
        """Rows of a query, or the number of rows a write touched."""
        claims = {"role": role, **(claims or {})}
        with psycopg.connect(self.url, row_factory=dict_row) as conn:
            conn.execute(
                "select set_config('search_path', 'public, extensions', true),"
                " set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                (role, json.dumps(claims)),
            )
            cursor = conn.execute(sql.encode(), params)
            result = cursor.fetchall() if cursor.description else cursor.rowcount
            conn.commit()
        return result

    def rpc(self, function: str, args: dict[str, Any], **kwargs: Any) -> Any:
        """`POST /rest/v1/rpc/FUNCTION` with named arguments."""
        named = ", ".join(f"{name} => %({name})s" for name in args)
        return self(f"select * from public.{function}({named})", args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Project:
    """One Supabase project's database: `postgres_url` is what its owner connects with."""

    cluster: Cluster
    dbname: str

    @property
    def postgres_url(self) -> str:
        return self.cluster.url("postgres", self.dbname)

    @property
    def admin_url(self) -> str:
        return self.cluster.url("supabase_admin", self.dbname)

    def url(self, user: str, password: str | None = None) -> str:
        url = self.cluster.url(user, self.dbname)
        return url if password is None else psycopg.conninfo.make_conninfo(url, password=password)

    @property
    def api(self) -> PostgREST:
        return PostgREST(self.cluster.url("authenticator", self.dbname))


@pytest.fixture(scope="session")
def supabase_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not (scripts_dir() / "init-scripts").is_dir():
        pytest.skip(f"Supabase's setup scripts are not at {scripts_dir()} (PIPELINE_SUPABASE_SCRIPTS)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    pgdata = tmp_path_factory.mktemp("supabase") / "data"
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    lay_out(server.get_uri(), pgdata, Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql")
    cluster = Cluster(server.get_uri())
    with psycopg.connect(cluster.url("supabase_admin"), autocommit=True) as admin:
        admin.execute(f"create database {BARE} template postgres owner postgres")
        admin.execute(f"create database {TEMPLATE} template postgres owner postgres")
    with psycopg.connect(cluster.url("supabase_admin", TEMPLATE), autocommit=True) as admin:
        # Dashboard → Database → Extensions → vector
        admin.execute("create extension vector with schema extensions")
    yield cluster
    server.cleanup()


def _clone(cluster: Cluster, template: str) -> Iterator[Project]:
    name = f"sb_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.url("supabase_admin", "template1"), autocommit=True) as admin:
        admin.execute(f"create database {name} template {template} owner postgres")
    yield Project(cluster, name)
    with psycopg.connect(cluster.url("supabase_admin", "template1"), autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def supabase(supabase_cluster: Cluster) -> Iterator[Project]:
    """A fresh Supabase project with vector enabled, not yet migrated."""
    yield from _clone(supabase_cluster, TEMPLATE)


@pytest.fixture
def supabase_without_vector(supabase_cluster: Cluster) -> Iterator[Project]:
    yield from _clone(supabase_cluster, BARE)
