"""The HTTP API against the real model and database: routes, auth, limits, a schema fuzz, concurrency."""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from pipeline.config import Settings
from pipeline.csvio import import_dores
from pipeline.segments import fit_database
from tests.conftest import ROOT, invoke, wait_until

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Fixed examples in CI (a failure there is reproducible); FUZZ_EXAMPLES=500 FUZZ_RANDOM=1 to explore.
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ_DERANDOMIZE = not os.environ.get("FUZZ_RANDOM")


def make_app(db_url: str, embedder: Any, **limits: Any) -> Any:
    from pipeline.api import create_app

    settings = Settings(api_token=TOKEN, **limits)
    return create_app(settings=settings, url=db_url, embedder=embedder)


@pytest.fixture
def client(db_url: str, embedder: Any, conn: Any, worker: Any) -> Any:
    import_dores(conn, ROOT / "pipeline" / "data" / "dores_exemplo.csv")
    conn.execute(
        "insert into documents (title, content) values ('Proposta', 'Confirmação automática de consultas na clínica.')"
    )
    worker.drain(conn)
    fit_database(conn, clusters=6)
    with TestClient(make_app(db_url, embedder, api_max_texts=32, api_max_chars=2000, api_max_body=200_000)) as test:
        yield test


def test_embed_one_and_many(client: Any, embedder: Any) -> None:
    one = client.post("/ml/embed", json={"text": "Estoque não bate"}, headers=AUTH)
    assert one.status_code == 200
    body = one.json()
    assert body["model"] == embedder.name and "embeddings" not in body
    expected = embedder.model.encode(["Estoque não bate"], normalize_embeddings=True)[0]
    assert float(np.dot(np.asarray(body["embedding"]), expected)) >= 0.9999
    many = client.post("/ml/embed", json={"texts": ["a", "b"]}, headers=AUTH).json()
    assert len(many["embeddings"]) == 2 and len(many["embeddings"][0]) == 384


def test_segmentar_classify_search(client: Any) -> None:
    rows = [
        {"dor_base": f"dor {i} sobre estoque da loja", "solucao_graventum": "integração", "id": i} for i in range(6)
    ]
    rows += [{"dor_base": f"dor {i} sobre consultas da clínica", "solucao_graventum": "agenda"} for i in range(6)]
    seg = client.post("/ml/segmentar", json={"rows": rows, "clusters": 2}, headers=AUTH)
    assert seg.status_code == 200, seg.text
    out = seg.json()
    assert [r["dor_base"] for r in out["rows"]] == [r["dor_base"] for r in rows] and out["rows"][0]["id"] == 0
    assert (
        len({r["segmento"] for r in out["rows"][:6]}) == 1 and out["rows"][0]["segmento"] != out["rows"][6]["segmento"]
    )
    assert sum(out["counts"].values()) == 12

    cls = client.post("/ml/classify", json={"text": "a clínica perde pacientes que faltam"}, headers=AUTH)
    assert cls.status_code == 200 and {"segmento", "label", "similarity", "top_terms"} <= set(cls.json())

    dores = client.post("/ml/search", json={"query": "pacientes faltam às consultas", "k": 3}, headers=AUTH).json()
    assert len(dores) == 3 and "consulta" in dores[0]["dor_base"].lower()
    assert dores[0]["score"] >= dores[1]["score"] >= dores[2]["score"] and dores[0]["score"] != dores[0]["similarity"]
    vector = client.post(
        "/ml/search", json={"query": "pacientes faltam às consultas", "k": 3, "hybrid": False}, headers=AUTH
    ).json()
    assert [row["score"] for row in vector] == [row["similarity"] for row in vector]
    docs = client.post(
        "/ml/search", json={"query": "consultas", "table": "documents", "hybrid": True}, headers=AUTH
    ).json()
    assert docs[0]["title"] == "Proposta" and "score" in docs[0]
    assert client.get("/healthz").json()["status"] == "ok"


