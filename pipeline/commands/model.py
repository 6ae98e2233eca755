"""The model without a database: `model download [NAME]` and `embed` (n8n Execute Command)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.commands.common import Handler, Parents, Subparsers, plural, print_json
from pipeline.config import Settings
from pipeline.errors import InputError

logger = logging.getLogger(__name__)


def register(sub: Subparsers, parents: Parents) -> None:
    model = [parents.model]
    p = sub.add_parser(
        "model",
        parents=model,
        help="`model download [NAME]`: fetch a model (default: the multilingual one) into the local cache",
        description="Downloads a sentence-transformers model from the Hugging Face hub into the local cache "
        "(HF_HOME), where every command then finds it without the network, and prints its directory. Default: "
        "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2, the Portuguese-capable default.",
    )
    p.add_argument("action", choices=["download"])
    p.add_argument("name", nargs="?", help="hub model name (default: the multilingual default)")

    p = sub.add_parser(
        "embed",
        parents=model,
        help="print embeddings as JSON (no database): --stdin, or --csv FILE --text-col COL --out F.json",
        description="n8n Execute Command compatible. `echo texto | pipeline embed --stdin` prints "
        '[{"text", "embedding"}]; stdin may also be {"text": ...} or {"texts": [...]}, or one text per line '
        'with --lines. `--csv F --text-col dor_base --out F.json` writes [{"id", "text", "embedding"}].',
    )
    p.add_argument("--stdin", action="store_true", help="read the text(s) from standard input")
    p.add_argument("--lines", action="store_true", help="with --stdin: one text per line")
    p.add_argument("--csv", help="CSV file to embed")
    p.add_argument("--text-col", default="dor_base", help="CSV column to embed (default dor_base)")
    p.add_argument("--out", help="JSON file to write (default: stdout)")
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)  # the old scripts' name of --batch-size


def cmd_model(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.model import DEFAULT_MODEL, download_model

    name = args.name or DEFAULT_MODEL
    print(f"{name}: {download_model(name)}")
    return 0


def cmd_embed(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.model import load_embedder
    from pipeline.textio import parse_stdin

    if bool(args.stdin) == bool(args.csv):
        raise InputError("give exactly one of --stdin or --csv FILE")
    batch = getattr(args, "batch", None) or settings.batch_size
    if args.stdin:
        texts = parse_stdin(sys.stdin.read(), lines=args.lines)
        embedder = load_embedder(dataclasses.replace(settings, batch_size=batch))
        vectors = embedder.embed(texts)
        print_json([{"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors, strict=True)])
        return 0
    return _embed_csv(args, settings, batch)


def _embed_csv(args: argparse.Namespace, settings: Settings, batch: int) -> int:
    from tqdm import tqdm

    from pipeline.csvio import open_csv
    from pipeline.model import load_embedder

    _, rows = open_csv(Path(args.csv), (args.text_col,))
    records = [(row.get("id") or str(i), row.get(args.text_col) or "") for i, row in enumerate(rows)]
    if not records:
        raise InputError(f"{args.csv} has a header but no rows")
    empty = [i for i, text in records if not text.strip()]
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        one = len(empty) == 1
        logger.warning(
            "%s %s an empty %s (%s %s): written with a null embedding",
            plural(len(empty), "row"), "has" if one else "have", args.text_col, "id" if one else "ids", shown,
        )  # fmt: skip
    embedder = load_embedder(dataclasses.replace(settings, batch_size=batch))
    out: list[dict[str, Any]] = []
    step = max(batch * 16, 512)  # texts sorted by token count together
    with tqdm(total=len(records), desc="embed", unit="texts", file=sys.stderr) as bar:
        for start in range(0, len(records), step):
            part = records[start : start + step]
            filled = [text for _, text in part if text.strip()]
            vectors: Iterator[Any] = iter(embedder.embed(filled) if filled else [])
            out.extend(
                {"id": _id(i), "text": t, "embedding": next(vectors).tolist() if t.strip() else None} for i, t in part
            )
            bar.update(len(part))
    if args.out in (None, "-"):
        print_json(out)
    else:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(out, handle, ensure_ascii=False)
        print(f"wrote {plural(len(out), 'embedding')} ({embedder.name}, {embedder.dimension} dims) to {args.out}")
    return 0


def _id(value: str) -> int | str:
    return int(value) if value.isdigit() else value


COMMANDS: dict[str, Handler] = {"model": cmd_model, "embed": cmd_embed}
