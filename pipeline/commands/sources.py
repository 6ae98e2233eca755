"""`pipeline source add|list|remove|follow-parent`: any table as a source of texts to embed."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

from pipeline.commands.common import Handler, Parents, Subparsers, connection, plural, print_json
from pipeline.config import Settings

logger = logging.getLogger(__name__)


def register(sub: Subparsers, parents: Parents) -> None:
    common = [parents.common]
    p = sub.add_parser(
        "source",
        parents=common,
        help="register any table as a source (add), list or remove sources; chunk visibility (follow-parent)",
        description="A source is a table with a primary key (bigint, integer, uuid or text) and the text the "
        "model reads: an SQL expression over its columns, or a comma-separated list of columns. A row source "
        "keeps its vector in the row (columns embedding, embedding_model, content_hash, embedded_at are added); "
        "a chunked source (--chunked) splits long texts into a table NAME_chunks. Each source gets triggers, "
        "an HNSW index and a SQL search function public.match_NAME. A running daemon picks changes up by itself.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", parents=common, help="register a table as a source")
    add.add_argument("name", help="the source's name: lowercase letters, digits and _ (e.g. leads)")
    add.add_argument("--table", required=True, help="SCHEMA.TABLE (or TABLE, in public)")
    add.add_argument("--text", required=True, help="SQL expression over the row's columns, or col1,col2,...")
    add.add_argument("--chunked", action="store_true", help="split long texts into chunks (a NAME_chunks table)")
    add.add_argument("--metadata", help="chunked: columns copied into each chunk's metadata (col1,col2)")
    add.add_argument("--language", default="portuguese", help="full-text configuration (default portuguese)")
    add.add_argument("--no-backfill", action="store_true", help="do not queue the rows already in the table")
    add.add_argument(
        "--chunks-follow-parent",
        action="store_true",
        help="chunked: a chunk is visible exactly when its row is, to every role (see `source follow-parent`)",
    )
    lst = actions.add_parser("list", parents=common, help="the registered sources")
    lst.add_argument("--json", action="store_true")
    rm = actions.add_parser("remove", parents=common, help="stop embedding a table; drop what the pipeline added")
    rm.add_argument("name")
    rm.add_argument("--drop-columns", action="store_true", help="also drop the vector columns of a row source")
    follow = actions.add_parser(
        "follow-parent",
        parents=common,
        help="a chunk is visible exactly when its row is (a policy on the chunk table)",
        description='Puts the row-level security policy "chunks follow their parent" on a chunked source\'s table '
        "of chunks (documents: document_chunks): a chunk may be read when its row (the document) may be read by the "
        "same role, under that table's own policies, so policies are written once, on the table you know. "
        "A chunk's metadata follows its row in the same transaction whatever the policies; this makes its "
        "visibility follow too. Running it again replaces the policy.",
    )
    follow.add_argument("name", help="a chunked source (documents, or one added with --chunked)")
    follow.add_argument(
        "--roles",
        default="public",
        help="comma-separated roles the policy applies to (default: public, every role; on Supabase e.g. "
        "authenticated). Each needs SELECT on the source's table",
    )
    follow.add_argument("--off", action="store_true", help="drop the policy instead")
    follow.add_argument("--json", action="store_true")


def cmd_source(args: argparse.Namespace, settings: Settings) -> int:
    with connection(settings) as conn:
        if args.action == "add":
            _add(conn, args)
        elif args.action == "list":
            _list(conn, args)
        elif args.action == "follow-parent":
            _follow_parent(conn, args)
        else:
            _remove(conn, args)
    return 0


def _add(conn: Any, args: argparse.Namespace) -> None:
    from pipeline.source_admin import add_source

    metadata = [c.strip() for c in args.metadata.split(",") if c.strip()] if args.metadata else None
    source, queued = add_source(
        conn,
        name=args.name,
        table=args.table,
        text=args.text,
        chunked=args.chunked,
        metadata=metadata,
        language=args.language,
        backfill=not args.no_backfill,
        chunks_follow_parent=args.chunks_follow_parent,
    )
    print(
        f"source {source.name}: {source.kind} source on {source.qualified} (key {source.key_column} "
        f"{source.key_type}), reads {', '.join(source.text_columns)}; {plural(queued, 'row')} queued; "
        f"search with public.{source.search_function}(query_embedding, match_count)"
    )


def _list(conn: Any, args: argparse.Namespace) -> None:
    from pipeline.sources import load_sources

    sources = load_sources(conn)
    if args.json:
        print_json([dataclasses.asdict(s) for s in sources])
        return
    for s in sources:
        key = f"{s.key_column} ({s.key_type})"
        print(f"{s.name:<16} {s.kind:<8} {s.qualified:<28} key {key:<16} {s.text_expression}")


def _follow_parent(conn: Any, args: argparse.Namespace) -> None:
    from pipeline.source_admin import follow_parent

    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    result = follow_parent(conn, args.name, roles=roles, off=args.off)
    if args.json:
        print_json(result)
    elif args.off:
        print(f'{result["table"]}: policy "chunks follow their parent" dropped')
    else:
        print(
            f'{result["table"]}: policy "{result["policy"]}" for {", ".join(result["roles"])}: a chunk is'
            f" visible exactly when its row of {args.name} is"
        )
    for warning in result.get("warnings", []):
        logger.warning("%s", warning)


def _remove(conn: Any, args: argparse.Namespace) -> None:
    from pipeline.source_admin import remove_source

    removed = remove_source(conn, args.name, drop_columns=args.drop_columns)
    print(
        f"source {args.name} removed: triggers, search function"
        + (", chunks" if removed.get("chunked") else "")
        + f" and {plural(removed['queued_dropped'], 'queued row')} dropped"
        + ("; vector columns dropped" if args.drop_columns else "")
    )


COMMANDS: dict[str, Handler] = {"source": cmd_source}
