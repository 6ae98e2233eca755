"""HTTP API for n8n and the app: embed, segmentar, classify, search; the model loaded once at start.

A request acts as the database owner (the service token, `PIPELINE_API_TOKEN`) or, with `PIPELINE_JWT_SECRET`
set, as a Supabase user: its JWT's role and claims are set for the request's transaction, as PostgREST does,
so that the owner's row-level security policies decide what it sees."""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import ipaddress
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.config import Settings
from pipeline.errors import ConfigError, DatabaseError, InputError, PipelineError

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- request and response bodies -----------------------------------------------------------------


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, description="one text")
    texts: list[str] | None = Field(None, description="several texts, embedded in one model call")


class EmbedResponse(BaseModel):
    model: str
    embedding: list[float] | None = None
    embeddings: list[list[float]] | None = None


class DorRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    dor_base: str
    solucao_graventum: str | None = None


class SegmentarRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[DorRow]
    clusters: int = Field(8, ge=2, le=100)
    max_features: int = Field(500, ge=1, le=100_000)


class SegmentarResponse(BaseModel):
    rows: list[dict[str, Any]]
    counts: dict[str, int]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    source: str = Field("dores", pattern=r"^[a-z][a-z0-9_]{0,39}$", description="whose segments")


class ClassifyResponse(BaseModel):
    segmento: int
    label: str
    top_terms: list[str]
    similarity: float


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    source: str = Field("dores", pattern=r"^[a-z][a-z0-9_]{0,39}$", description="a registered source")
    table: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,39}$", description="alias of `source`")
    k: int = Field(5, ge=1, le=100)
    hybrid: bool | None = Field(
        None, description="null (default): words and meaning fused (RRF) where the source has it; false: vectors only"
    )
    filter: dict[str, Any] = Field(default_factory=dict)
    segmento: int | None = Field(None, ge=0, le=2**31 - 1)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classifier: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", description="a trained classifier")
    text: str | None = Field(None, description="one text")
    texts: list[str] | None = Field(None, description="several texts")


class Scored(BaseModel):
    text: str
    label: str
    probability: float
    probabilities: dict[str, float] = Field(description="every class, most likely first")


class ScoreResponse(BaseModel):
    classifier: str
    label: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] | None = None
    results: list[Scored] | None = Field(None, description="with `texts`: one per text, in order")


class ScoreLeadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="the lead's message (its pain, in its words)")


class ScoreLeadResponse(BaseModel):
    classifier: str
    score: float | None = Field(description="probability of the classifier's positive class")
    positive: str | None
    label: str
    probability: float
    probabilities: dict[str, float]
    segmento: int | None = None
    segment_label: str | None = None
    similar_dores: list[dict[str, Any]]


class ErrorResponse(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 403, 413, 422, 503)}


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


# -- the app -------------------------------------------------------------------------------------


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


class SerialisedEmbedder:
    """An embedder whose calls take turns (request threads share one model)."""

    def __init__(self, embedder: Any) -> None:
        self.inner = embedder
        self.name = embedder.name
        self.dimension = embedder.dimension
        self.max_tokens = embedder.max_tokens
        self.lock = threading.Lock()

    def embed(self, texts: list[str]) -> Any:
        with self.lock:
            return self.inner.embed(texts)


