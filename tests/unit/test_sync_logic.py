from __future__ import annotations

from pipeline.db import queries
from pipeline.migrations import load
from pipeline.worker import RETRY_CAP_S, SyncReport, retry_delay


def test_retry_delay_doubles_and_is_capped() -> None:
    assert [retry_delay(n, 5.0) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert retry_delay(30, 5.0) == RETRY_CAP_S
    assert retry_delay(3, 0.0) == 0.0


def test_reports_add_up() -> None:
    total = SyncReport()
    total.add(SyncReport(embedded=3, unchanged=1, seconds=0.5, batches=1))
    total.add(SyncReport(embedded=2, failed=1, retried=2, seconds=0.25, batches=1))
    assert (total.embedded, total.claimed, total.batches) == (5, 9, 2)
    assert total.as_dict()["seconds"] == 0.75


def test_named_queries_load_and_are_distinct() -> None:
    named = queries()
    assert {"claim", "create_staging", "copy_rows", "delete_queue", "move_to_failed"} <= set(named)
    assert "for update skip locked" in named["claim"]
    assert all(any(line and not line.startswith("--") for line in body.splitlines()) for body in named.values())


def test_migration_files_are_numbered_in_order() -> None:
    names = [m.name for m in load()]
    assert names == sorted(names) and names[0] == "0001_init.sql"
    assert all(len(m.checksum) == 64 for m in load())
