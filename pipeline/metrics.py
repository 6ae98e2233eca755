"""Prometheus metrics and a health check for the daemon, served on one port (`run --metrics-port`), on the
loopback interface unless `--metrics-host` opens it (neither route takes a token)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)


class Metrics:
    """The daemon's counters and gauges, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.embedded = Counter(
            "pipeline_rows_embedded", "Rows embedded and written", ["table"], registry=self.registry
        )
        self.failed = Counter(
            "pipeline_rows_failed", "Rows moved to pipeline.failed", ["table"], registry=self.registry
        )
        self.retried = Counter(
            "pipeline_rows_retried", "Row failures that will be retried", ["table"], registry=self.registry
        )
        self.queue_depth = Gauge(
            "pipeline_queue_depth", "Rows waiting in pipeline.queue", ["table"], registry=self.registry
        )
        self.oldest_pending = Gauge(
            "pipeline_oldest_pending_seconds", "Age of the oldest queued row", ["table"], registry=self.registry
        )
        self.failed_rows = Gauge("pipeline_failed_rows", "Rows in pipeline.failed", ["table"], registry=self.registry)
        self.unscored_rows = Gauge(
            "pipeline_unscored_rows",
            "Embedded rows not yet scored by a classifier's active version",
            ["classifier"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "pipeline_batch_seconds",
            "Seconds per batch, claim to commit",
            ["table"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.model_load_seconds = Gauge(
            "pipeline_model_load_seconds", "Seconds the model took to load", registry=self.registry
        )
        self.last_loop = Gauge(
            "pipeline_last_loop_timestamp_seconds",
            "Unix time of the last successful drain loop",
            registry=self.registry,
        )

    def observe_batch(self, table: str, report: Any) -> None:
        self.embedded.labels(table).inc(report.embedded)
        self.failed.labels(table).inc(report.failed)
        self.retried.labels(table).inc(report.retried)
        self.batch_seconds.labels(table).observe(report.seconds)

    def observe_lag(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.queue_depth.labels(row["source"]).set(row["pending"])
            self.oldest_pending.labels(row["source"]).set(row["oldest_pending_s"] or 0)
            self.failed_rows.labels(row["source"]).set(row["failed"])

    def observe_classifiers(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.unscored_rows.labels(row["classifier"]).set(row["unscored"] or 0)


def serve(
    *,
    port: int,
    host: str = "127.0.0.1",
    metrics: Metrics,
    health: Callable[[], tuple[bool, dict[str, Any]]],
) -> ThreadingHTTPServer:
    """Serve `/metrics` and `/healthz` on a background thread; return the server (call `shutdown()`)."""
    from pipeline.api import is_loopback

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path.split("?")[0] == "/healthz":
                ok, detail = health()
                self._send(200 if ok else 503, json.dumps(detail).encode(), "application/json")
            else:
                self._send(404, b'{"error": "not found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: keep quiet
            logger.debug("http: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    logger.info("metrics and health on http://%s:%d/metrics and /healthz", host, server.server_address[1])
    if not is_loopback(host):
        # Queue depths and table names are not secrets, but they are nobody else's business either.
        logger.warning("/metrics and /healthz take no token and listen on %s: keep that port off the internet", host)
    return server


def loop_is_recent(last_loop: float | None, interval: float) -> bool:
    """The drain loop ran within three poll intervals (at least a minute)."""
    return last_loop is not None and time.time() - last_loop <= max(3 * interval, 60.0)
