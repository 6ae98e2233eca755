"""The queue: `sync` and `run` drain it, `backfill` and `reembed` fill it, `status`, `failed`, `retry-failed`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from pipeline.commands.common import (
    Handler,
    Parents,
    Subparsers,
    connection,
    plural,
    print_json,
    selected_sources,
    source_option,
    worker_connections,
)
from pipeline.config import Settings
from pipeline.errors import InputError


def register(sub: Subparsers, parents: Parents) -> None:
    common = [parents.common]
    p = sub.add_parser("run", parents=common, help="daemon: embed new and changed rows as they arrive")
    p.add_argument("--interval", type=float, help="seconds between polls when no NOTIFY arrives (default 30)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics and /healthz on this port")
    p.add_argument(
        "--metrics-host",
        help="address of /metrics and /healthz, which take no token (default 127.0.0.1; 0.0.0.0: every interface)",
    )

    for name, text in (
        ("sync", "drain the queue once and exit"),
        ("backfill", "queue and embed rows whose vectors are missing or stale"),
    ):
        p = sub.add_parser(name, parents=common, help=text, description=text)
        source_option(p, "only this source (default: all)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        if name == "backfill":
            p.add_argument("--rebuild", action="store_true", help="re-embed every row, stale or not")

    p = sub.add_parser("reembed", parents=common, help="switch the database to another model and re-embed everything")
    p.add_argument("--force", action="store_true", help="re-embed every row even when the model is already the one")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("status", parents=common, help="model, rows, pending and failed per source")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("failed", parents=common, help="rows that exhausted their retries, with the reason")
    source_option(p, "only this source (default: all)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "retry-failed",
        parents=common,
        help="queue failed rows again (all, a source, or one --id); a running daemon retries them at once",
    )
    source_option(p, "only this source (default: all)")
    p.add_argument("--id", help="only the row with this key (with --source)")


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.progress import Progress
    from pipeline.worker import count_ready, prepare_worker

    with worker_connections(settings) as (conn, spare):
        worker = prepare_worker(conn, settings)
        sources = selected_sources(args.source)
        with Progress(count_ready(conn, sources), "sync") as progress:
            report = worker.drain(conn, sources, spare=spare, on_batch=progress)
    return _print_report(args, report, "sync")


def _print_report(args: argparse.Namespace, report: Any, what: str) -> int:
    if args.json:
        print_json(report.as_dict())
    else:
        print(
            f"{what}: embedded {plural(report.embedded, 'row')} ({plural(report.chunks, 'chunk')}), "
            f"{report.unchanged} unchanged, {report.deleted} gone, {report.retried} to retry, "
            f"{report.failed} failed in {report.seconds:.1f}s"
        )
    return 0


def cmd_backfill(args: argparse.Namespace, settings: Settings, embedder: Any = None) -> int:
    from pipeline.backfill import backfill
    from pipeline.progress import Progress
    from pipeline.worker import Worker, count_ready, prepare_worker

    sources = selected_sources(args.source)
    with worker_connections(settings) as (conn, spare):
        # `reembed` passes the model it has just loaded and recorded.
        worker = Worker(embedder=embedder, settings=settings) if embedder else prepare_worker(conn, settings)
        progress: list[Progress] = []
        try:
            report = backfill(
                conn, worker, sources=sources, rebuild=args.rebuild, bulk_index_from=settings.bulk_index_from,
                spare=spare, on_start=lambda total: progress.append(Progress(total, "backfill")),
                on_batch=lambda report: progress[0](report),
            )  # fmt: skip
        except KeyboardInterrupt:
            left = count_ready(conn, sources)
            print(
                f"interrupted: {plural(left, 'row')} still queued; run the same command again to continue",
                file=sys.stderr,
            )
            return 130
        finally:
            for bar in progress:
                bar.close()
    return _print_report(args, report, "backfill")


def cmd_reembed(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.model import load_embedder, recorded_model, resolve_model, switch_model

    if not settings.model and not settings.backend:
        raise InputError("reembed needs the new model or backend: pipeline reembed --model NAME [--backend onnx-int8]")
    with connection(settings) as conn:
        recorded, _ = recorded_model(conn)
    resolved = resolve_model(settings.model, recorded, backend=settings.backend)
    if not args.force and recorded is not None and resolved.identity == recorded:
        print(f"the database is already embedded with {recorded}: nothing to do (--force re-embeds every row)")
        return 0
    embedder = load_embedder(settings, resolved)
    with connection(settings) as conn:
        switch_model(conn, embedder)
    print(f"model switched to {embedder.name} ({embedder.dimension} dims); re-embedding every row")
    args.source, args.rebuild = None, True
    return cmd_backfill(args, dataclasses.replace(settings, model=resolved.name, backend=resolved.backend), embedder)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.daemon import Daemon
    from pipeline.db import database_url, require_session_connection
    from pipeline.migrations import require_current
    from pipeline.worker import Worker, prepare_worker

    def prepare(conn: Any) -> Worker:
        require_current(conn)
        return prepare_worker(conn, settings)

    url = database_url(settings)
    require_session_connection(url, "pipeline run")
    daemon = Daemon(settings=settings, url=url, metrics_port=args.metrics_port)
    daemon.install_signal_handlers()
    return daemon.serve(prepare)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.status import format_status, status

    with connection(settings, migrated=False) as conn:
        data = status(conn)
    if args.json:
        print_json(data)
    else:
        print(format_status(data))
    return 0


def cmd_failed(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.db import query

    source = None if args.source in (None, "all") else args.source
    with connection(settings) as conn:
        rows = conn.execute(query("list_failed"), {"source": source}).fetchall()
    if args.json:
        print_json(rows)
    elif not rows:
        print("no failed rows")
    else:
        for row in rows:
            when = f"{row['failed_at']:%Y-%m-%d %H:%M}"
            print(f"{row['source']} {row['row_id']}  ({plural(row['attempts'], 'attempt')}, {when})  {row['error']}")
    return 0


def cmd_retry_failed(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.daemon import CHANNEL
    from pipeline.db import query

    source = None if args.source in (None, "all") else args.source
    if args.id is not None and source is None:
        raise InputError("--id needs --source NAME (e.g. --source dores)")
    with connection(settings) as conn, conn.transaction():
        moved = conn.execute(query("retry_failed"), {"source": source, "row_id": args.id}).fetchall()
        # Wake a running daemon now (delivered at commit), as the queue's triggers do, not at its next poll.
        for name in sorted({row["source"] for row in moved}):
            conn.execute("select pg_notify(%s, %s)", (CHANNEL, name))
    if args.id is not None and not moved:
        raise InputError(f"{source} row {args.id} is not in pipeline.failed")
    them = "it" if len(moved) == 1 else "them"
    print(f"queued {plural(len(moved), 'failed row')} again; the daemon (or `pipeline sync`) retries {them}")
    return 0


COMMANDS: dict[str, Handler] = {
    "run": cmd_run,
    "sync": cmd_sync,
    "backfill": cmd_backfill,
    "reembed": cmd_reembed,
    "status": cmd_status,
    "failed": cmd_failed,
    "retry-failed": cmd_retry_failed,
}
