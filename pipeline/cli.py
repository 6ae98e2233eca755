"""The `pipeline` command: parses, builds settings, calls one function, prints one-line errors."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import __version__
from pipeline.commands import COMMANDS
from pipeline.commands_classifiers import cmd_classifier  # noqa: F401  (registers classifier, score)
from pipeline.config import Settings, redact
from pipeline.errors import ConfigError, PipelineError

# -- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # Options of the model and the logs, for every command; `common` adds the database's.
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", help="model name or local directory (default: as recorded in the database)")
    model.add_argument("--device", help="torch device: cpu, cuda, mps (default: best available)")
    model.add_argument(
        "--backend",
        choices=["torch", "onnx-int8"],
        help="what runs the model: torch, or onnx-int8 (about 2x faster on CPUs; default: as recorded, else torch)",
    )
    model.add_argument("--batch-size", type=int, help="texts per forward pass (default 32)")
    model.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    model.add_argument("--log-format", choices=["text", "json"], default="text", help="log lines as text or JSON")
    common = argparse.ArgumentParser(add_help=False, parents=[model])
    common.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL, else the embedded server)")
    common.add_argument("--data-dir", type=Path, help="embedded server's directory (default: $PIPELINE_DATA_DIR)")

    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Keep a PostgreSQL database's dores and documents embedded (MiniLM + pgvector) "
        "so that RAG is plain SQL. Without DATABASE_URL an embedded PostgreSQL is used.",
        epilog="Machine-readable output (--json, CSV) goes to stdout; logs and progress bars to stderr.",
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("migrate", parents=[common], help="create or update the schema (pipeline/sql/NNNN_*.sql, each once)")

    p = sub.add_parser("run", parents=[common], help="daemon: embed new and changed rows as they arrive")
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
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        _source_option(p, "only this source (default: all)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        if name == "backfill":
            p.add_argument("--rebuild", action="store_true", help="re-embed every row, stale or not")

    p = sub.add_parser("reembed", parents=[common], help="switch the database to another model and re-embed everything")
    p.add_argument("--force", action="store_true", help="re-embed every row even when the model is already the one")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("failed", parents=[common], help="rows that exhausted their retries, with the reason")
    _source_option(p, "only this source (default: all)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("retry-failed", parents=[common], help="queue failed rows again (all, a source, or one --id)")
    _source_option(p, "only this source (default: all)")
    p.add_argument("--id", help="only the row with this key (with --source)")

    p = sub.add_parser("status", parents=[common], help="model, rows, pending and failed per source")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "search",
        parents=[common],
        help="the rows (or chunks) of a source that best match a text: words and meaning",
        description="Embeds the text with the database's model and calls the source's SQL search function. By "
        "default that is hybrid search (match_dores_hybrid, match_documents_hybrid, match_<source>_hybrid): the "
        "rows that share the text's words, ranked by how rare those words are, in the source's full-text "
        "language, fused with the nearest vectors by reciprocal rank fusion; each result shows the RRF score that "
        "orders it and its cosine similarity. --vector-only ranks by the vectors alone (match_dores, ...). "
        "Prints the results, or JSON with --json; `no results` on stderr when nothing matches.",
    )
    p.add_argument("text")
    _source_option(p, "the source to search (default: dores)", default="dores")
    p.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    p.add_argument("--segmento", type=int, help="sources with segments (dores): only this segment")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--vector-only", action="store_true", help="rank by vector similarity alone")
    mode.add_argument("--hybrid", action="store_true", help="hybrid search (the default), an error where unavailable")
    p.add_argument("--filter", help="chunked sources: JSON object the chunk metadata must contain")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "embed",
        parents=[model],
        help="print embeddings as JSON (no database): --stdin, or --csv FILE --text-col COL --out F.json",
        description="n8n Execute Command compatible. `echo texto | pipeline embed --stdin` prints "
        '[{"text", "embedding"}]; stdin may also be {"text": ...} or {"texts": [...]}, or one text per line '
        'with --lines. `--csv F --text-col dor_base --out F.json` writes [{"id", "text", "embedding"}].',
    )
    p.add_argument("--stdin", action="store_true", help="read the text(s) from standard input")
    p.add_argument("--lines", action="store_true", help="with --stdin: one text per line")
    p.add_argument("--csv", help="CSV file to embed")
    p.add_argument("--text-col", default="dor_base", help="CSV column to embed (default dor_base)")
    p.add_argument("--out", help="JSON file to write (default: stdout)")
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)  # the old scripts' name of --batch-size

    p = sub.add_parser(
        "import-docs",
        parents=[common],
        help="load .txt/.md files (or folders of them) as documents",
        description="Each file becomes one row of `documents` (title: the first Markdown heading, else the file "
        "name); the daemon or `pipeline sync` then chunks and embeds it. Search with `pipeline search TEXT "
        "--source documents`. Metadata (filter on it with --filter): each file's name and path, its YAML front "
        "matter (--- key: value ---), and --metadata.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--metadata", help='JSON object added to every document\'s metadata, e.g. \'{"tipo": "proposta"}\'')

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
    _source_option(p, "database mode: the row source to segment (default: dores)", default="dores")
    p.add_argument("--csv", help="CSV mode: input file with dor_base and solucao_graventum")
    p.add_argument("--out", help="CSV mode: output file (default: stdout, counts then go to stderr)")
    p.add_argument("--clusters", default="8", help="number of segments, or `auto` (database mode; 2..20 by silhouette)")
    p.add_argument("--max-features", type=int, default=500, help="TF-IDF vocabulary size (default 500)")
    p.add_argument(
        "--method", choices=["embedding", "tfidf"], default="embedding", help="database mode: what to cluster"
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("segments", parents=[common], help="list segments: number, label, size, top terms, examples")
    _source_option(p, "the source whose segments to list (default: dores)", default="dores")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("classify", parents=[common], help="which segment a text (a lead's pain) belongs to")
    p.add_argument("text")
    _source_option(p, "whose segments (default: dores)", default="dores")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="HTTP API for n8n and the app: /ml/embed, /ml/segmentar, /ml/classify, /ml/search, /healthz",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--public-docs",
        action="store_true",
        help="serve /docs, /redoc and /openapi.json without the token (default: they need it when one is set)",
    )
    p.add_argument(
        "--jwt-secret-env",
        metavar="VAR",
        help="environment variable holding the Supabase JWT secret (default PIPELINE_JWT_SECRET): a request with "
        "a user's JWT then runs as its role (anon, authenticated) under row-level security",
    )

    p = sub.add_parser("db", parents=[common], help="the embedded server: `db url` for psql, `db stop`")
    p.add_argument("action", choices=["url", "stop"])

    sub.add_parser("demo", parents=[common], help="migrate, load the sample dores, sync, search and show status")

    p = sub.add_parser(
        "model",
        parents=[model],
        help="`model download [NAME]`: fetch a model (default: the multilingual one) into the local cache",
        description="Downloads a sentence-transformers model from the Hugging Face hub into the local cache "
        "(HF_HOME), where every command then finds it without the network, and prints its directory. Default: "
        "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2, the Portuguese-capable default.",
    )
    p.add_argument("action", choices=["download"])
    p.add_argument("name", nargs="?", help="hub model name (default: the multilingual default)")

    p = sub.add_parser(
        "source",
        parents=[common],
        help="register any table as a source (add), list or remove sources; chunk visibility (follow-parent)",
        description="A source is a table with a primary key (bigint, integer, uuid or text) and the text the "
        "model reads: an SQL expression over its columns, or a comma-separated list of columns. A row source "
        "keeps its vector in the row (columns embedding, embedding_model, content_hash, embedded_at are added); "
        "a chunked source (--chunked) splits long texts into a table NAME_chunks. Each source gets triggers, "
        "an HNSW index and a SQL search function public.match_NAME. A running daemon picks changes up by itself.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", parents=[common], help="register a table as a source")
    add.add_argument("name", help="the source's name: lowercase letters, digits and _ (e.g. leads)")
    add.add_argument("--table", required=True, help="SCHEMA.TABLE (or TABLE, in public)")
    add.add_argument("--text", required=True, help="SQL expression over the row's columns, or col1,col2,...")
    add.add_argument("--chunked", action="store_true", help="split long texts into chunks (a NAME_chunks table)")
    add.add_argument("--metadata", help="chunked: columns copied into each chunk's metadata (col1,col2)")
    add.add_argument("--language", default="portuguese", help="full-text configuration (default portuguese)")
    add.add_argument("--no-backfill", action="store_true", help="do not queue the rows already in the table")
    add.add_argument(
        "--chunks-follow-parent",
        action="store_true",
        help="chunked: a chunk is visible exactly when its row is, to every role (see `source follow-parent`)",
    )
    lst = actions.add_parser("list", parents=[common], help="the registered sources")
    lst.add_argument("--json", action="store_true")
    rm = actions.add_parser("remove", parents=[common], help="stop embedding a table; drop what the pipeline added")
    rm.add_argument("name")
    rm.add_argument("--drop-columns", action="store_true", help="also drop the vector columns of a row source")
    follow = actions.add_parser(
        "follow-parent",
        parents=[common],
        help="a chunk is visible exactly when its row is (a policy on the chunk table)",
        description='Puts the row-level security policy "chunks follow their parent" on a chunked source\'s table '
        "of chunks (documents: document_chunks): a chunk may be read when its row (the document) may be read by the "
        "same role, under that table's own policies, so policies are written once, on the table you know. "
        "A chunk's metadata follows its row in the same transaction whatever the policies; this makes its "
        "visibility follow too. Running it again replaces the policy.",
    )
    follow.add_argument("name", help="a chunked source (documents, or one added with --chunked)")
    follow.add_argument(
        "--roles",
        default="public",
        help="comma-separated roles the policy applies to (default: public, every role; on Supabase e.g. "
        "authenticated). Each needs SELECT on the source's table",
    )
    follow.add_argument("--off", action="store_true", help="drop the policy instead")
    follow.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "classifier",
        parents=[common],
        help="train classifiers (lead score, triage) from labelled rows; list, remove, score-all",
        description="A classifier learns a label (a column, or an SQL expression of the row) from the stored "
        "vectors of a row source's labelled rows: logistic regression, its regularisation chosen by "
        "cross-validation. It is kept in the database; the daemon scores every new or changed row of the source "
        "into pipeline.predictions, and SQL callers use public.predict(name, query_embedding).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train", parents=[common], help="train a new version and make it active (rescores every row)"
    )
    train.add_argument("name", help="the classifier's name: lowercase letters, digits and _ (e.g. lead)")
    train.add_argument("--source", required=True, metavar="SRC", help="the row source whose rows it learns from")
    train.add_argument("--label", required=True, help="column or SQL expression: each row's label (null: unlabelled)")
    train.add_argument("--positive", help="the class whose probability is the score (with more labels: it vs the rest)")
    train.add_argument("--no-score", action="store_true", help="do not score the source's rows now")
    train.add_argument("--json", action="store_true")
    lst = actions.add_parser("list", parents=[common], help="classifiers with their classes, metrics and lag")
    lst.add_argument("--json", action="store_true")
    rm = actions.add_parser("remove", parents=[common], help="drop a classifier, its versions and predictions")
    rm.add_argument("name")
    sa = actions.add_parser("score-all", parents=[common], help="score the rows its active version has not scored")
    sa.add_argument("name")

    p = sub.add_parser(
        "score",
        parents=[common],
        help="a classifier's label and probabilities for texts (n8n): TEXT, --stdin or --csv",
        description='`pipeline score lead "texto"` prints the label and its probability (--json: '
        '{"text", "label", "probability", "probabilities"}). --stdin reads a text, {"text"} or {"texts"} '
        "(--lines: one per line) and prints a JSON list. --csv F --text-col C --out G adds label and probability "
        "columns.",
    )
    p.add_argument("name", help="the classifier")
    p.add_argument("text", nargs="?", help="the text to score")
    p.add_argument("--stdin", action="store_true", help="read the text(s) from standard input")
    p.add_argument("--lines", action="store_true", help="with --stdin: one text per line")
    p.add_argument("--csv", help="CSV file to score")
    p.add_argument("--text-col", default="text", help="CSV column to score (default text)")
    p.add_argument("--out", help="CSV file to write (default: stdout)")
    p.add_argument("--json", action="store_true")
    return parser


def _source_option(p: argparse.ArgumentParser, text: str, default: str | None = None) -> None:
    p.add_argument("--source", "--table", dest="source", default=default, metavar="NAME", help=text)


def _secret_from(variable: str | None) -> str | None:
    """The value of the environment variable a flag names (secrets stay off the command line)."""
    if variable is None:
        return None
    value = os.environ.get(variable, "").strip()
    if not value:
        raise ConfigError(f"--jwt-secret-env {variable}: that environment variable is not set")
    return value


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
        "database_url": getattr(args, "database_url", None),
        "data_dir": getattr(args, "data_dir", None),
        "model": args.model,
        "device": args.device,
        "backend": args.backend,
        "batch_size": args.batch_size,
        "interval": getattr(args, "interval", None),
        "metrics_host": getattr(args, "metrics_host", None),
        "api_public_docs": getattr(args, "public_docs", False) or None,
    }
    try:
        overrides["jwt_secret"] = _secret_from(getattr(args, "jwt_secret_env", None))
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
