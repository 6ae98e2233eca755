"""HTTP API for n8n and the app: embed, segmentar, classify, search; the model loaded once at start.

A request acts as the database owner (the service token, `PIPELINE_API_TOKEN`) or, with `PIPELINE_JWT_SECRET`
set, as a Supabase user: its JWT's role and claims are set for the request's transaction, as PostgREST does,
so that the owner's row-level security policies decide what it sees."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.api_auth import (
    OWNER,
    ApiError,
    BodyLimit,
    Caller,
    acting_as,
    require_jwt_roles,
    verify_jwt,
)
from pipeline.api_models import (
    ERRORS,
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    ScoreLeadRequest,
    ScoreLeadResponse,
    ScoreRequest,
    ScoreResponse,
    SearchRequest,
    SegmentarRequest,
    SegmentarResponse,
)
from pipeline.config import Settings
from pipeline.errors import DatabaseError, InputError, PipelineError

__all__ = ["ApiError", "Caller", "acting_as", "create_app", "is_loopback", "require_jwt_roles"]

logger = logging.getLogger(__name__)


# -- the app -------------------------------------------------------------------------------------


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
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where or 'body'}: {first.get('msg', 'invalid request')}"
        if "json" not in request.headers.get("content-type", ""):  # curl -d without -H sends a form
            message += " (send the body as JSON: -H 'Content-Type: application/json')"
        return JSONResponse({"error": message}, status_code=422)

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
        from pipeline.seed_tfidf import fit_tfidf, seed_text

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