def test_auth_limits_and_errors(client: Any) -> None:
    assert client.post("/ml/embed", json={"text": "x"}).status_code == 401
    wrong = client.post("/ml/embed", json={"text": "x"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "bearer token" in wrong.json()["error"]
    too_many = client.post("/ml/embed", json={"texts": ["x"] * 33}, headers=AUTH)
    assert too_many.status_code == 413 and "limit is 32" in too_many.json()["error"]
    too_long = client.post("/ml/embed", json={"text": "x" * 2001}, headers=AUTH)
    assert too_long.status_code == 413
    huge = client.post(
        "/ml/embed",
        content=b'{"text": "' + b"x" * 300_000 + b'"}',
        headers={**AUTH, "content-type": "application/json"},
    )
    assert huge.status_code == 413 and "body over" in huge.json()["error"]
    both = client.post("/ml/embed", json={"text": "a", "texts": ["b"]}, headers=AUTH)
    assert both.status_code == 422 and "exactly one" in both.json()["error"]
    bad = client.post("/ml/search", json={"query": "x", "k": 0}, headers=AUTH)
    assert bad.status_code == 422 and bad.json()["error"].startswith("k:")
    assert (
        client.post("/ml/embed", content=b"{not json", headers={**AUTH, "content-type": "application/json"}).status_code
        == 422
    )
    assert client.get("/openapi.json", headers=AUTH).json()["paths"].keys() >= {
        "/ml/embed",
        "/ml/segmentar",
        "/ml/classify",
        "/ml/search",
    }


def test_fuzz_of_the_openapi_schema_finds_no_server_error(db_url: str, embedder: Any) -> None:
    from hypothesis import given

    app = make_app(db_url, embedder, api_max_texts=4, api_max_chars=200, api_max_body=20_000)
    with TestClient(app):  # runs the lifespan: the connection pool opens
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 5
        calls: list[int] = []
        for operation in operations:

            @given(case=operation.as_strategy())
            @hypothesis_settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                derandomize=FUZZ_DERANDOMIZE,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def run(case: Any) -> None:
                response = case.call(headers=AUTH)
                calls.append(response.status_code)
                assert response.status_code < 500, (case.path, response.status_code, response.text)

            run()
        assert len(calls) >= 50 and any(code == 200 for code in calls)


def test_fifty_concurrent_requests(db_url: str, embedder: Any) -> None:
    import httpx
    import uvicorn

    app = make_app(db_url, embedder)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 60, "the server started")
    assert server.started
    try:
        texts = [f"dor número {i} do cliente" for i in range(50)]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=60) as http:

            def call(text: str) -> list[float]:
                response = http.post("/ml/embed", json={"text": text})
                assert response.status_code == 200
                return response.json()["embedding"]  # type: ignore[no-any-return]

            with ThreadPoolExecutor(max_workers=50) as pool:
                vectors = list(pool.map(call, texts))
        expected = embedder.embed(texts)
        assert all(float(np.dot(v, e)) >= 0.9999 for v, e in zip(vectors, expected, strict=True))
    finally:
        server.should_exit = True
        thread.join(10)


def test_segmentar_example_of_the_docs_works_and_errors_speak_of_the_request(client: Any) -> None:
    rows = [
        {"dor_base": "Estoque não bate", "solucao_graventum": "Integração"},
        {"dor_base": "Pacientes faltam", "solucao_graventum": "Agenda"},
    ]
    ok = client.post("/ml/segmentar", json={"rows": rows, "clusters": 2}, headers=AUTH)
    assert ok.status_code == 200, ok.text
    assert sorted(r["segmento"] for r in ok.json()["rows"]) == [0, 1]
    too_many = client.post("/ml/segmentar", json={"rows": rows, "clusters": 3}, headers=AUTH)
    assert too_many.status_code == 422 and "--" not in too_many.json()["error"]
    assert "ask for 2 or fewer" in too_many.json()["error"]


def test_a_chunked_body_over_the_limit_is_413(client: Any) -> None:
    def chunks() -> Any:  # no Content-Length: the limit is found while the body is read
        yield b'{"text": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    huge = client.post("/ml/embed", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in huge.request.headers}
    assert huge.status_code == 413 and huge.json() == {"error": "request body over 200000 bytes"}
    small = client.post(
        "/ml/embed", content=iter([b'{"text": ', b'"x"}']), headers={**AUTH, "content-type": "application/json"}
    )
    assert small.status_code == 200 and len(small.json()["embedding"]) == 384