def create_app(*, settings: Settings, url: str, embedder: Any) -> FastAPI:
    """The ASGI app. `embedder` is loaded once by the caller; database connections come from a pool."""
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    from pipeline.db import register_vector

    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=4,
        open=False,
        kwargs={"autocommit": True, "row_factory": dict_row},
        configure=register_vector,
        check=ConnectionPool.check_connection,
    )
    serialised = SerialisedEmbedder(embedder)  # one model call at a time: torch already uses every core
    if settings.jwt_secret:
        require_jwt_roles(url)
    # With auth configured, the schema is not for strangers either (it lists every route and limit).
    closed_docs = bool(settings.api_token or settings.jwt_secret) and not settings.api_public_docs

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=False)
        yield
        pool.close()

    app = FastAPI(
        title="pipeline ML API",
        version="1.0",
        description="Embeddings, segments and search for n8n and the app. Every /ml/* route takes "
        "`Authorization: Bearer $PIPELINE_API_TOKEN` when a token is configured (it acts as the database owner), "
        "or a Supabase user's JWT when PIPELINE_JWT_SECRET is set (its queries run as the token's role, under "
        "row-level security).",
        lifespan=lifespan,
        openapi_url=None if closed_docs else "/openapi.json",
        docs_url=None if closed_docs else "/docs",
        redoc_url=None if closed_docs else "/redoc",
    )

    def authorize(request: Request) -> Caller:
        if not settings.api_token and not settings.jwt_secret:
            return OWNER
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            if settings.api_token and hmac.compare_digest(token.encode(), settings.api_token.encode()):
                return OWNER
            if settings.jwt_secret and token.count(".") == 2:
                return verify_jwt(token, settings.jwt_secret)
        raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer ...)")

    def check(texts: list[str]) -> None:
        if not texts:
            raise ApiError(422, "no text given")
        if len(texts) > settings.api_max_texts:
            raise ApiError(413, f"{len(texts)} texts in one call; the limit is {settings.api_max_texts}")
        for i, text in enumerate(texts):
            if len(text) > settings.api_max_chars:
                raise ApiError(413, f"text {i} has {len(text)} characters; the limit is {settings.api_max_chars}")

    def embed(texts: list[str]) -> Any:
        check(texts)
        return serialised.embed(texts)

    def with_connection(work: Callable[[Any], Any], caller: Caller = OWNER) -> Any:
        try:
            with pool.connection(timeout=10) as conn, acting_as(conn, caller):
                return work(conn)
        except (PipelineError, ApiError):
            raise
        except Exception as exc:  # pool timeout or a dropped connection
            raise DatabaseError(f"database unavailable: {type(exc).__name__}") from exc

    @app.exception_handler(ApiError)
    def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(InputError)
    def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(DatabaseError)
    def _database_error(_: Request, exc: DatabaseError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.exception_handler(PipelineError)
    def _pipeline_error(_: Request, exc: PipelineError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where or 'body'}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    secured = [Depends(authorize)]
    who = Depends(authorize)  # a route's `caller`: whom its queries run as

    if closed_docs:

        @app.get("/openapi.json", include_in_schema=False, dependencies=secured)
        def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False)
        @app.get("/redoc", include_in_schema=False)
        def docs_off() -> JSONResponse:
            return JSONResponse(
                {
                    "error": "the docs pages are off while the API takes a token: GET /openapi.json with the token,"
                    " or serve --public-docs (PIPELINE_API_PUBLIC_DOCS=1)"
                },
                status_code=404,
            )

    @app.post(
        "/ml/embed",
        response_model=EmbedResponse,
        response_model_exclude_none=True,
        dependencies=secured,
        responses=ERRORS,
    )
    def ml_embed(body: EmbedRequest) -> Response:
        """`{"text"}` → `{"embedding"}`; `{"texts"}` → `{"embeddings"}` (same vectors as `pipeline embed`)."""
        if (body.text is None) == (body.texts is None):
            raise ApiError(422, 'give exactly one of "text" or "texts"')
        if body.text is not None:
            data = {"model": embedder.name, "embedding": embed([body.text])[0].tolist()}
        else:
            data = {"model": embedder.name, "embeddings": embed(list(body.texts or [])).tolist()}
        # Serialised directly: validating thousands of floats against the response model costs milliseconds.
        return Response(json.dumps(data, separators=(",", ":")), media_type="application/json")

    @app.post("/ml/segmentar", response_model=SegmentarResponse, dependencies=secured, responses=ERRORS)
    def ml_segmentar(body: SegmentarRequest) -> dict[str, Any]:
        """The seed's CSV mode over JSON: TF-IDF + KMeans on the rows given; each row comes back with `segmento`."""
        from pipeline.segments import fit_tfidf, seed_text

        if len(body.rows) > settings.api_max_texts * 40:
            raise ApiError(413, f"{len(body.rows)} rows in one call; the limit is {settings.api_max_texts * 40}")
        rows = [row.model_dump() for row in body.rows]
        labels, _, _ = fit_tfidf(
            seed_text([r["dor_base"] for r in rows], [r["solucao_graventum"] for r in rows]),
            clusters=body.clusters,
            max_features=body.max_features,
        )
        counts: dict[str, int] = {}
        for row, label in zip(rows, labels, strict=True):
            row["segmento"] = int(label)
            counts[str(int(label))] = counts.get(str(int(label)), 0) + 1
        return {"rows": rows, "counts": dict(sorted(counts.items(), key=lambda kv: int(kv[0])))}

    @app.post("/ml/classify", response_model=ClassifyResponse, responses=ERRORS)
    def ml_classify(body: ClassifyRequest, caller: Caller = who) -> dict[str, Any]:
        """Which stored segment a text (a lead's pain) belongs to, its label and the similarity."""
        from pipeline.db import query

        if not body.text.strip():
            raise ApiError(422, "text is empty")
        vector = embed([body.text])[0]

        def work(conn: Any) -> Any:
            return conn.execute(query("classify"), {"embedding": vector, "source": body.source}).fetchone()

        row = with_connection(work, caller)
        if row is None:
            raise ApiError(400, "no segments yet: run `pipeline segment` (after `pipeline sync`)")
        return {**row, "similarity": round(float(row["similarity"]), 4)}

    @app.post("/ml/search", responses=ERRORS)
    def ml_search(body: SearchRequest, caller: Caller = who) -> list[dict[str, Any]]:
        """Results as `pipeline search --json` prints them: hybrid by default (`"hybrid": false` for vectors
        alone), each with the `score` that orders it; `filter` for chunked sources, `segmento` for dores."""
        from pipeline.search import search_source
        from pipeline.sources import load_sources

        if not body.query.strip():
            raise ApiError(422, "query is empty")
        check([body.query])

        def work(conn: Any) -> Any:
            # The registry is read as the owner (it names tables and functions, no rows); the search as the caller.
            (source,) = load_sources(conn, [body.table or body.source])
            with acting_as(conn, caller):
                return search_source(
                    conn,
                    serialised,
                    source,
                    body.query,
                    k=body.k,
                    hybrid=body.hybrid,
                    filter=body.filter or None,
                    segmento=body.segmento,
                )

        return with_connection(work)  # type: ignore[no-any-return]

    @app.post("/ml/score", response_model=ScoreResponse, response_model_exclude_none=True, responses=ERRORS)
    def ml_score(body: ScoreRequest, caller: Caller = who) -> dict[str, Any]:
        """A classifier's label and probabilities: `{"text"}` → one verdict, `{"texts"}` → `results`."""
        from pipeline.classifiers import predict

        if (body.text is None) == (body.texts is None):
            raise ApiError(422, 'give exactly one of "text" or "texts"')
        texts = [body.text] if body.text is not None else list(body.texts or [])
        if any(not t.strip() for t in texts):
            raise ApiError(422, "a text is empty")
        vectors = embed(texts)
        results = with_connection(lambda conn: predict(conn, body.classifier, vectors), caller)
        scored = [
            {"text": t, "label": r["label"], "probability": r["probability"], "probabilities": r["probabilities"]}
            for t, r in zip(texts, results, strict=True)
        ]
        if body.text is not None:
            return {"classifier": body.classifier, **{k: v for k, v in scored[0].items() if k != "text"}}
        return {"classifier": body.classifier, "results": scored}

    @app.post("/ml/score-lead", response_model=ScoreLeadResponse, responses=ERRORS)
    def ml_score_lead(body: ScoreLeadRequest, caller: Caller = who) -> dict[str, Any]:
        """One call for a new lead: the lead classifier's score (`PIPELINE_LEAD_CLASSIFIER`), its segment among
        the dores' and the 3 most similar dores."""
        from pipeline.classifiers import predict
        from pipeline.db import query

        if not body.text.strip():
            raise ApiError(422, "text is empty")
        vector = embed([body.text])[0]
        name = settings.lead_classifier

        def work(conn: Any) -> dict[str, Any]:
            (verdict,) = predict(conn, name, vector[None, :])
            segment = conn.execute(query("classify"), {"embedding": vector, "source": "dores"}).fetchone()
            similar = conn.execute(
                "select id, dor_base, solucao_graventum, segmento, round(similarity::numeric, 4)::float as similarity"
                " from public.match_dores(%s, 3)",
                (vector,),
            ).fetchall()
            return {"verdict": verdict, "segment": segment, "similar": similar}

        found = with_connection(work, caller)
        verdict, segment = found["verdict"], found["segment"]
        positive = verdict["positive"]
        return {
            "classifier": name,
            "score": verdict["probabilities"].get(positive) if positive else None,
            "positive": positive,
            "label": verdict["label"],
            "probability": verdict["probability"],
            "probabilities": verdict["probabilities"],
            "segmento": segment["segmento"] if segment else None,
            "segment_label": segment["label"] if segment else None,
            "similar_dores": found["similar"],
        }

    @app.get("/healthz", responses={503: {"model": ErrorResponse}})
    def healthz() -> JSONResponse:
        """200 when the model is loaded and the database answers."""
        try:
            with_connection(lambda conn: conn.execute("select 1"))
        except DatabaseError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "model": embedder.name})

    return BodyLimit(app, settings.api_max_body)  # type: ignore[return-value]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
