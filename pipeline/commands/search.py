"""`pipeline search TEXT`: a source's best matches, words and meaning (hybrid) or meaning alone."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.commands.common import (
    Handler,
    Parents,
    Subparsers,
    connection,
    json_object,
    print_json,
    query_embedder,
    source_option,
)
from pipeline.config import Settings
from pipeline.errors import InputError


def register(sub: Subparsers, parents: Parents) -> None:
    p = sub.add_parser(
        "search",
        parents=[parents.common],
        help="the rows (or chunks) of a source that best match a text: words and meaning",
        description="Embeds the text with the database's model and calls the source's SQL search function. By "
        "default that is hybrid search (match_dores_hybrid, match_documents_hybrid, match_<source>_hybrid): the "
        "rows that share the text's words, ranked by how rare those words are, in the source's full-text "
        "language, fused with the nearest vectors by reciprocal rank fusion; each result shows the RRF score that "
        "orders it and its cosine similarity. --vector-only ranks by the vectors alone (match_dores, ...). "
        "Prints the results, or JSON with --json; `no results` on stderr when nothing matches.",
    )
    p.add_argument("text")
    source_option(p, "the source to search (default: dores)", default="dores")
    p.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    p.add_argument("--segmento", type=int, help="sources with segments (dores): only this segment")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--vector-only", action="store_true", help="rank by vector similarity alone")
    mode.add_argument("--hybrid", action="store_true", help="hybrid search (the default), an error where unavailable")
    p.add_argument("--filter", help="chunked sources: JSON object the chunk metadata must contain")
    p.add_argument("--json", action="store_true")


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.search import hybrid_available, search_source
    from pipeline.sources import load_sources

    filter_ = json_object(args.filter, "--filter") if args.filter else None
    if not args.text.strip():
        raise InputError("the search text is empty")
    if args.k < 1:
        raise InputError(f"-k must be at least 1, got {args.k}")
    with connection(settings) as conn:
        (source,) = load_sources(conn, [args.source])
        embedder = query_embedder(conn, settings)
        hybrid = False if args.vector_only else (True if args.hybrid else hybrid_available(conn, source))
        rows = search_source(
            conn, embedder, source, args.text, k=args.k, hybrid=hybrid, filter=filter_, segmento=args.segmento
        )
    if not rows:
        print(f"no results in {source.name}" + (f" matching {args.filter}" if args.filter else ""), file=sys.stderr)
    if args.json:
        print_json(rows)
        return 0
    for rank, row in enumerate(rows, 1):
        if source.chunked:
            title = row["title"] or f"{source.name} {row.get(source.chunk_key_column or '')}"
            print(f"{rank}. {_shown_score(row, hybrid)}  {title} [chunk {row['chunk_index']}]")
            print("   " + " ".join(row["content"].split())[:300])
            continue
        segment = f" [segmento {row['segmento']}]" if row.get("segmento") is not None else ""
        text = row.get("dor_base") or row.get("content") or ""
        print(f"{rank}. {_shown_score(row, hybrid)}{segment} #{row['id']} {' '.join(str(text).split())[:300]}")
        if row.get("solucao_graventum"):
            print(f"   -> {row['solucao_graventum']}")
    return 0


def _shown_score(row: dict[str, Any], hybrid: bool) -> str:
    """The number that explains the order: the RRF score of a hybrid search, else the cosine similarity."""
    if hybrid:
        return f"score {row['score']:.4f} (similarity {row['similarity']:.3f})"
    return f"{row['similarity']:.3f}"


COMMANDS: dict[str, Handler] = {"search": cmd_search}