def test_the_schema_and_docs_need_the_token_unless_opened(db_url: str, embedder: Any) -> None:
    with TestClient(make_app(db_url, embedder)) as closed:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert closed.get(path).status_code in (401, 404), path
        assert closed.get("/openapi.json").status_code == 401
        assert closed.get("/openapi.json", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert "/ml/search" in closed.get("/openapi.json", headers=AUTH).json()["paths"]
        for path in ("/docs", "/redoc"):  # the pages could not load the schema without the token anyway
            off = closed.get(path, headers=AUTH)
            assert off.status_code == 404 and "--public-docs" in off.json()["error"]
        assert "/openapi.json" not in closed.get("/openapi.json", headers=AUTH).json()["paths"]
    with TestClient(make_app(db_url, embedder, api_public_docs=True)) as opened:
        assert "/ml/search" in opened.get("/openapi.json").json()["paths"]
        assert "swagger" in opened.get("/docs").text.lower() and "redoc" in opened.get("/redoc").text.lower()
        assert opened.post("/ml/embed", json={"text": "x"}).status_code == 401  # the routes still take the token
    from pipeline.config import Settings as Loaded

    assert Loaded.load(environ={"PIPELINE_API_PUBLIC_DOCS": "1"}).api_public_docs
    assert not Loaded.load(environ={}).api_public_docs
    # Without any token (a loopback-only server) nothing is closed, the schema included.
    from pipeline.api import create_app

    with TestClient(create_app(settings=Settings(), url=db_url, embedder=embedder)) as open_server:
        assert open_server.get("/openapi.json").status_code == 200


def test_the_serve_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PIPELINE_API_PUBLIC_DOCS", "PIPELINE_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUPABASE_JWT_SECRET", "a-secret-of-the-project-at-least-32-bytes")
    flagged = settings_of(["serve", "--public-docs", "--jwt-secret-env", "SUPABASE_JWT_SECRET"], monkeypatch)
    assert flagged.api_public_docs and flagged.jwt_secret == "a-secret-of-the-project-at-least-32-bytes"
    plain = settings_of(["serve"], monkeypatch)
    assert not plain.api_public_docs and plain.jwt_secret is None
    monkeypatch.setenv("PIPELINE_JWT_SECRET", "from-the-environment")
    assert settings_of(["serve"], monkeypatch).jwt_secret == "from-the-environment"


def test_serve_names_an_unset_secret_variable_in_one_line() -> None:
    result = invoke("serve", "--jwt-secret-env", "PIPELINE_TEST_NO_SUCH_VARIABLE", db_url="")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "pipeline: error: --jwt-secret-env PIPELINE_TEST_NO_SUCH_VARIABLE: that environment variable is not set"
    )


def settings_of(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings `pipeline ARGV` would run its command with."""
    from pipeline import cli

    seen: list[Settings] = []
    monkeypatch.setattr(cli, "_configure_logging", lambda _args: None)  # keep pytest's log capture
    monkeypatch.setitem(cli.COMMANDS, argv[0], lambda _args, settings: seen.append(settings) or 0)
    assert cli.main(argv) == 0
    return seen[0]


def metrics_socket(settings: Settings, db_url: str, worker: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """The address the daemon's /metrics listens on, its drain loop running with `settings`."""
    from pipeline import metrics
    from pipeline.daemon import Daemon

    servers: list[Any] = []
    real = metrics.serve
    monkeypatch.setattr(metrics, "serve", lambda **kw: servers.append(real(**kw)) or servers[-1])
    daemon = Daemon(settings=settings, url=db_url, worker=worker, metrics_port=0)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: servers or not thread.is_alive(), 60, "the metrics server")
        assert servers, "the daemon ended without a metrics server"
        host, port = servers[0].socket.getsockname()[:2]
        # The server answers on loopback either way.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"pipeline_model_load_seconds" in response.read()
        return str(host)
    finally:
        daemon.stop.set()
        thread.join(30)


def test_metrics_listen_on_loopback_unless_the_flag_opens_them(
    db_url: str, worker: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("PIPELINE_METRICS_HOST", raising=False)
    default = settings_of(["run", "--metrics-port", "0", "--interval", "300"], monkeypatch)
    assert metrics_socket(default, db_url, worker, monkeypatch) == "127.0.0.1"
    assert "take no token" not in caplog.text
    opened = settings_of(["run", "--metrics-port", "0", "--interval", "300", "--metrics-host", "0.0.0.0"], monkeypatch)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert metrics_socket(opened, db_url, worker, monkeypatch) == "0.0.0.0"
    assert "take no token and listen on 0.0.0.0" in caplog.text
    assert Settings.load(environ={"PIPELINE_METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"
