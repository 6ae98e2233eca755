"""Running batches until nothing is ready: sources take turns, batch by batch; with a spare connection each
batch is written and committed on a background thread while the next is claimed and embedded; when nothing
is left to embed, the vectors that wait for the vector index are marked into it (`pipeline.indexes`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from pipeline.db import Connection, query, translate_errors
from pipeline.errors import SourceUnavailable
from pipeline.indexes import index_waiting
from pipeline.sources import Source
from pipeline.worker import SyncReport, Worker, resolve_sources

logger = logging.getLogger(__name__)


def drain(
    worker: Worker,
    conn: Connection,
    sources: Sequence[Source | str] | None = None,
    *,
    spare: Connection | None = None,
    stop: threading.Event | None = None,
    on_batch: Callable[[SyncReport], None] | None = None,
) -> SyncReport:
    """Process batches until no row is ready (or `stop` is set); return the totals.

    `sources` defaults to every registered source, read afresh on each call (a source added while
    a daemon runs is picked up by its next drain). Sources take turns, batch by batch, so a backlog
    in one never starves another. With a `spare` connection, each batch is written and committed on
    a background thread while the next one is claimed and embedded on the other connection
    (SKIP LOCKED keeps them apart). When nothing is left to embed, the vectors that wait for the
    vector index are moved into it; rows queued meanwhile are embedded first.
    """
    resolved = resolve_sources(conn, sources)
    total = SyncReport()
    started = time.perf_counter()
    touched: set[str] = set()

    def collect(report: SyncReport) -> None:
        total.add(report)
        if report.claimed:
            touched.add(report.source)
        if on_batch:
            on_batch(report)

    while True:
        if spare is None:
            _drain_serial(worker, conn, resolved, stop, collect)
        else:
            _drain_overlapped(worker, conn, spare, resolved, stop, collect)
        if stop and stop.is_set():
            break
        moved, interrupted = index_waiting(conn, resolved, stop=stop)
        total.indexed += moved
        if not interrupted:
            break
    total.seconds = time.perf_counter() - started  # wall time: overlapped batches' own times add up to more
    record_sync(conn, touched)
    return total

def _drain_serial(
    worker: Worker,
    conn: Connection,
    resolved: list[Source],
    stop: threading.Event | None,
    collect: Callable[[SyncReport], None],
) -> None:
    active = list(resolved)
    while active and not (stop and stop.is_set()):
        for source in list(active):
            if stop and stop.is_set():
                break
            try:
                report = worker.run_batch(conn, source)
            except SourceUnavailable as exc:
                logger.warning("%s", exc)
                report = SyncReport()
            if report.claimed == 0:
                active.remove(source)
            else:
                collect(report)

def _drain_overlapped(
    worker: Worker,
    conn: Connection,
    spare: Connection,
    resolved: list[Source],
    stop: threading.Event | None,
    collect: Callable[[SyncReport], None],
) -> None:
    from concurrent.futures import Future, ThreadPoolExecutor

    connections = [conn, spare]
    unavailable: set[str] = set()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer") as writer:
        writing: Future[SyncReport] | None = None
        turn = 0
        while not (stop and stop.is_set()):
            batch = None
            try:
                for offset in range(len(resolved)):  # round robin: start after the last source served
                    source = resolved[(turn + offset) % len(resolved)]
                    if source.name in unavailable:
                        continue
                    try:
                        batch = worker.begin(connections[turn % 2], source)
                    except SourceUnavailable as exc:
                        logger.warning("%s", exc)
                        unavailable.add(source.name)
                        continue
                    if batch:
                        break
            finally:
                in_flight, writing = writing, None
                if in_flight is not None:
                    try:
                        collect(in_flight.result())
                    except BaseException:
                        if batch is not None:
                            batch.conn.rollback()
                        raise
            if batch is None:
                if in_flight is not None:
                    continue  # its commit may have made rows ready again (changed text, retry now)
                break
            writing = writer.submit(worker.finish, batch)
            turn += 1
        if writing is not None:
            collect(writing.result())


def record_sync(conn: Connection, sources: set[str]) -> None:
    """When each source was last synced, whatever came of it (`status` shows it even if every row failed)."""
    if sources:
        with translate_errors():
            conn.execute(query("record_sync"), {"keys": [f"last_sync:{name}" for name in sorted(sources)]})
