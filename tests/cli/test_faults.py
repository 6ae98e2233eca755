"""Faults injected for real: SIGKILL mid-sync again and again, PostgreSQL restarted under the daemon,
the database down when the daemon starts, several workers at once."""

from __future__ import annotations

import json
import random
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from pipeline.db import connect
from pipeline.migrations import migrate
from tests.cli.test_daemon import start, wait_for_line
from tests.conftest import run_cli


def counts(conn: Any) -> tuple[int, int, int]:
    row = conn.execute(
        "select (select count(*) from dores where embedding is not null) as embedded,"
        " (select count(*) from pipeline.queue) as queued, (select count(*) from pipeline.failed) as failed"
    ).fetchone()
    return row["embedded"], row["queued"], row["failed"]


@pytest.mark.slow
def test_ten_sigkills_lose_nothing(db_url: str) -> None:
    rng = random.Random(5)
    with connect(db_url) as conn:
        conn.execute(
            "insert into dores (dor_base) select 'linha de teste ' || g || ' sobre atrasos' from generate_series(1, 5000) g"
        )
        for _ in range(10):
            before = counts(conn)[0]
            victim = start(["sync"], db_url, PIPELINE_CLAIM_SIZE="200")
            deadline = time.monotonic() + 120
            while counts(conn)[0] == before and time.monotonic() < deadline:  # wait for the first commit
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 1.5))  # then die at a random moment
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        # Change some texts after all that, so "current text" is checked too.
        conn.execute("update dores set dor_base = dor_base || ' (editada)' where id % 500 = 0")
        result = run_cli("sync", "--json", db_url=db_url)
        assert result.returncode == 0, result.stderr
        assert counts(conn) == (5000, 0, 0)
        indexed = conn.execute("select count(*) as n from dores where embedding is not null").fetchone()["n"]
        assert indexed == 5000  # vectors a killed run left waiting for the index are in it now
        stale = conn.execute(
            "select count(*) as n from dores where content_hash is distinct from "
            "pipeline.content_hash(pipeline.dor_text(dor_base, solucao_graventum))"
        ).fetchone()["n"]
        assert stale == 0


@pytest.fixture
def own_server(tmp_path: Path) -> Any:
    """A PostgreSQL server of this test's own, so it can be stopped and started."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver._commands import pg_ctl

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="delete")
    url = server.get_uri()

    class Control:
        def __init__(self) -> None:
            self.url = url

        def stop(self) -> None:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)

        def start(self) -> None:
            pg_ctl(
                [
                    "-w",
                    "-o",
                    '-h ""',
                    "-o",
                    f"-k {server.get_postmaster_info().socket_dir}",
                    "-l",
                    str(server.log),
                    "start",
                ],
                pgdata=server.pgdata,
                user=server.system_user,
            )

    control = Control()
    with connect(url) as conn:
        migrate(conn)
    yield control
    server.cleanup()


@pytest.mark.slow
def test_daemon_survives_a_database_restart(own_server: Any) -> None:
    url = own_server.url
    with connect(url) as conn:
        conn.execute(
            "insert into dores (dor_base) select 'antes da queda ' || g || repeat(' texto', 30) from generate_series(1, 1500) g"
        )
    daemon = start(["run", "--interval", "2"], url, PIPELINE_CLAIM_SIZE="100")
    try:
        wait_for_line(daemon, "rows embedded")
        own_server.stop()
        time.sleep(3)
        own_server.start()
        with connect(url) as conn:
            conn.execute("insert into dores (dor_base) values ('depois da volta')")
            deadline = time.monotonic() + 180
            while counts(conn)[:2] != (1501, 0) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert counts(conn) == (1501, 0, 0)
        assert daemon.poll() is None  # never exited
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    assert "database unavailable" in err or "listener lost the database" in err


@pytest.mark.slow
def test_daemon_waits_for_a_database_that_is_down_at_start(own_server: Any) -> None:
    own_server.stop()
    daemon = start(["run", "--interval", "2"], own_server.url)
    try:
        lines = wait_for_line(daemon, "database unavailable at start")
        assert "retrying in" in lines[-1]
        time.sleep(2)
        assert daemon.poll() is None  # waiting, not crash-looping
        own_server.start()
        wait_for_line(daemon, "ready:", timeout=120)
        with connect(own_server.url) as conn:
            conn.execute("insert into dores (dor_base) values ('chegou')")
            deadline = time.monotonic() + 30
            while counts(conn)[0] < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert counts(conn)[0] == 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
    assert daemon.returncode == 0


@pytest.mark.slow
def test_four_workers_embed_every_row_once(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute("insert into dores (dor_base) select 'dor ' || g from generate_series(1, 20000) g")
        conn.execute(
            "insert into documents (title, content) select 'Doc ' || g, repeat('Parágrafo sobre atrasos na entrega. ', 80) "
            "from generate_series(1, 40) g"
        )
    workers = [start(["sync", "--json"], db_url, PIPELINE_CLAIM_SIZE="250", PIPELINE_THREADS="1") for _ in range(4)]
    outputs = [w.communicate(timeout=900) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0, 0], [e for _, e in outputs]
    reports = [json.loads(out) for out, _ in outputs]
    assert sum(r["embedded"] for r in reports) == 20040
    with connect(db_url) as conn:
        assert counts(conn) == (20000, 0, 0)
        duplicates = conn.execute(
            "select count(*) as n from (select document_id, chunk_index from document_chunks"
            " group by 1, 2 having count(*) > 1) d"
        ).fetchone()["n"]
        assert duplicates == 0
        assert conn.execute("select count(distinct document_id) as n from document_chunks").fetchone()["n"] == 40


def test_password_never_in_logs(db_url: str) -> None:
    bad = "postgresql://pipeline:Sup3rS3cret@127.0.0.1:1/db"
    for args in (["status"], ["sync", "--log-format", "json"], ["run", "--log-format", "json"]):
        daemon = start(args, bad)
        time.sleep(4)
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=30)
        assert "Sup3rS3cret" not in out + err, args
