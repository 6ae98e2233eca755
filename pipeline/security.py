"""Row-level security and the Supabase linter's checks, as they concern the pipeline's own objects."""

from __future__ import annotations

import dataclasses

from pipeline.db import Connection, query, translate_errors
from pipeline.errors import RowSecurityError


@dataclasses.dataclass(frozen=True)
class Finding:
    """One thing Supabase's Security Advisor would report about an object the pipeline created or uses."""

    lint: str
    object: str
    detail: str

    def __str__(self) -> str:
        return f"{self.object}: {self.detail} ({self.lint})"


def advisor(conn: Connection) -> list[Finding]:
    """The linter-equivalent findings on the pipeline's objects; empty when all is well."""
    with translate_errors():
        return [Finding(r["lint"], r["object"], r["detail"]) for r in conn.execute(query("advisor"))]


def check_worker_access(conn: Connection) -> None:
    """Refuse to work as a role from which row-level security would hide rows.

    A worker that cannot see a queued row would take it for a deleted one; refusing is the only way
    to be sure no queued work is dropped.
    """
    with translate_errors():
        row = conn.execute("select current_user as role").fetchone()
        blocked = conn.execute(query("row_security_blocks")).fetchall()
        if not conn.autocommit:
            conn.rollback()
    if not blocked:
        return
    role = row["role"] if row else "this role"
    tables = ", ".join(r["table_name"] for r in blocked)
    forced = any(r["forced"] for r in blocked)
    raise RowSecurityError(
        f"row-level security on {tables} would hide rows from role {role}, and the worker would take them for "
        f"deleted ones: run it as a role with BYPASSRLS (`alter role {role} bypassrls`, as postgres on Supabase)"
        + ("" if forced else " or as the tables' owner")
        + f", or add `create policy ... for all to {role} using (true) with check (true)` on each (docs/security.md)"
    )
