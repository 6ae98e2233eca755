"""What every command module shares: the parent parsers, the connection, JSON output, small wording helpers."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.errors import InputError

Handler = Callable[[argparse.Namespace, Settings], int]
Subparsers = Any  # argparse's private _SubParsersAction, as `add_subparsers` returns it


@dataclasses.dataclass(frozen=True)
class Parents:
    """The options every subcommand inherits: `model` (model and logs) and `common` (those + the database's)."""

    model: argparse.ArgumentParser
    common: argparse.ArgumentParser


def build_parents() -> Parents:
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
    return Parents(model=model, common=common)


def source_option(parser: argparse.ArgumentParser, text: str, default: str | None = None) -> None:
    """`--source NAME` (old name `--table`)."""
    parser.add_argument("--source", "--table", dest="source", default=default, metavar="NAME", help=text)


def selected_sources(name: str | None) -> list[str] | None:
    """`--source NAME`: that source; none or `all`: every registered source (None)."""
    return None if name in (None, "all") else [name]


@contextlib.contextmanager
def connection(settings: Settings, *, migrated: bool = True) -> Iterator[Any]:
    """A connection to the settings' database, refused with a one-line error while migrations are pending."""
    from pipeline.db import connect, database_url
    from pipeline.migrations import require_current

    with connect(database_url(settings)) as conn:
        if migrated:
            require_current(conn)
        yield conn


@contextlib.contextmanager
def worker_connections(settings: Settings) -> Iterator[tuple[Any, Any]]:
    """A connection for claiming and embedding, and a spare one for writing the previous batch."""
    from pipeline.db import connect, database_url
    from pipeline.migrations import require_current

    url = database_url(settings)
    with connect(url) as conn, connect(url) as spare:
        require_current(conn)
        yield conn, spare


def query_embedder(conn: Any, settings: Settings) -> Any:
    """The database's model, for embedding a query (loaded when the query is embedded)."""
    from pipeline.model import database_embedder

    return database_embedder(conn, settings, require_recorded=True)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def json_object(raw: str, flag: str) -> dict[str, Any]:
    """A flag's value parsed as a JSON object, or a one-line error naming the flag."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"{flag} is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise InputError(f'{flag} must be a JSON object, e.g. \'{{"cliente": "acme"}}\'')
    return value


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 row`, `2 rows` (`words` where adding an s is wrong)."""
    return f"{count} {word if count == 1 else words or word + 's'}"


def one_line(text: str) -> str:
    """A multi-line text shown on one line: its line breaks as ` / `."""
    return " / ".join(part.strip() for part in str(text).splitlines() if part.strip())
