"""What is already in the tables: queue every row whose vectors are missing or stale, then embed them. The
library function behind `pipeline backfill` and the re-embedding of `pipeline reembed`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import psycopg

from pipeline.db import Connection, translate_errors
from pipeline.indexes import restore_vector_indexes, set_aside_for_backfill
from pipeline.sources import Source
from pipeline.worker import SyncReport, Worker, count_ready, resolve_sources

logger = logging.getLogger(__name__)


def backfill(
    conn: Connection,
    worker: Worker,
    *,
    sources: Sequence[str] | None = None,
    rebuild: bool = False,
    bulk_index_from: int = 0,
    spare: Connection | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[SyncReport], None] | None = None,
) -> SyncReport:
    """Queue the rows of `sources` (all by default) whose vectors are missing or stale (every row, with
    `rebuild`) and drain the queue with `worker`. A source with at least `bulk_index_from` rows to embed and
    almost nothing embedded yet writes with its vector index set aside, built again at the end.

    `on_start` receives the number of rows to process. Interrupted (Ctrl-C), it leaves the rest queued: the
    same call goes on where it stopped.
    """
    queued = queue_stale(conn, sources=sources, model=worker.embedder.name, rebuild=rebuild)
    total = count_ready(conn, sources)
    logger.info("backfill: %d rows newly queued, %d ready to process", queued, total)
    if on_start:
        on_start(total)
    restore_vector_indexes(conn)  # set aside by an earlier backfill or fit that was interrupted
    set_aside = set_aside_for_backfill(conn, sources, threshold=bulk_index_from)
    try:
        return worker.drain(conn, sources, spare=spare, on_batch=on_batch)
    finally:
        if set_aside:
            restore_vector_indexes(conn, set_aside)


def queue_stale(
    conn: Connection, *, sources: Sequence[Source | str] | None = None, model: str, rebuild: bool = False
) -> int:
    """Queue every row whose vectors are missing or stale (or every row, with `rebuild`)."""
    queued = 0
    resolved = resolve_sources(conn, sources)
    with translate_errors(), conn.transaction():
        for source in resolved:
            if rebuild:
                conn.execute(source.forget_hashes_query())
            conn.execute("savepoint pipeline_stale")
            try:
                queued += conn.execute(source.queue_stale_query(), {"model": model}).rowcount
            except psycopg.errors.DataError:  # the text expression raises for some row: the worker sorts it out
                conn.execute("rollback to savepoint pipeline_stale")
                queued += conn.execute(source.queue_all_query()).rowcount
    return queued
