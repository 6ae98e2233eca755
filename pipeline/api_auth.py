"""Who an HTTP request acts as (the service token: the owner; a Supabase user's JWT: anon or authenticated
under the owner's row-level security), and what a request may send (the body limit)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.errors import ConfigError, DatabaseError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- who a request acts as -----------------------------------------------------------------------

JWT_ROLES = ("anon", "authenticated")
"""The only roles a JWT may name: a token never chooses the owner's, `service_role` or any other."""


@dataclasses.dataclass(frozen=True)
class Caller:
    """The database owner (`role` None: the service token, or no auth configured), or a Supabase user."""

    role: str | None = None
    claims: dict[str, Any] = dataclasses.field(default_factory=dict)


OWNER = Caller()


def verify_jwt(token: str, secret: str) -> Caller:
    """A Supabase JWT's caller: HS256 signature, `exp` required and in the future, role anon or authenticated."""
    import jwt

    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp"], "verify_aud": False})
    except jwt.ExpiredSignatureError:
        raise ApiError(401, "JWT expired") from None
    except jwt.InvalidTokenError as exc:
        raise ApiError(401, f"invalid JWT: {exc}") from None
    role = claims.get("role")
    if role not in JWT_ROLES:
        raise ApiError(401, f"a JWT's role must be anon or authenticated, not {str(role)[:40]!r}")
    return Caller(role=role, claims=claims)


@contextlib.contextmanager
def acting_as(conn: Any, caller: Caller) -> Iterator[None]:
    """Run the block as `caller`. The owner runs as the connection is (autocommit); a user's block is one
    transaction that starts with `set_config('role', ..., true)` and `request.jwt.claims` (SET LOCAL: both end
    with the transaction, so the pooled connection goes back as the owner), and a refusal is 403."""
    if caller.role is None:
        yield
        return
    import psycopg

    with conn.transaction():
        try:
            conn.execute(
                "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                (caller.role, json.dumps(caller.claims)),
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DatabaseError(f"the database user may not act as {caller.role}: grant {caller.role} to it") from exc
        try:
            yield
        except (psycopg.errors.InsufficientPrivilege, DatabaseError) as exc:
            cause = exc if isinstance(exc, psycopg.Error) else exc.__cause__
            if not isinstance(cause, psycopg.errors.InsufficientPrivilege):
                raise
            detail = str(cause).strip().splitlines()[0] if str(cause).strip() else "permission denied"
            raise ApiError(403, f"role {caller.role} may not do this: {detail}") from exc


def require_jwt_roles(url: str) -> None:
    """The database user must be able to act as anon and authenticated (Supabase grants both to postgres)."""
    from pipeline.db import connect, translate_errors

    with connect(url) as conn, translate_errors():
        (row,) = conn.execute(
            "select session_user as me, array(select rolname::text from pg_roles where rolname = any(%s)"
            " and pg_has_role(session_user, oid, 'member')) as roles",
            (list(JWT_ROLES),),
        ).fetchall()
    missing = [role for role in JWT_ROLES if role not in row["roles"]]
    if missing:
        raise ConfigError(
            f"PIPELINE_JWT_SECRET is set, but the database user {row['me']} cannot act as {' or '.join(missing)}:"
            f" grant {', '.join(missing)} to {row['me']} (Supabase grants anon and authenticated to postgres)"
        )


# -- what a request may send ------------------------------------------------------------------


class BodyTooLarge(StarletteHTTPException):
    """Raised by the body's `receive`: an HTTPException, so FastAPI passes it on (not as a 400 parse error)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _too_large(send, self.limit)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:  # read outside a route (no handler turned it into a response)
            await _too_large(send, self.limit)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"error": f"request body over {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
