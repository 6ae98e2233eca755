"""Apply the numbered files of `pipeline/sql/` once each, in order, under an advisory lock, with checksums."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path

import psycopg

from pipeline.db import Connection, register_vector, translate_errors
from pipeline.errors import MigrationError
from pipeline.source_admin import refresh_search_functions

logger = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process that migrates this database.
_LOCK_KEY = 0x70_69_70_65  # "pipe"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# Earlier checksums of released files whose text moved between files without changing the schema they
# leave behind (RAG functions consolidated into 0001). A database migrated with them is current; the
# repeatable files bring every function to its latest definition either way.
SUPERSEDED = {
    "0001_init.sql": {"acc1f415eff8132271989ce61c7454cf2fa2b5430be8a60c55e7b169615912e7"},
    "0002_segments.sql": {
        "4dcb12ae1a969b3a311e20a9dab1482f1a3e89d086af0a95accc2d5db413cdb9",
        "69df6d980611b8edc3eebcc3a61d6ccf2d7f02bbc3c4c6d6041b9bf2a5fbf7d8",
    },
    "0003_hybrid_search.sql": {"337e817c944081d32b4f559794dcc66f82004c711183060fc741e99224a64190"},
}

ENABLE_VECTOR = (
    "the vector extension is not enabled and this role may not create it ({reason}); on Supabase: "
    "Dashboard → Database → Extensions → vector, or `create extension vector with schema extensions` "
    "in the SQL editor; elsewhere a superuser runs `create extension vector`"
)


@dataclasses.dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def sql_dir() -> Path:
    """The package's own `sql/` (installed with it: a wheel migrates from any directory), or `PIPELINE_SQL_DIR`."""
    override = os.environ.get("PIPELINE_SQL_DIR")
    return Path(override) if override else Path(__file__).resolve().parent / "sql"


def repeatable(directory: Path | None = None) -> list[Migration]:
    """The files of `sql/repeatable/`: applied by every `migrate`, after the numbered ones."""
    directory = (directory or sql_dir()) / "repeatable"
    return [Migration(p.name, p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.sql"))]


def checksummed(directory: Path | None = None) -> list[Migration]:
    """What `migrate` applies every time: the repeatable files and the search functions' template."""
    directory = directory or sql_dir()
    templates = sorted((directory / "templates").glob("*.sql"))
    return repeatable(directory) + [Migration(f"templates/{p.name}", p.read_text(encoding="utf-8")) for p in templates]


def load(directory: Path | None = None) -> list[Migration]:
    """The migration files in order; a misnamed or duplicated number is an error."""
    directory = directory or sql_dir()
    if not directory.is_dir():
        raise MigrationError(f"migrations directory not found: {directory}")
    found: list[Migration] = []
    numbers: set[str] = set()
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        if match.group(1) in numbers:
            raise MigrationError(f"{path.name}: migration number {match.group(1)} is used twice")
        numbers.add(match.group(1))
        found.append(Migration(path.name, path.read_text(encoding="utf-8")))
    return found


def migrate(conn: Connection, directory: Path | None = None) -> list[str]:
    """Apply what is missing; return the names applied. Safe to run from several processes at once.

    `conn` must be in autocommit mode: each file runs in its own transaction.
    """
    migrations = load(directory)
    applied_now: list[str] = []
    with translate_errors():
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            ensure_vector(conn)
            conn.execute("create schema if not exists pipeline")
            conn.execute(
                "create table if not exists pipeline.migrations ("
                " name text primary key, checksum text not null,"
                " applied_at timestamptz not null default now())"
            )
            rows = conn.execute("select name, checksum from pipeline.migrations").fetchall()
            applied = {row["name"]: row["checksum"] for row in rows}
            for migration in migrations:
                previous = applied.get(migration.name)
                if previous is not None:
                    if previous != migration.checksum and previous not in SUPERSEDED.get(migration.name, ()):
                        raise MigrationError(
                            f"sql/{migration.name} changed after it was applied to this database; "
                            "released migrations are never edited: put the change in a new numbered file"
                        )
                    continue
                logger.info("applying %s", migration.name)
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "insert into pipeline.migrations (name, checksum) values (%s, %s)",
                        (migration.name, migration.checksum),
                    )
                applied_now.append(migration.name)
            # Functions, views, triggers and every source's search functions change together: no search runs
            # against half of a new version.
            with conn.transaction():
                for migration in repeatable(directory):
                    conn.execute(migration.sql.encode())
                refresh_search_functions(conn)
                # Remembered, so that code whose repeatable files changed asks for `migrate` (`pending`).
                checksums = {f"repeatable:{m.name}": m.checksum for m in checksummed(directory)}
                conn.execute(
                    "delete from pipeline.state where starts_with(key, 'repeatable:') and not key = any(%s)",
                    (list(checksums),),
                )
                for key, checksum in checksums.items():
                    conn.execute(
                        "insert into pipeline.state (key, value) values (%s, %s)"
                        " on conflict (key) do update set value = excluded.value, updated_at = now()",
                        (key, checksum),
                    )
            unknown = sorted(set(applied) - {m.name for m in migrations})
            if unknown:
                logger.warning("the database has migrations this code does not know: %s", ", ".join(unknown))
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))
    register_vector(conn)
    return applied_now


def ensure_vector(conn: Connection) -> None:
    """Create the vector extension if it is missing (in schema `extensions` where that exists, as on
    Supabase); when this role may not, fail before anything else changes, saying how to enable it."""
    if conn.execute("select 1 from pg_extension where extname = 'vector'").fetchone():
        return
    has_extensions_schema = conn.execute("select 1 from pg_namespace where nspname = 'extensions'").fetchone()
    statement = "create extension if not exists vector" + (" with schema extensions" if has_extensions_schema else "")
    try:
        with conn.transaction():
            conn.execute(statement.encode())
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.FeatureNotSupported) as exc:
        raise MigrationError(ENABLE_VECTOR.format(reason=str(exc).strip().splitlines()[0])) from exc
    except psycopg.errors.UndefinedFile as exc:  # the server has no pgvector installed at all
        raise MigrationError(
            "pgvector is not installed on this PostgreSQL server: install the pgvector package for this "
            "PostgreSQL version, or use the embedded server (unset DATABASE_URL)"
        ) from exc
    logger.info("created extension vector")


def pending(conn: Connection, directory: Path | None = None) -> list[str]:
    """Names of migrations not yet applied (all of them on a database never migrated), and of repeatable
    files that are new or changed since the last `migrate` (`repeatable/functions.sql`, ...)."""
    names = [m.name for m in load(directory)]
    with translate_errors():
        exists = conn.execute("select to_regclass('pipeline.migrations') is not null as ok").fetchone()
        if not exists or not exists["ok"]:
            return names
        done = {row["name"] for row in conn.execute("select name from pipeline.migrations")}
        applied = {
            row["key"].removeprefix("repeatable:"): row["value"]
            for row in conn.execute("select key, value from pipeline.state where starts_with(key, 'repeatable:')")
        }
    missing = [name for name in names if name not in done]
    return missing + [
        m.name if m.name.startswith("templates/") else f"repeatable/{m.name}"
        for m in checksummed(directory)
        if applied.get(m.name) != m.checksum
    ]


def require_current(conn: Connection) -> None:
    """Refuse to work on a database whose schema is behind the code."""
    missing = pending(conn)
    if missing:
        raise MigrationError(f"the database needs migrations ({', '.join(missing)}): run `pipeline migrate`")
