"""Texts in and out: `import-docs` (files as documents), `import-csv` and `export-csv` (dores)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.commands.common import Handler, Parents, Subparsers, connection, json_object, plural
from pipeline.config import Settings
from pipeline.errors import InputError


def register(sub: Subparsers, parents: Parents) -> None:
    common = [parents.common]
    p = sub.add_parser(
        "import-docs",
        parents=common,
        help="load .txt/.md files (or folders of them) as documents",
        description="Each file becomes one row of `documents` (title: the first Markdown heading, else the file "
        "name); the daemon or `pipeline sync` then chunks and embeds it. Search with `pipeline search TEXT "
        "--source documents`. Metadata (filter on it with --filter): each file's name and path, its YAML front "
        "matter (--- key: value ---), and --metadata.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--metadata", help='JSON object added to every document\'s metadata, e.g. \'{"tipo": "proposta"}\'')

    p = sub.add_parser("import-csv", parents=common, help="load a CSV of dores (dor_base, solucao_graventum, ...)")
    p.add_argument("file")
    p.add_argument("--table", default="dores", choices=["dores"])

    p = sub.add_parser("export-csv", parents=common, help="write dores with their segmento as CSV")
    p.add_argument("--table", default="dores", choices=["dores"])
    p.add_argument("--out", help="file to write (default: stdout)")


def cmd_import_docs(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.db import query
    from pipeline.textio import document_paths, read_document

    metadata = json_object(args.metadata, "--metadata") if args.metadata else None
    documents = [read_document(path, metadata) for path in document_paths(args.paths)]
    with connection(settings) as conn, conn.transaction():
        for doc in documents:
            conn.execute(query("insert_document"), {**doc, "metadata": json.dumps(doc["metadata"], ensure_ascii=False)})
    print(f"imported {plural(len(documents), 'document')}; `pipeline sync` (or the daemon) chunks and embeds them")
    return 0


def cmd_import_csv(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.csvio import import_dores

    if args.table != "dores":
        raise InputError("import-csv loads dores; use `pipeline import-docs` for documents")
    with connection(settings) as conn:
        report = import_dores(conn, Path(args.file))
    print(
        f"imported {plural(report.inserted, 'dor', 'dores')}"
        + (f", skipped {report.skipped_empty} with an empty dor_base" if report.skipped_empty else "")
    )
    return 0


def cmd_export_csv(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.csvio import export_dores

    with connection(settings) as conn:
        if args.out in (None, "-"):
            count = export_dores(conn, sys.stdout)  # type: ignore[arg-type]
        else:
            with open(args.out, "w", encoding="utf-8", newline="") as handle:
                count = export_dores(conn, handle)
    print(f"exported {plural(count, 'dor', 'dores')}", file=sys.stderr)
    return 0


COMMANDS: dict[str, Handler] = {
    "import-docs": cmd_import_docs,
    "import-csv": cmd_import_csv,
    "export-csv": cmd_export_csv,
}
