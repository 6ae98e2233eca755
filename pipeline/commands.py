"""What each `pipeline` command does: a thin handler per command, registered by name for `cli`."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.errors import InputError

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


def _sources(name: str | None) -> list[str] | None:
    """`--source NAME` (alias `--table`): that source; none or `all`: every registered source."""
    return None if name in (None, "all") else [name]  # type: ignore[list-item]


# -- commands ------------------------------------------------------------------------------------


@command("migrate")
def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.db import database_url, require_session_connection
    from pipeline.migrations import migrate

    require_session_connection(database_url(settings), "pipeline migrate")
    with _connection(settings, migrated=False) as conn:
        applied = migrate(conn)
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "; schema up to date"))
    return 0


@command("sync")
def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.progress import Progress
    from pipeline.worker import count_ready, prepare_worker

    with _worker_connections(settings) as (conn, spare):
        worker = prepare_worker(conn, settings)
        sources = _sources(args.source)
        with Progress(count_ready(conn, sources), "sync") as progress:
            report = worker.drain(conn, sources, spare=spare, on_batch=progress)
    return _print_report(args, report, "sync")


def _print_report(args: argparse.Namespace, report: Any, what: str) -> int:
    if args.json:
        _print_json(report.as_dict())
    else:
        print(
            f"{what}: embedded {report.embedded} rows ({report.chunks} chunks), {report.unchanged} unchanged, "
            f"{report.deleted} gone, {report.retried} to retry, {report.failed} failed in {report.seconds:.1f}s"
        )
    return 0


@command("backfill")
def cmd_backfill(args: argparse.Namespace, settings: Settings, embedder: Any = None) -> int:
    from pipeline.backfill import backfill
    from pipeline.progress import Progress
    from pipeline.worker import Worker, count_ready, prepare_worker

    sources = _sources(args.source)
    with _worker_connections(settings) as (conn, spare):
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
            print(f"interrupted: {left} rows still queued; run the same command again to continue", file=sys.stderr)
            return 130
        finally:
            for bar in progress:
                bar.close()
    return _print_report(args, report, "backfill")


@command("reembed")
def cmd_reembed(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.model import load_embedder, switch_model

    if not settings.model and not settings.backend:
        raise InputError("reembed needs the new model or backend: pipeline reembed --model NAME [--backend onnx-int8]")
    from pipeline.model import recorded_model, resolve_model

    with _connection(settings) as conn:
        recorded, _ = recorded_model(conn)
    resolved = resolve_model(settings.model, recorded, backend=settings.backend)
    if not args.force and recorded is not None and resolved.identity == recorded:
        print(f"the database is already embedded with {recorded}: nothing to do (--force re-embeds every row)")
        return 0
    embedder = load_embedder(settings, resolved)
    with _connection(settings) as conn:
        switch_model(conn, embedder)
    print(f"model switched to {embedder.name} ({embedder.dimension} dims); re-embedding every row")
    args.source, args.rebuild = None, True
    return cmd_backfill(args, dataclasses.replace(settings, model=resolved.name, backend=resolved.backend), embedder)


@command("run")
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


@command("failed")
def cmd_failed(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.db import query

    source = None if args.source in (None, "all") else args.source
    with _connection(settings) as conn:
        rows = conn.execute(query("list_failed"), {"source": source}).fetchall()
    if args.json:
        _print_json(rows)
    elif not rows:
        print("no failed rows")
    else:
        for row in rows:
            when = f"{row['failed_at']:%Y-%m-%d %H:%M}"
            print(f"{row['source']} {row['row_id']}  ({row['attempts']} attempts, {when})  {row['error']}")
    return 0


@command("retry-failed")
def cmd_retry_failed(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.db import query

    source = None if args.source in (None, "all") else args.source
    if args.id is not None and source is None:
        raise InputError("--id needs --source NAME (e.g. --source dores)")
    with _connection(settings) as conn, conn.transaction():
        moved = conn.execute(query("retry_failed"), {"source": source, "row_id": args.id}).fetchall()
    if args.id is not None and not moved:
        raise InputError(f"{source} row {args.id} is not in pipeline.failed")
    print(f"queued {len(moved)} failed row(s) again; the daemon (or `pipeline sync`) retries them")
    return 0


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
    from pipeline.search import hybrid_available, search_source
    from pipeline.sources import load_sources

    filter_ = _json_object(args.filter, "--filter") if args.filter else None
    if not args.text.strip():
        raise InputError("the search text is empty")
    if args.k < 1:
        raise InputError(f"-k must be at least 1, got {args.k}")
    with _connection(settings) as conn:
        (source,) = load_sources(conn, [args.source])
        embedder = _query_embedder(conn, settings)
        hybrid = False if args.vector_only else (True if args.hybrid else hybrid_available(conn, source))
        rows = search_source(
            conn, embedder, source, args.text, k=args.k, hybrid=hybrid, filter=filter_, segmento=args.segmento
        )
    if not rows:
        print(f"no results in {source.name}" + (f" matching {args.filter}" if args.filter else ""), file=sys.stderr)
    if args.json:
        _print_json(rows)
        return 0
    for rank, row in enumerate(rows, 1):
        if source.chunked:
            title = row["title"] or f"{source.name} {row.get(source.chunk_key_column or '')}"
            print(f"{rank}. {_shown_score(row, hybrid)}  {title} [chunk {row['chunk_index']}]")
            print("   " + " ".join(row["content"].split())[:300])
            continue
        segment = f" [segmento {row['segmento']}]" if row.get("segmento") is not None else ""
        text = row.get("dor_base") or row.get("content") or ""
        print(f"{rank}. {_shown_score(row, hybrid)}{segment} #{row['id']} {' '.join(str(text).split())[:300]}")
        if row.get("solucao_graventum"):
            print(f"   -> {row['solucao_graventum']}")
    return 0


def _shown_score(row: dict[str, Any], hybrid: bool) -> str:
    """The number that explains the order: the RRF score of a hybrid search, else the cosine similarity."""
    if hybrid:
        return f"score {row['score']:.4f} (similarity {row['similarity']:.3f})"
    return f"{row['similarity']:.3f}"


def _json_object(raw: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"{flag} is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise InputError(f'{flag} must be a JSON object, e.g. \'{{"cliente": "acme"}}\'')
    return value


@command("embed")
def cmd_embed(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.model import load_embedder
    from pipeline.textio import parse_stdin

    if bool(args.stdin) == bool(args.csv):
        raise InputError("give exactly one of --stdin or --csv FILE")
    batch = getattr(args, "batch", None) or settings.batch_size
    if args.stdin:
        texts = parse_stdin(sys.stdin.read(), lines=args.lines)
        embedder = load_embedder(dataclasses.replace(settings, batch_size=batch))
        vectors = embedder.embed(texts)
        _print_json([{"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors, strict=True)])
        return 0
    from pipeline.csvio import open_csv

    _, rows = open_csv(Path(args.csv), (args.text_col,))
    records = [(row.get("id") or str(i), row.get(args.text_col) or "") for i, row in enumerate(rows)]
    if not records:
        raise InputError(f"{args.csv} has a header but no rows")
    empty = [i for i, text in records if not text.strip()]
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        logger.warning(
            "%d rows have an empty %s (ids %s): written with a null embedding", len(empty), args.text_col, shown
        )
    embedder = load_embedder(dataclasses.replace(settings, batch_size=batch))
    from tqdm import tqdm

    out: list[dict[str, Any]] = []
    step = max(batch * 16, 512)  # texts sorted by token count together
    with tqdm(total=len(records), desc="embed", unit="texts", file=sys.stderr) as bar:
        for start in range(0, len(records), step):
            part = records[start : start + step]
            filled = [text for _, text in part if text.strip()]
            vectors = iter(embedder.embed(filled) if filled else [])
            out.extend(
                {"id": _id(i), "text": t, "embedding": next(vectors).tolist() if t.strip() else None} for i, t in part
            )
            bar.update(len(part))
    if args.out in (None, "-"):
        _print_json(out)
    else:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(out, handle, ensure_ascii=False)
        print(f"wrote {len(out)} embeddings ({embedder.name}, {embedder.dimension} dims) to {args.out}")
    return 0


def _id(value: str) -> int | str:
    return int(value) if value.isdigit() else value


@command("import-docs")
def cmd_import_docs(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.db import query
    from pipeline.textio import document_paths, read_document

    metadata = _json_object(args.metadata, "--metadata") if args.metadata else None
    documents = [read_document(path, metadata) for path in document_paths(args.paths)]
    with _connection(settings) as conn, conn.transaction():
        for doc in documents:
            conn.execute(query("insert_document"), {**doc, "metadata": json.dumps(doc["metadata"], ensure_ascii=False)})
    print(f"imported {len(documents)} documents; `pipeline sync` (or the daemon) chunks and embeds them")
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
        result = fit_database(
            conn, source=args.source, clusters=clusters, method=args.method, max_features=args.max_features
        )
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
        rows = list_segments(conn, source=args.source)
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

    if not args.text.strip():
        raise InputError("the text to classify is empty")
    with _connection(settings) as conn:
        embedder = _query_embedder(conn, settings)
        result = classify(conn, embedder, args.text, source=args.source)
    if args.json:
        _print_json(result)
    else:
        print(f"segmento {result['segmento']}: {result['label']} (similarity {result['similarity']:.3f})")
    return 0


def _query_embedder(conn: Any, settings: Settings) -> Any:
    """The database's model, for embedding a query (loaded when the query is embedded)."""
    from pipeline.model import database_embedder

    return database_embedder(conn, settings, require_recorded=True)


