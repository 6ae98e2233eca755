"""The database itself: `migrate`, `db url|psql|stop` (the embedded server) and `demo`."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import threading
import warnings
from pathlib import Path

from pipeline.commands.common import Handler, Parents, Subparsers, connection
from pipeline.config import Settings
from pipeline.errors import ConfigError, InputError


def register(sub: Subparsers, parents: Parents) -> None:
    sub.add_parser(
        "migrate", parents=[parents.common], help="create or update the schema (pipeline/sql/NNNN_*.sql, each once)"
    )
    p = sub.add_parser(
        "db",
        parents=[parents.common],
        help="the database: `db psql` opens psql on it, `db url` prints its URL, `db stop` stops the embedded server",
        description="`db psql [-- PSQL ARGS]` runs psql against the current database (DATABASE_URL, else the "
        "embedded server): the psql that ships with the embedded server, else the one on PATH; e.g. "
        "`pipeline db psql -- -c 'select * from pipeline.lag'`. `db url` prints the URL (psql \"$(pipeline db url)\"). "
        "`db stop` stops the embedded server (it keeps running between commands).",
    )
    p.add_argument("action", choices=["url", "psql", "stop"])
    p.add_argument("psql_args", nargs="*", metavar="PSQL_ARG", help="after --: passed on to psql (db psql)")
    sub.add_parser(
        "demo", parents=[parents.common], help="migrate, load the sample dores, sync, search and show status"
    )


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.db import database_url, require_session_connection
    from pipeline.migrations import migrate

    require_session_connection(database_url(settings), "pipeline migrate")
    with connection(settings, migrated=False) as conn:
        applied = migrate(conn)
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "; schema up to date"))
    return 0


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.db import database_url, stop_embedded

    if args.psql_args and args.action != "psql":
        raise InputError(f"db {args.action} takes no further arguments (only `db psql -- ARGS` passes them on)")
    if args.action == "url":
        print(database_url(settings))
    elif args.action == "psql":
        return run_psql(database_url(settings), args.psql_args)
    elif args.action == "stop":
        if settings.database_url:
            raise InputError("DATABASE_URL is set: there is no embedded server to stop")
        print("stopped" if stop_embedded(settings.data_dir) else "not running")
    return 0


def run_psql(url: str, extra: list[str]) -> int:
    """Run psql on `url` in the foreground. The password goes in its environment, not on its command line
    (which every local user can read); Ctrl-C is psql's (it cancels the query), so this process lets it pass."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    env = {**os.environ, **({"PGPASSWORD": str(password)} if password else {})}
    command = [str(psql_program()), "-d", make_conninfo("", **params), *extra]
    if threading.current_thread() is not threading.main_thread():
        return subprocess.run(command, env=env).returncode
    # A Python handler, not SIG_IGN: psql starts with the default disposition and installs its own.
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        return subprocess.run(command, env=env).returncode
    finally:
        signal.signal(signal.SIGINT, previous)


def psql_program() -> Path:
    """The embedded server's own psql (it matches the server), else the first psql on PATH."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        try:
            import pgserver

            shipped = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
        except ImportError:
            shipped = None
    if shipped is not None and shipped.is_file():
        return shipped
    found = shutil.which("psql")
    if found is None:
        raise ConfigError("no psql: install the PostgreSQL client, or use the URL of `pipeline db url` elsewhere")
    return Path(found)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.demo import run_demo

    return run_demo(settings)


COMMANDS: dict[str, Handler] = {"migrate": cmd_migrate, "db": cmd_db, "demo": cmd_demo}
