"""The daemon and several workers as real processes against the real database: signals, kill -9 and
parallel processes are what is tested here; what the daemon serves (metrics, health), from its loop on a
thread of this process."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from pipeline.db import connect
from tests.conftest import ROOT, cli_env, daemon_thread, invoke, wait_until


def start(args: list[str], db_url: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        env=cli_env(db_url, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def wait_for_line(process: subprocess.Popen[str], *needles: str, timeout: float = 120) -> list[str]:
    """The lines of the process's stderr up to the first that contains one of `needles`."""
    assert process.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"process ended before {needles!r}:\n{''.join(seen)}")
        seen.append(line)
        if any(needle in line for needle in needles):
            return seen
    raise AssertionError(f"no {needles!r} within {timeout}s:\n{''.join(seen)}")


def count(conn: Any, where: str = "embedding is not null") -> int:
    return int(conn.execute(f"select count(*) as n from dores where {where}").fetchone()["n"])


def test_daemon_embeds_an_insert_on_its_notification_and_stops_on_sigterm(db_url: str) -> None:
    daemon = start(["run", "--interval", "300"], db_url)
    try:
        wait_for_line(daemon, "ready:")
        with connect(db_url) as conn:
            row_id = conn.execute(
                "insert into dores (dor_base) values ('Clientes reclamam do prazo') returning id"
            ).fetchone()["id"]
            # Long before the 300 s poll: the notification woke it (bench/throughput.py times commit to embedded).
            wait_until(lambda: count(conn, f"id = {row_id} and embedding is not null"), 60, "the row embedded")
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
    assert code == 0


@pytest.mark.slow
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
        code = daemon.wait(timeout=60)
    assert code == 0
    with connect(db_url) as conn:
        embedded = count(conn)
        queued = conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"]
    # Whatever was committed is complete; the rest is still queued: nothing lost.
    assert 0 < embedded < 3000 and embedded + queued == 3000


@pytest.mark.slow
def test_two_parallel_syncs_embed_every_row_exactly_once(db_url: str) -> None:
    """Two processes on one queue: every row and every document embedded once, no duplicate chunks (how
    throughput scales with more is bench/workers.py's)."""
    with connect(db_url) as conn:
        conn.execute(
            "insert into dores (dor_base) select 'problema do cliente número ' || g from generate_series(1, 600) g"
        )
        conn.execute(
            "insert into documents (title, content) select 'Doc ' || g, repeat('Parágrafo sobre atrasos na entrega. ', 80) "
            "from generate_series(1, 12) g"
        )
    workers = [start(["sync", "--json"], db_url, PIPELINE_CLAIM_SIZE="25") for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    reports = [json.loads(out) for out, _ in outputs]
    assert sum(r["embedded"] for r in reports) == 612
    assert sum(r["unchanged"] for r in reports) == 0
    with connect(db_url) as conn:
        assert count(conn) == 600
        assert conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"] == 0
        duplicates = conn.execute(
            "select count(*) as n from (select document_id, chunk_index from document_chunks"
            " group by 1, 2 having count(*) > 1) d"
        ).fetchone()["n"]
        assert duplicates == 0
        assert conn.execute("select count(distinct document_id) as n from document_chunks").fetchone()["n"] == 12


@pytest.mark.slow
def test_kill_9_during_sync_loses_nothing(db_url: str) -> None:
    with connect(db_url) as conn, connect(db_url, autocommit=False) as holder:
        conn.execute("insert into dores (dor_base) select 'texto para embutir ' || g from generate_series(1, 500) g")
        # The row claimed last stays locked, so the sync commits its other batches and then waits to write
        # that one's: killed there, it dies mid-run whatever the machine's speed.
        last = holder.execute(
            "select d.id from dores d join pipeline.queue q on q.row_id = d.id::text"
            " order by q.next_attempt_at desc, q.row_id desc limit 1"
        ).fetchone()["id"]
        holder.execute("select 1 from dores where id = %s for update", (last,))
        victim = start(["sync"], db_url, PIPELINE_CLAIM_SIZE="100")
        sessions = (
            "select count(*) as n from pg_stat_activity where datname = current_database()"
            " and backend_type = 'client backend' and pid not in (pg_backend_pid(), %s)"
        )
        locked = sessions + " and wait_event_type = 'Lock'"
        holder_pid = holder.info.backend_pid
        wait_until(lambda: conn.execute(locked, (holder_pid,)).fetchone()["n"], 120, "the sync waiting on the lock")
        victim.kill()
        victim.wait()
        holder.rollback()
        # Its server sessions end as soon as they next talk to the dead process.
        wait_until(lambda: conn.execute(sessions, (holder_pid,)).fetchone()["n"] == 0, 60, "its sessions gone")
        partial = count(conn)
        assert 0 < partial < 500
        result = invoke("sync", "--json", db_url=db_url)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["embedded"] == 500 - partial
        assert count(conn) == 500
        assert conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"] == 0
        assert conn.execute("select count(*) as n from pipeline.failed").fetchone()["n"] == 0


def test_metrics_and_health_endpoints(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    import re
    import urllib.request

    with caplog.at_level(logging.INFO, logger="pipeline"), daemon_thread(db_url, metrics_port=0):
        port = int(re.search(r"http://[^:]+:(\d+)/metrics", caplog.text).group(1))  # type: ignore[union-attr]
        with connect(db_url) as conn:
            conn.execute("insert into dores (dor_base) select 'dor ' || g from generate_series(1, 5) g")
            conn.execute("insert into dores (dor_base) values ('  ')")
        # The empty row may come in a later batch than the five: wait for both counts.
        wanted = ['pipeline_rows_embedded_total{table="dores"} 5.0', 'pipeline_rows_failed_total{table="dores"} 1.0']

        def metrics() -> str:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            return body if all(w in body for w in wanted) else ""

        body = wait_until(metrics, 60, " and ".join(wanted))
        assert all(w in body for w in wanted)
        assert "pipeline_batch_seconds_bucket" in body and "pipeline_model_load_seconds" in body
        assert "pipeline_queue_depth" in body and "pipeline_last_loop_timestamp_seconds" in body
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200 and json.loads(health.read())["database"] == "ok"


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
