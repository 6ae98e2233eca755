"""Faults injected for real: SIGKILL mid-sync again and again, PostgreSQL restarted under the daemon,
the database down when the daemon starts, a password in a URL the driver quotes."""

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
from tests.conftest import invoke, wait_until


def counts(conn: Any) -> tuple[int, int, int]:
    row = conn.execute(
        "select (select count(*) from dores where embedding is not null) as embedded,"
        " (select count(*) from pipeline.queue) as queued, (select count(*) from pipeline.failed) as failed"
    ).fetchone()
    return row["embedded"], row["queued"], row["failed"]


@pytest.mark.slow
def test_sigkills_at_random_moments_lose_nothing(db_url: str) -> None:
    rng = random.Random(5)
    with connect(db_url) as conn:
        conn.execute(
            "insert into dores (dor_base) select 'linha de teste ' || g || ' sobre atrasos' from generate_series(1, 2500) g"
        )
        for _ in range(3):
            before = counts(conn)[0]
            victim = start(["sync"], db_url, PIPELINE_CLAIM_SIZE="100")
            # A first commit (or, on a fast machine, the end of the work: then the kill finds it gone).
            wait_until(lambda: counts(conn)[0] > before or victim.poll() is not None, 120, "a commit")  # noqa: B023
            time.sleep(rng.uniform(0, 1.5))  # the fault itself: die at a random moment after it
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        # Change some texts after all that, so "current text" is checked too.
        conn.execute("update dores set dor_base = dor_base || ' (editada)' where id % 500 = 0")
        result = invoke("sync", "--json", db_url=db_url)
        assert result.returncode == 0, result.stderr
        assert counts(conn) == (2500, 0, 0)
        indexed = conn.execute("select count(*) as n from dores where embedding is not null").fetchone()["n"]
        assert indexed == 2500  # vectors a killed run left waiting for the index are in it now
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
            "insert into dores (dor_base) select 'antes da queda ' || g || repeat(' texto', 30) from generate_series(1, 500) g"
        )
    daemon = start(["run", "--interval", "2"], url, PIPELINE_CLAIM_SIZE="100")
    try:
        wait_for_line(daemon, "rows embedded")
        own_server.stop()
        wait_for_line(daemon, "database unavailable", "listener lost the database")  # it noticed
        own_server.start()
        with connect(url) as conn:
            conn.execute("insert into dores (dor_base) values ('depois da volta')")
            wait_until(lambda: counts(conn)[:2] == (501, 0), 180, "every row embedded after the restart")
            assert counts(conn) == (501, 0, 0)
        assert daemon.poll() is None  # never exited
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
    assert daemon.returncode == 0


@pytest.mark.slow
def test_daemon_waits_for_a_database_that_is_down_at_start(own_server: Any) -> None:
    own_server.stop()
    daemon = start(["run", "--interval", "2"], own_server.url)
    try:
        lines = wait_for_line(daemon, "database unavailable at start")
        assert "retrying in" in lines[-1]
        wait_for_line(daemon, "database unavailable at start")  # it tried again: waiting, not crash-looping
        assert daemon.poll() is None
        own_server.start()
        wait_for_line(daemon, "ready:", timeout=120)
        with connect(own_server.url) as conn:
            conn.execute("insert into dores (dor_base) values ('chegou')")
            wait_until(lambda: counts(conn)[0] == 1, 60, "the row embedded")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
    assert daemon.returncode == 0


UNREACHABLE = "postgresql://pipeline:Sup3rS3cret@127.0.0.1:1/db"
MALFORMED = "postgresql://pipeline:Sup3rS3cret@[::1:1/db"  # the driver's message quotes this whole URL


def test_password_never_in_logs() -> None:
    for args in (["status"], ["sync", "--log-format", "json"]):
        for url, said in ((UNREACHABLE, 'server at "127.0.0.1", port 1 failed'), (MALFORMED, "pipeline:***@[::1:1/db")):
            result = invoke(*args, db_url=url)
            # It tried to connect and said why it could not, with the password hidden.
            assert result.returncode == 1 and said in result.stderr, (args, result.stderr)
            assert "Sup3rS3cret" not in result.stdout + result.stderr, args
    daemon = start(["run", "--log-format", "json"], MALFORMED)
    try:
        line = wait_for_line(daemon, "database unavailable at start")[-1]
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=60)
    assert json.loads(line)["level"] == "warning" and "pipeline:***@[::1:1/db" in json.loads(line)["message"], line
    assert "Sup3rS3cret" not in line + out + err


def test_password_with_a_bad_percent_escape_never_in_errors() -> None:
    result = invoke("status", db_url="postgresql://pipeline:Sup3r%zzS3cret@127.0.0.1:1/db")
    assert result.returncode == 1 and result.stderr.startswith("pipeline: error:"), result.stderr
    assert "Sup3r" not in result.stderr