@command("serve")
def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from pipeline.api import create_app, is_loopback
    from pipeline.db import database_url
    from pipeline.model import database_model, load_embedder

    if not is_loopback(args.host) and not settings.api_token:
        raise InputError(f"refusing to serve on {args.host} without PIPELINE_API_TOKEN (loopback hosts only)")
    url = database_url(settings)
    with _connection(settings) as conn:
        resolved = database_model(conn, settings)
    embedder = load_embedder(settings, resolved)
    app = create_app(settings=settings, url=url, embedder=embedder)
    logger.info("serving on http://%s:%d (OpenAPI at /openapi.json)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


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


@command("source")
def cmd_source(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.source_admin import add_source, follow_parent, remove_source
    from pipeline.sources import load_sources

    with _connection(settings) as conn:
        if args.action == "add":
            metadata = [c.strip() for c in args.metadata.split(",") if c.strip()] if args.metadata else None
            source, queued = add_source(
                conn,
                name=args.name,
                table=args.table,
                text=args.text,
                chunked=args.chunked,
                metadata=metadata,
                language=args.language,
                backfill=not args.no_backfill,
                chunks_follow_parent=args.chunks_follow_parent,
            )
            print(
                f"source {source.name}: {source.kind} source on {source.qualified} (key {source.key_column} "
                f"{source.key_type}), reads {', '.join(source.text_columns)}; {queued} rows queued; "
                f"search with public.{source.search_function}(query_embedding, match_count)"
            )
        elif args.action == "list":
            sources = load_sources(conn)
            if args.json:
                _print_json([dataclasses.asdict(s) for s in sources])
            else:
                for s in sources:
                    key = f"{s.key_column} ({s.key_type})"
                    print(f"{s.name:<16} {s.kind:<8} {s.qualified:<28} key {key:<16} {s.text_expression}")
        elif args.action == "follow-parent":
            roles = [r.strip() for r in args.roles.split(",") if r.strip()]
            result = follow_parent(conn, args.name, roles=roles, off=args.off)
            if args.json:
                _print_json(result)
            elif args.off:
                print(f'{result["table"]}: policy "chunks follow their parent" dropped')
            else:
                print(
                    f'{result["table"]}: policy "{result["policy"]}" for {", ".join(result["roles"])}: a chunk is'
                    f" visible exactly when its row of {args.name} is"
                )
            for warning in result.get("warnings", []):
                logger.warning("%s", warning)
        else:
            removed = remove_source(conn, args.name, drop_columns=args.drop_columns)
            print(
                f"source {args.name} removed: triggers, search function"
                + (", chunks" if removed.get("chunked") else "")
                + f" and {removed['queued_dropped']} queued rows dropped"
                + ("; vector columns dropped" if args.drop_columns else "")
            )
    return 0


@command("model")
def cmd_model(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.model import DEFAULT_MODEL, download_model

    name = args.name or DEFAULT_MODEL
    print(f"{name}: {download_model(name)}")
    return 0
