"""The `pipeline` command: parses, builds settings, calls one function, prints one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.config import Settings, redact
from pipeline.errors import InputError, PipelineError

logger = logging.getLogger("pipeline")

Handler = Callable[[argparse.Namespace, Settings], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = handler
        return handler

    return register


# -- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _connection(settings: Settings, *, migrated: bool = True) -> Iterator[Any]:
    from pipeline.db import connect, database_url
    from pipeline.migrations import require_current

    with connect(database_url(settings)) as conn:
        if migrated:
            require_current(conn)
        yield conn


@contextlib.contextmanager
def _worker_connections(settings: Settings) -> Iterator[tuple[Any, Any]]:
    """A connection for claiming and embedding, and a spare one for writing the previous batch."""
    from pipeline.db import connect, database_url
    from pipeline.migrations import require_current

    url = database_url(settings)
    with connect(url) as conn, connect(url) as spare:
        require_current(conn)
        yield conn, spare


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _sources(table: str) -> tuple[str, ...]:
    return ("dores", "documents") if table == "all" else (table,)


class _Progress:
    """A tqdm bar on stderr fed by batch reports (rows/s and ETA come from tqdm)."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="rows", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def __call__(self, report: Any) -> None:
        self.bar.update(report.claimed)

    def close(self) -> None:
        self.bar.close()


# -- commands ------------------------------------------------------------------------------------


@command("migrate")
def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.migrations import migrate

    with _connection(settings, migrated=False) as conn:
        applied = migrate(conn)
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "; schema up to date"))
    return 0


@command("sync")
def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.sync import prepare_worker

    with _worker_connections(settings) as (conn, spare):
        worker = prepare_worker(conn, settings)
        report = worker.drain(conn, _sources(args.table), spare=spare)
    if args.json:
        _print_json(report.as_dict())
    else:
        print(
            f"embedded {report.embedded} rows ({report.chunks} chunks), {report.unchanged} unchanged, "
            f"{report.deleted} gone, {report.retried} to retry, {report.failed} failed in {report.seconds:.1f}s"
        )
    return 0


@command("backfill")
def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.sync import count_ready, prepare_worker, queue_stale

    sources = _sources(args.table)
    with _worker_connections(settings) as (conn, spare):
        worker = prepare_worker(conn, settings)
        queued = queue_stale(conn, sources=sources, model=worker.embedder.name, rebuild=args.rebuild)
        total = count_ready(conn, sources)
        logger.info("backfill: %d rows newly queued, %d ready to process", queued, total)
        progress = _Progress(total, "backfill")
        try:
            report = worker.drain(conn, sources, spare=spare, on_batch=progress)
        except KeyboardInterrupt:
            progress.close()
            left = count_ready(conn, sources)
            print(f"interrupted: {left} rows still queued; run the same command again to continue", file=sys.stderr)
            return 130
        progress.close()
    if args.json:
        _print_json(report.as_dict())
    else:
        print(
            f"backfill: embedded {report.embedded} rows ({report.chunks} chunks), {report.unchanged} unchanged, "
            f"{report.failed} failed, {report.retried} to retry, in {report.seconds:.1f}s"
        )
    return 0


