"""The long-running worker: APScheduler jobs, LISTEN/NOTIFY wake-ups, signals and reconnection."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from pipeline.config import Settings
from pipeline.db import Connection, connect
from pipeline.errors import DatabaseError, PipelineError, RowSecurityError
from pipeline.worker import SyncReport, Worker

logger = logging.getLogger(__name__)

CHANNEL = "pipeline_queue"
BACKOFF_MAX_S = 30.0
SHUTDOWN_GRACE_S = 8.0
GROWTH_CHECK_S = 60.0
FIRST_FIT_ROWS_PER_SEGMENT = 10
SEGMENT_JOB_LOCK = 0x72_65_66_74  # "reft"


class Backoff:
    """Exponential wait between reconnection attempts: 1, 2, 4, ... up to `BACKOFF_MAX_S` seconds."""

    def __init__(self) -> None:
        self.delay = 1.0

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, BACKOFF_MAX_S)
        return delay

    def reset(self) -> None:
        self.delay = 1.0


class Daemon:
    """Drain the queue whenever a notification arrives, and every `interval` seconds regardless."""

    def __init__(
        self, *, settings: Settings, url: str, worker: Worker | None = None, metrics_port: int | None = None
    ) -> None:
        self.settings = settings
        self.url = url
        self.worker: Worker = worker  # type: ignore[assignment]  # set by serve() when None
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        self.last_loop: float | None = None
        self.totals = SyncReport()
        self._conn: Connection | None = None
        self._spare: Connection | None = None
        self._scheduler: Any = None
        self.metrics_port = metrics_port
        self.exit_code = 0
        self.metrics: Any = None

    # -- jobs ------------------------------------------------------------------------------------

    def drain_job(self) -> None:
        """Drain until nothing is ready; loop again if a notification came in meanwhile."""
        self.idle.clear()
        backoff = Backoff()
        try:
            while not self.stop.is_set():
                self.wake.clear()
                try:
                    conn, spare = self._connections()
                    report = self.worker.drain(conn, spare=spare, stop=self.stop, on_batch=self._on_batch)
                except DatabaseError as exc:
                    self._drop_connection()
                    delay = backoff.next()
                    logger.warning("database unavailable (%s); retrying in %.0fs", exc, delay)
                    self.stop.wait(delay)
                    continue
                except RowSecurityError as exc:
                    # Going on could only skip the hidden rows; stopping keeps their queue rows for a
                    # worker that can see them.
                    logger.error("%s; stopping", exc)
                    self.exit_code = 1
                    self.stop.set()
                    break
                backoff.reset()
                self.last_loop = time.time()
                if self.metrics is not None:
                    self.metrics.last_loop.set(self.last_loop)
                self.totals.add(report)
                if not self.wake.is_set():
                    break
        finally:
            self.idle.set()
            if self.wake.is_set() and not self.stop.is_set():
                self._schedule_now()  # a notification raced with the end of this run

    def _on_batch(self, report: SyncReport) -> None:
        self.last_loop = time.time()  # a committed batch is progress, even in a long backlog
        if self.metrics is not None:
            self.metrics.observe_batch(report.source, report)

    def lag_job(self) -> None:
        """Refresh the queue gauges (metrics only)."""
        from pipeline.db import query

        try:
            with connect(self.url, connect_timeout=5) as conn:
                self.metrics.observe_lag(conn.execute(query("status_lag")).fetchall())
                self.metrics.observe_classifiers(conn.execute(query("classifier_lag")).fetchall())
        except PipelineError as exc:
            logger.debug("lag metrics not refreshed: %s", exc)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """200 when the database answers and the drain loop ran recently, 503 otherwise."""
        from pipeline.metrics import loop_is_recent

        try:
            with connect(self.url, connect_timeout=2) as conn:
                conn.execute("select 1")
            database = True
        except PipelineError:
            database = False
        recent = loop_is_recent(self.last_loop, self.settings.interval)
        detail = {
            "database": "ok" if database else "unreachable",
            "last_loop_age_s": round(time.time() - self.last_loop, 1) if self.last_loop else None,
            "loop": "ok" if recent else "stale",
        }
        return database and recent, detail

    def _connections(self) -> tuple[Connection, Connection]:
        """The work connection and a spare one (the previous batch commits on it), reopened if lost."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.url)
        if self._spare is None or self._spare.closed or self._spare.broken:
            self._spare = connect(self.url)
        return self._conn, self._spare

    def _drop_connection(self) -> None:
        for conn in (self._conn, self._spare):
            if conn is not None:
                with contextlib.suppress(Exception):  # already broken: nothing to release
                    conn.close()
        self._conn = self._spare = None

    def notify(self) -> None:
        """Ask for a drain now (called by the listener).

        A running drain job sees `wake` and loops once more; an idle one is scheduled for now. Setting
        `wake` before reading `idle` (and the job doing the reverse) means one side always notices.
        """
        self.wake.set()
        if self.idle.is_set() and not self.stop.is_set():
            self._schedule_now()

    def _schedule_now(self) -> None:
        if self._scheduler is None:
            return
        try:
            self._scheduler.modify_job("drain", next_run_time=dt.datetime.now(dt.UTC))
        except Exception as exc:  # the scheduler is shutting down
            logger.debug("could not wake the drain job: %s", exc)

    def listen(self) -> None:
        """LISTEN on the queue channel; reconnect with backoff when the connection drops."""
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                with connect(self.url, connect_timeout=5) as conn:
                    conn.execute(f"listen {CHANNEL}")
                    if backoff.delay > 1:
                        logger.info("listening again on %s", CHANNEL)
                    backoff.reset()
                    self.notify()  # catch up on whatever arrived while not listening
                    while not self.stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.notify()
            except (DatabaseError, psycopg.Error) as exc:
                delay = backoff.next()
                logger.warning("listener lost the database (%s); reconnecting in %.0fs", str(exc).strip(), delay)
                self.stop.wait(delay)

    def refit_job(self, reason: str = "schedule", sources: list[str] | None = None) -> None:
        """Refit the segments of every source that has them (one daemon at a time: the others find the
        lock taken and skip)."""
        from pipeline.segments import fit_database
        from pipeline.sources import load_sources

        try:
            with connect(self.url) as conn:
                locked = conn.execute("select pg_try_advisory_lock(%s) as ok", (SEGMENT_JOB_LOCK,)).fetchone()
                if not locked or not locked["ok"]:
                    logger.info("segment refit (%s) skipped: another worker is fitting", reason)
                    return
                try:
                    clusters: int | str = self.settings.segment_clusters
                    if clusters != "auto":
                        clusters = int(clusters)
                    names = sources or [s.name for s in load_sources(conn) if s.segment_column]
                    for name in names:
                        logger.info("segment refit of %s (%s)", name, reason)
                        fit_database(conn, source=name, clusters=clusters, method=self.settings.segment_method)
                finally:
                    conn.execute("select pg_advisory_unlock(%s)", (SEGMENT_JOB_LOCK,))
        except PipelineError as exc:
            logger.warning("segment refit (%s) failed: %s", reason, exc)

    def growth_job(self) -> None:
        """Refit a source's segments when its embedded rows grew by `segment_growth` since the last fit (or
        first reach enough)."""
        from pipeline.sources import load_sources

        try:
            with connect(self.url) as conn:
                for source in [s for s in load_sources(conn) if s.segment_column]:
                    row = conn.execute(source.segment_growth_query(), {"source": source.name}).fetchone()
                    embedded, fitted = int(row["embedded"]), row["n_rows"]
                    if fitted is None:
                        clusters = self.settings.segment_clusters
                        needed = FIRST_FIT_ROWS_PER_SEGMENT * (int(clusters) if clusters != "auto" else 8)
                        if embedded >= needed:
                            self.refit_job(f"first fit, {embedded} embedded {source.name} rows", [source.name])
                    elif embedded >= fitted * (1 + self.settings.segment_growth):
                        self.refit_job(f"grew from {fitted} to {embedded} {source.name} rows", [source.name])
        except PipelineError as exc:
            logger.warning("segment growth check failed: %s", exc)

    # -- life cycle ------------------------------------------------------------------------------

    def serve(self, prepare: Callable[[Connection], Worker]) -> int:
        """Wait for the database (with backoff while it is down), build the worker with it, then run."""
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                with connect(self.url, connect_timeout=5) as conn:
                    self.worker = prepare(conn)
                return self.run()
            except DatabaseError as exc:
                delay = backoff.next()
                logger.warning("database unavailable at start (%s); retrying in %.0fs", exc, delay)
                self.stop.wait(delay)
        return 0

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: object) -> None:
            logger.info("received %s: finishing the current batch and stopping", signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit code."""
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(timezone=dt.UTC)
        scheduler.add_job(
            self.drain_job,
            "interval",
            seconds=self.settings.interval,
            id="drain",
            max_instances=1,
            coalesce=True,
            next_run_time=dt.datetime.now(dt.UTC),
            misfire_grace_time=None,
        )
        from apscheduler.triggers.cron import CronTrigger

        scheduler.add_job(
            self.refit_job,
            CronTrigger.from_crontab(self.settings.segment_cron, timezone=dt.UTC),
            id="segment-refit",
            max_instances=1,
            coalesce=True,
        )
        scheduler.add_job(
            self.growth_job, "interval", seconds=GROWTH_CHECK_S, id="segment-growth", max_instances=1, coalesce=True
        )
        if self.metrics_port is not None:
            from pipeline.metrics import Metrics, serve

            self.metrics = Metrics()
            self.metrics.model_load_seconds.set(getattr(self.worker.embedder, "load_seconds", 0.0))
            http = serve(
                port=self.metrics_port, host=self.settings.metrics_host, metrics=self.metrics, health=self.health
            )
            scheduler.add_job(self.lag_job, "interval", seconds=10, id="lag", max_instances=1, coalesce=True)
            scheduler.add_job(self.lag_job, id="lag-now")
        self._scheduler = scheduler
        scheduler.start()
        listener = threading.Thread(target=self.listen, name="listener", daemon=True)
        listener.start()
        logger.info(
            "ready: model %s, listening on %s, polling every %.0fs",
            self.worker.embedder.name,
            CHANNEL,
            self.settings.interval,
        )
        self.stop.wait()
        scheduler.shutdown(wait=False)
        if self.metrics_port is not None:
            http.shutdown()
        if not self.idle.wait(SHUTDOWN_GRACE_S):
            # The open transaction is rolled back when the process exits; its rows are claimed again.
            logger.warning("batch still running after %.0fs; exiting, it will be rolled back", SHUTDOWN_GRACE_S)
        else:
            self._drop_connection()
        logger.info("stopped: %d rows embedded, %d failed since start", self.totals.embedded, self.totals.failed)
        return self.exit_code
