"""The `pipeline` command: parses, builds settings, calls one handler, prints one-line errors.

The subcommands live in `pipeline.commands`, one module per noun, each adding its parsers beside its handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.commands import classifiers, db, documents, model, search, segments, serve, sources, sync
from pipeline.commands.common import Handler, build_parents
from pipeline.config import Settings, redact
from pipeline.errors import ConfigError, PipelineError

NOUNS = (db, sync, sources, documents, search, segments, classifiers, model, serve)
COMMANDS: dict[str, Handler] = {name: handler for noun in NOUNS for name, handler in noun.COMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Keep a PostgreSQL database's dores and documents embedded (MiniLM + pgvector) "
        "so that RAG is plain SQL. Without DATABASE_URL an embedded PostgreSQL is used.",
        epilog="Machine-readable output (--json, CSV) goes to stdout; logs and progress bars to stderr.",
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = build_parents()
    for noun in NOUNS:
        noun.register(sub, parents)
    return parser


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
    args = build_parser().parse_args(argv)
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