@command("reembed")
def cmd_reembed(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.embedding import SentenceTransformerEmbedder, resolve_model
    from pipeline.sync import switch_model

    with _connection(settings) as conn:
        embedder = SentenceTransformerEmbedder(
            model=resolve_model(args.model),
            device=settings.device,
            batch_size=settings.batch_size,
            max_chars=settings.max_chars,
        )
        switch_model(conn, embedder)
    print(f"model switched to {embedder.name} ({embedder.dimension} dims); re-embedding every row")
    args.table, args.rebuild = "all", True
    return cmd_backfill(args, Settings.load({**vars_settings(settings), "model": embedder.name}))


def vars_settings(settings: Settings) -> dict[str, Any]:
    import dataclasses

    return {field.name: getattr(settings, field.name) for field in dataclasses.fields(settings)}


@command("run")
def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.daemon import Daemon
    from pipeline.db import database_url
    from pipeline.migrations import require_current
    from pipeline.sync import Worker, prepare_worker

    def prepare(conn: Any) -> Worker:
        require_current(conn)
        return prepare_worker(conn, settings)

    daemon = Daemon(settings=settings, url=database_url(settings))
    daemon.install_signal_handlers()
    return daemon.serve(prepare)


@command("status")
def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.status import format_status, status

    with _connection(settings, migrated=False) as conn:
        data = status(conn)
    if args.json:
        _print_json(data)
    else:
        print(format_status(data))
    return 0


@command("search")
def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.search import search_dores

    with _connection(settings) as conn:
        embedder = _query_embedder(conn, settings)
        rows = search_dores(conn, embedder, args.text, k=args.k, segmento=args.segmento)
    if args.json:
        _print_json(rows)
    else:
        for rank, row in enumerate(rows, 1):
            segment = f" [segmento {row['segmento']}]" if row["segmento"] is not None else ""
            print(f"{rank}. {row['similarity']:.3f}{segment} #{row['id']} {row['dor_base']}")
            if row["solucao_graventum"]:
                print(f"   -> {row['solucao_graventum']}")
    return 0


@command("import-csv")
def cmd_import_csv(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.csvio import import_dores

    if args.table != "dores":
        raise InputError("import-csv loads dores; use `pipeline import-docs` for documents")
    with _connection(settings) as conn:
        report = import_dores(conn, Path(args.file))
    print(
        f"imported {report.inserted} dores"
        + (f", skipped {report.skipped_empty} with an empty dor_base" if report.skipped_empty else "")
    )
    return 0


@command("export-csv")
def cmd_export_csv(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.csvio import export_dores

    with _connection(settings) as conn:
        if args.out in (None, "-"):
            count = export_dores(conn, sys.stdout)  # type: ignore[arg-type]
        else:
            with open(args.out, "w", encoding="utf-8", newline="") as handle:
                count = export_dores(conn, handle)
    print(f"exported {count} dores", file=sys.stderr)
    return 0


@command("segment")
def cmd_segment(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.segments import fit_database, segment_csv

    if args.csv:
        if args.clusters == "auto":
            raise InputError("--clusters auto works on the database; CSV mode takes a number")
        frame, counts = segment_csv(Path(args.csv), clusters=_clusters(args.clusters), max_features=args.max_features)
        report = sys.stdout if args.out else sys.stderr
        if args.out:
            frame.to_csv(args.out, index=False)
        else:
            frame.to_csv(sys.stdout, index=False)
        for number, size in counts.items():
            print(f"segmento {number}: {size}", file=report)
        return 0
    clusters: int | str = "auto" if args.clusters == "auto" else _clusters(args.clusters)
    with _connection(settings) as conn:
        result = fit_database(conn, clusters=clusters, method=args.method, max_features=args.max_features)
    if args.json:
        _print_json(result.as_dict())
    else:
        print(
            f"{result.method} K={result.k} over {result.n_rows} dores in {result.seconds:.1f}s "
            f"(silhouette {result.score}); {result.changed} rows changed segment"
        )
        for info in result.segments:
            print(f"  {info.segmento:>3}  {info.size:>6}  {info.label}")
    return 0


def _clusters(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--clusters takes a number or auto, got {value!r}") from None


@command("segments")
def cmd_segments(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.segments import list_segments

    with _connection(settings) as conn:
        rows = list_segments(conn)
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            print(f"{row['segmento']:>3}  {row['size']:>6}  {row['label']}   [{', '.join(row['top_terms'])}]")
            for example in row["examples"]:
                print(f"        - {example}")
    return 0


@command("classify")
def cmd_classify(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.segments import classify

    with _connection(settings) as conn:
        embedder = _query_embedder(conn, settings)
        result = classify(conn, embedder, args.text)
    if args.json:
        _print_json(result)
    else:
        print(f"segmento {result['segmento']}: {result['label']} (similarity {result['similarity']:.3f})")
    return 0


def _query_embedder(conn: Any, settings: Settings) -> Any:
    """The database's model, for embedding a query."""
    from pipeline.embedding import SentenceTransformerEmbedder, resolve_model
    from pipeline.sync import check_model, recorded_model

    recorded, _ = recorded_model(conn)
    if recorded is None:
        raise PipelineError("nothing is embedded yet: run `pipeline sync` first")
    resolved = resolve_model(settings.model, recorded)
    check_model(conn, resolved.name)
    return SentenceTransformerEmbedder(model=resolved, device=settings.device)


@command("db")
def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.db import database_url, stop_embedded

    if args.action == "url":
        print(database_url(settings))
    elif args.action == "stop":
        if settings.database_url:
            raise InputError("DATABASE_URL is set: there is no embedded server to stop")
        print("stopped" if stop_embedded(settings.data_dir) else "not running")
    return 0


@command("demo")
def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.demo import run_demo

    return run_demo(settings)


# -- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL, else the embedded server)")
    common.add_argument("--data-dir", type=Path, help="embedded server's directory (default: $PIPELINE_DATA_DIR)")
    common.add_argument("--model", help="model name or local directory (default: as recorded in the database)")
    common.add_argument("--device", help="torch device: cpu, cuda, mps (default: best available)")
    common.add_argument("--batch-size", type=int, help="texts per model call (default 64)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("--log-format", choices=["text", "json"], default="text", help="log lines as text or JSON")

    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Keep a PostgreSQL database's dores and documents embedded (MiniLM + pgvector) "
        "so that RAG is plain SQL. Without DATABASE_URL an embedded PostgreSQL is used.",
        epilog="Machine-readable output (--json, CSV) goes to stdout; logs and progress bars to stderr.",
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("migrate", parents=[common], help="create or update the schema (sql/NNNN_*.sql, each once)")

    p = sub.add_parser("run", parents=[common], help="daemon: embed new and changed rows as they arrive")
    p.add_argument("--interval", type=float, help="seconds between polls when no NOTIFY arrives (default 30)")

    for name, text in (
        ("sync", "drain the queue once and exit"),
        ("backfill", "queue and embed rows whose vectors are missing or stale"),
    ):
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.add_argument("--table", choices=["dores", "documents", "all"], default="all")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        if name == "backfill":
            p.add_argument("--rebuild", action="store_true", help="re-embed every row, stale or not")

    p = sub.add_parser("reembed", parents=[common], help="switch the database to another model and re-embed everything")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("status", parents=[common], help="model, rows, pending and failed per table")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("search", parents=[common], help="dores nearest to a text, through match_dores")
    p.add_argument("text")
    p.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    p.add_argument("--segmento", type=int, help="only this segment")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("import-csv", parents=[common], help="load a CSV of dores (dor_base, solucao_graventum, ...)")
    p.add_argument("file")
    p.add_argument("--table", default="dores", choices=["dores"])

    p = sub.add_parser("export-csv", parents=[common], help="write dores with their segmento as CSV")
    p.add_argument("--table", default="dores", choices=["dores"])
    p.add_argument("--out", help="file to write (default: stdout)")

    p = sub.add_parser(
        "segment",
        parents=[common],
        help="fit segments (KMeans) over the database's dores, or add `segmento` to a CSV (--csv)",
        description="Database mode (default): fit over all embedded dores, store the model and update "
        "dores.segmento in one transaction; numbers stay stable across refits. CSV mode (--csv): the seed's "
        "TF-IDF + KMeans on dor_base + ' ' + solucao_graventum, no database needed.",
    )
    p.add_argument("--csv", help="CSV mode: input file with dor_base and solucao_graventum")
    p.add_argument("--out", help="CSV mode: output file (default: stdout, counts then go to stderr)")
    p.add_argument("--clusters", default="8", help="number of segments, or `auto` (database mode; 2..20 by silhouette)")
    p.add_argument("--max-features", type=int, default=500, help="TF-IDF vocabulary size (default 500)")
    p.add_argument(
        "--method", choices=["embedding", "tfidf"], default="embedding", help="database mode: what to cluster"
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("segments", parents=[common], help="list segments: number, label, size, top terms, examples")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("classify", parents=[common], help="which segment a text (a lead's pain) belongs to")
    p.add_argument("text")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("db", parents=[common], help="the embedded server: `db url` for psql, `db stop`")
    p.add_argument("action", choices=["url", "stop"])

    sub.add_parser("demo", parents=[common], help="migrate, load the sample dores, sync, search and show status")
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if getattr(args, "log_format", "text") == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("pipeline").setLevel(level)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": redact(record.getMessage()),
            },
            ensure_ascii=False,
        )


def main(argv: Sequence[str] | None = None) -> int:
    # Quiet the model libraries' own progress bars and advice; our logs say what happened.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    overrides = {
        "database_url": args.database_url,
        "data_dir": args.data_dir,
        "model": args.model,
        "device": args.device,
        "batch_size": args.batch_size,
        "interval": getattr(args, "interval", None),
    }
    try:
        settings = Settings.load(overrides)
        return COMMANDS[args.command](args, settings)
    except PipelineError as exc:
        print(f"pipeline: error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pipeline: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
