"""`pipeline serve`: the HTTP API for n8n and the app."""

from __future__ import annotations

import argparse
import logging

from pipeline.commands.common import Handler, Parents, Subparsers, connection
from pipeline.config import Settings
from pipeline.errors import InputError

logger = logging.getLogger(__name__)


def register(sub: Subparsers, parents: Parents) -> None:
    p = sub.add_parser(
        "serve",
        parents=[parents.common],
        help="HTTP API for n8n and the app: /ml/embed, /ml/segmentar, /ml/classify, /ml/search, /healthz",
        description="Serves the HTTP API (docs/http.md). Every request needs `Authorization: Bearer TOKEN` where "
        "TOKEN is the value of the environment variable PIPELINE_API_TOKEN (e.g. export PIPELINE_API_TOKEN="
        '"$(openssl rand -hex 32)" before `pipeline serve`); without it only loopback hosts are served, with no '
        "token asked. POST bodies are JSON: send -H 'Content-Type: application/json'.",
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


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from pipeline.api import create_app, is_loopback
    from pipeline.db import database_url
    from pipeline.model import database_model, load_embedder

    if not is_loopback(args.host) and not settings.api_token:
        raise InputError(f"refusing to serve on {args.host} without PIPELINE_API_TOKEN (loopback hosts only)")
    url = database_url(settings)
    with connection(settings) as conn:
        resolved = database_model(conn, settings)
    embedder = load_embedder(settings, resolved)
    app = create_app(settings=settings, url=url, embedder=embedder)
    logger.info("serving on http://%s:%d (OpenAPI at /openapi.json)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


COMMANDS: dict[str, Handler] = {"serve": cmd_serve}
