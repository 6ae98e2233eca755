"""The daemon and several workers as real processes against the real database."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from pipeline.db import connect
from tests.conftest import ROOT, cli_env, run_cli


def start(args: list[str], db_url: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        env=cli_env(db_url, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float = 120) -> list[str]:
    assert process.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"process ended before {needle!r}:\n{''.join(seen)}")
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"no {needle!r} within {timeout}s:\n{''.join(seen)}")


def count(conn: Any, where: str = "embedding is not null") -> int:
    return int(conn.execute(f"select count(*) as n from dores where {where}").fetchone()["n"])


def test_daemon_embeds_an_insert_within_two_seconds_and_stops_on_sigterm(db_url: str) -> None:
    daemon = start(["run", "--interval", "300"], db_url)
    try:
        wait_for_line(daemon, "ready:")
        with connect(db_url) as conn:
            row_id = conn.execute(
                "insert into dores (dor_base) values ('Clientes reclamam do prazo') returning id"
            ).fetchone()["id"]
            committed = time.monotonic()
            while time.monotonic() - committed < 5:
                if count(conn, f"id = {row_id} and embedding is not null"):
                    break
                time.sleep(0.05)
            latency = time.monotonic() - committed
        assert latency < 2.0, f"embedded after {latency:.2f}s"
    finally:
        daemon.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = daemon.wait(timeout=15)
        stopped_in = time.monotonic() - started
    assert code == 0
    assert stopped_in < 10


def test_sigterm_during_a_batch_exits_cleanly(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute(
            "insert into dores (dor_base) select 'dor longa número ' || g || repeat(' texto', 40) from generate_series(1, 3000) g"
        )
    daemon = start(["run"], db_url, PIPELINE_CLAIM_SIZE="128")
    try:
        wait_for_line(daemon, "rows embedded")
    finally:
        daemon.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = daemon.wait(timeout=15)
    assert code == 0 and time.monotonic() - started < 10
    with connect(db_url) as conn:
        embedded = count(conn)
        queued = conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"]
    # Whatever was committed is complete; the rest is still queued: nothing lost.
    assert 0 < embedded < 3000 and embedded + queued == 3000


@pytest.mark.slow
def test_two_parallel_syncs_embed_every_row_exactly_once(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute(
            "insert into dores (dor_base) select 'problema do cliente número ' || g from generate_series(1, 2000) g"
        )
    workers = [start(["sync", "--json"], db_url, PIPELINE_CLAIM_SIZE="50") for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    reports = [json.loads(out) for out, _ in outputs]
    assert sum(r["embedded"] for r in reports) == 2000
    assert sum(r["unchanged"] for r in reports) == 0
    with connect(db_url) as conn:
        assert count(conn) == 2000
        assert conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"] == 0


@pytest.mark.slow
def test_kill_9_during_sync_loses_nothing(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute("insert into dores (dor_base) select 'texto para embutir ' || g from generate_series(1, 2000) g")
        victim = start(["sync"], db_url, PIPELINE_CLAIM_SIZE="100")
        deadline = time.monotonic() + 120
        while count(conn) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim.kill()
        victim.wait()
        partial = count(conn)
        assert 0 < partial < 2000
        result = run_cli("sync", "--json", db_url=db_url)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["embedded"] == 2000 - partial
        assert count(conn) == 2000
        assert conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"] == 0
        assert conn.execute("select count(*) as n from pipeline.failed").fetchone()["n"] == 0


def test_metrics_and_health_endpoints(db_url: str) -> None:
    import re
    import urllib.error
    import urllib.request

    daemon = start(["run", "--metrics-port", "0", "--interval", "300"], db_url)
    try:
        lines = wait_for_line(daemon, "ready:")
        port = int(re.search(r"http://[^:]+:(\d+)/metrics", "".join(lines)).group(1))  # type: ignore[union-attr]
        with connect(db_url) as conn:
            conn.execute("insert into dores (dor_base) select 'dor ' || g from generate_series(1, 5) g")
            conn.execute("insert into dores (dor_base) values ('  ')")
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            if 'pipeline_rows_embedded_total{table="dores"} 5.0' in body:
                break
            time.sleep(0.2)
        assert 'pipeline_rows_embedded_total{table="dores"} 5.0' in body
        assert 'pipeline_rows_failed_total{table="dores"} 1.0' in body
        assert "pipeline_batch_seconds_bucket" in body and "pipeline_model_load_seconds" in body
        assert "pipeline_queue_depth" in body and "pipeline_last_loop_timestamp_seconds" in body
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200 and json.loads(health.read())["database"] == "ok"
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0


def test_health_is_503_when_the_database_is_gone(db_url: str) -> None:
    import time as clock

    from pipeline.config import Settings
    from pipeline.daemon import Daemon

    daemon = Daemon(settings=Settings(), url="postgresql://nobody:secret@127.0.0.1:1/none")
    daemon.last_loop = clock.time()
    ok, detail = daemon.health()
    assert not ok and detail["database"] == "unreachable"
    fresh = Daemon(settings=Settings(), url=db_url)
    ok, detail = fresh.health()
    assert not ok and detail == {"database": "ok", "last_loop_age_s": None, "loop": "stale"}
    fresh.last_loop = clock.time()
    assert fresh.health()[0]
