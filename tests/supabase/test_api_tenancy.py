"""The HTTP API on Supabase's role layout: a signed-in user's JWT searches as PostgREST would (its role and
claims for the request's transaction, so the owner's row-level security policies decide), the service token
as the owner, anything else not at all."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient

from pipeline.api import Caller, acting_as, create_app
from pipeline.config import Settings
from pipeline.db import connect
from pipeline.errors import ConfigError
from pipeline.migrations import migrate
from pipeline.model import record_model
from pipeline.segments import fit_database
from pipeline.worker import Worker
from tests.supabase.conftest import Project

SECRET = "the-projects-jwt-secret-of-at-least-32-characters"
SERVICE = {"Authorization": "Bearer the-service-token"}
ORGS = {
    "a": ["Pacientes faltam às consultas da clínica", "Agenda da clínica vive lotada", "Recepção perde ligações"],
    "b": ["Pacientes faltam às consultas do consultório", "Estoque da loja não bate", "Clientes pagam atrasado"],
}
# docs/supabase.md, "Open it per organisation"
POLICY = """create policy "org reads its dores" on public.dores
    for select to authenticated
    using (metadata ->> 'org_id' = (select auth.jwt() ->> 'org_id'))"""


def token(org: str | None, *, role: str = "authenticated", secret: str = SECRET, expires_in: int = 3600) -> str:
    """A Supabase access token: what `supabase.auth.getSession()` hands a signed-in user."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": f"user-{org}", "aud": "authenticated", "role": role, "iat": now}
    claims["exp"] = now + expires_in
    if org is not None:
        claims["org_id"] = org  # a custom access token hook's claim
    return jwt.encode(claims, secret, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def tenants(supabase: Project, embedder: Any) -> dict[str, set[int]]:
    """Two organisations' dores, embedded, behind the documented policy; the ids of each."""
    ids: dict[str, set[int]] = {}
    with connect(supabase.postgres_url) as conn:
        migrate(conn)
        conn.execute(POLICY)
        for org, texts in ORGS.items():
            ids[org] = {
                conn.execute(
                    "insert into dores (dor_base, metadata) values (%s, jsonb_build_object('org_id', %s::text))"
                    " returning id",
                    (text, org),
                ).fetchone()["id"]
                for text in texts
            }
        record_model(conn, embedder)
        assert Worker(embedder=embedder, settings=Settings()).drain(conn).embedded == 6
    return ids


@pytest.fixture
def client(supabase: Project, tenants: dict[str, set[int]], embedder: Any) -> Iterator[TestClient]:
    settings = Settings(api_token="the-service-token", jwt_secret=SECRET)
    with TestClient(create_app(settings=settings, url=supabase.postgres_url, embedder=embedder)) as test:
        yield test


def found(client: TestClient, headers: dict[str, str], **body: Any) -> set[int]:
    response = client.post(
        "/ml/search", json={"query": "pacientes faltam às consultas", "k": 10, **body}, headers=headers
    )
    assert response.status_code == 200, response.text
    return {row["id"] for row in response.json()}


@pytest.mark.parametrize("hybrid", [False, None], ids=["vector-only", "default-hybrid"])
def test_a_users_jwt_searches_only_its_organisations_dores(
    client: TestClient, tenants: dict[str, set[int]], hybrid: bool | None
) -> None:
    body = {} if hybrid is None else {"hybrid": hybrid}
    assert found(client, bearer(token("a")), **body) == tenants["a"]
    assert found(client, bearer(token("b")), **body) == tenants["b"]
    assert found(client, bearer(token("nobody")), **body) == set()
    # The service token is the owner, as before: every organisation. After the users' requests, too: the role
    # they set ended with their transactions, on the same pooled connections.
    assert found(client, SERVICE, **body) == tenants["a"] | tenants["b"]


def test_only_a_valid_users_jwt_or_the_service_token_gets_in(client: TestClient) -> None:
    query = {"query": "pacientes faltam", "hybrid": False}
    refused = {
        "no header": {},
        "wrong token": bearer("nope"),
        "bad signature": bearer(token("a", secret="another-projects-secret-of-32-characters!")),
        "expired": bearer(token("a", expires_in=-60)),
        "service_role": bearer(token("a", role="service_role")),
        "postgres": bearer(token("a", role="postgres")),
        "supabase_admin": bearer(token("a", role="supabase_admin")),
        "no exp": bearer(jwt.encode({"role": "authenticated", "org_id": "a"}, SECRET, algorithm="HS256")),
        "alg none": bearer(jwt.encode({"role": "authenticated", "exp": int(time.time()) + 60}, None, algorithm="none")),
    }
    for case, headers in refused.items():
        response = client.post("/ml/search", json=query, headers=headers)
        assert response.status_code == 401, (case, response.text)
    assert client.post("/ml/search", json=query, headers=bearer(token("a", expires_in=-60))).json() == {
        "error": "JWT expired"
    }
    signed_elsewhere = client.post("/ml/search", json=query, headers=refused["bad signature"]).json()["error"]
    assert "invalid JWT" in signed_elsewhere and "ignature" in signed_elsewhere
    # The anon key's JWT gets in, and sees what anon may: no policy opens dores to it.
    for hybrid in (False, None):
        anon = client.post("/ml/search", json={**query, "hybrid": hybrid}, headers=bearer(token(None, role="anon")))
        assert anon.status_code == 200 and anon.json() == [], anon.text
    # Routes that touch no rows take a user's JWT as they take the service token.
    embedded = client.post("/ml/embed", json={"text": "x"}, headers=bearer(token("a")))
    assert embedded.status_code == 200 and len(embedded.json()["embedding"]) == 384
    assert client.get("/openapi.json", headers=bearer(token("a"))).status_code == 200


def test_what_a_users_role_may_not_read_is_refused_not_leaked(supabase: Project, client: TestClient) -> None:
    with connect(supabase.postgres_url) as conn:
        fit_database(conn, clusters=2)  # segments over both organisations' dores
    text = {"text": "pacientes faltam às consultas"}
    assert client.post("/ml/classify", json=text, headers=SERVICE).status_code == 200
    # Segments and classifiers are closed to anon and authenticated (security.md): a user's JWT is refused there
    # (403, or no segments it may read) rather than shown top terms fitted over every organisation.
    classify = client.post("/ml/classify", json=text, headers=bearer(token("a")))
    assert classify.status_code in (400, 403), classify.text
    if classify.status_code == 403:
        assert classify.json()["error"].startswith("role authenticated may not do this: permission denied")
    lead = client.post("/ml/score-lead", json=text, headers=bearer(token("a")))
    assert lead.status_code == 403 and lead.json()["error"].startswith("role authenticated may not do this:")
    # The refusals ended their transactions: the next requests run as they should.
    assert found(client, bearer(token("a")), hybrid=False) and client.get("/healthz").status_code == 200


def test_the_role_and_claims_last_one_transaction(supabase: Project, tenants: dict[str, set[int]]) -> None:
    user = Caller(role="authenticated", claims={"role": "authenticated", "org_id": "a", "sub": "user-a"})
    with connect(supabase.postgres_url) as conn:
        with acting_as(conn, user):
            row = conn.execute("select current_user as role, auth.jwt() ->> 'org_id' as org").fetchone()
            assert row == {"role": "authenticated", "org": "a"}
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            seen = {r["id"] for r in conn.execute("select id from dores")}
            assert seen == tenants["a"]
        after = conn.execute(
            "select current_user as role, coalesce(current_setting('request.jwt.claims', true), '') as claims"
        ).fetchone()
        assert after == {"role": "postgres", "claims": ""}
        with pytest.raises(psycopg.errors.UndefinedTable), acting_as(conn, user):
            conn.execute("select * from no_such_table")
        assert conn.execute("select current_user as role").fetchone()["role"] == "postgres"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # The owner's work runs as it always did: autocommit, as postgres.
        with acting_as(conn, Caller()):
            assert conn.execute("select current_user as role").fetchone()["role"] == "postgres"
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_database_user_that_cannot_act_as_the_users_roles_is_refused_in_one_line(
    supabase: Project, embedder: Any
) -> None:
    with psycopg.connect(supabase.postgres_url) as conn:
        member = conn.execute(
            "select pg_has_role('postgres', 'authenticated', 'member') and pg_has_role('postgres', 'anon', 'member')"
        ).fetchone()
        assert member == (True,)  # as on Supabase: postgres may act as anon and authenticated
    create_app(settings=Settings(jwt_secret=SECRET), url=supabase.postgres_url, embedder=embedder)
    # A database user outside those roles (a self-hosted owner, say) is told what to grant before serving.
    with psycopg.connect(supabase.admin_url, autocommit=True) as admin:
        admin.execute("create role api_outsider login password 'outsider-password'")
        try:
            url = supabase.url("api_outsider", "outsider-password")
            with pytest.raises(ConfigError) as refused:
                create_app(settings=Settings(jwt_secret=SECRET), url=url, embedder=embedder)
            admin.execute("grant authenticated to api_outsider")
            with pytest.raises(ConfigError) as still:
                create_app(settings=Settings(jwt_secret=SECRET), url=url, embedder=embedder)
            admin.execute("grant anon to api_outsider")
            create_app(settings=Settings(jwt_secret=SECRET), url=url, embedder=embedder)
            create_app(settings=Settings(), url=url, embedder=embedder)  # without a JWT secret: not asked
        finally:
            admin.execute("drop role api_outsider")
    assert str(refused.value) == (
        "PIPELINE_JWT_SECRET is set, but the database user api_outsider cannot act as anon or authenticated:"
        " grant anon, authenticated to api_outsider (Supabase grants anon and authenticated to postgres)"
    )
    assert "cannot act as anon:" in str(still.value)
