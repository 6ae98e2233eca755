"""`pipeline classifier ...` and `pipeline score`: train, list, remove, score rows and texts."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from pipeline.commands import _connection, _print_json, _query_embedder, command
from pipeline.config import Settings
from pipeline.errors import InputError


@command("classifier")
def cmd_classifier(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline import classifiers
    from pipeline.progress import Progress

    with _connection(settings) as conn:
        if args.action == "train":
            with Progress(0, "score") as progress:
                result = classifiers.train(
                    conn,
                    args.name,
                    source=args.source,
                    label=args.label,
                    positive=args.positive,
                    score=not args.no_score,
                    on_scored=lambda n: progress.bar.update(n),
                )
            if args.json:
                _print_json(result.as_dict())
                return 0
            counts = ", ".join(f"{label} {n}" for label, n in result.counts.items())
            quality = (
                f"cross-validated accuracy {result.accuracy:.3f}, macro-F1 {result.macro_f1:.3f} "
                f"({result.folds} folds, C={result.c:g})"
                if result.accuracy is not None
                else "too few rows to cross-validate"
            )
            print(f"classifier {result.name} v{result.version} on {result.source}: {counts}; {quality}")
            if not args.no_score:
                print(f"scored {result.scored} rows into pipeline.predictions")
        elif args.action == "score-all":
            with Progress(classifiers.unscored(conn, args.name), "score") as progress:
                scored = classifiers.score_all(conn, args.name, on_scored=lambda n: progress.bar.update(n))
            print(f"scored {scored} rows with {args.name}")
        elif args.action == "list":
            rows = classifiers.list_classifiers(conn)
            if args.json:
                _print_json(rows)
            elif not rows:
                print("no classifiers: train one with `pipeline classifier train NAME --source SRC --label COLUMN`")
            for row in [] if args.json else rows:
                metrics = row["metrics"] or {}
                counts = ", ".join(f"{c} {n}" for c, n in zip(row["classes"] or [], row["counts"] or [], strict=True))
                print(
                    f"{row['name']:<16} v{row['version']} on {row['source']} (label {row['label']}): {counts}; "
                    f"accuracy {metrics.get('accuracy')}, macro-F1 {metrics.get('macro_f1')}; "
                    f"{row['unscored']} rows unscored"
                )
        else:
            dropped = classifiers.remove(conn, args.name)
            print(f"classifier {args.name} removed with its versions and {dropped} predictions")
    return 0


@command("score")
def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline import classifiers
    from pipeline.textio import parse_stdin

    given = [args.text is not None, bool(args.stdin), bool(args.csv)]
    if sum(given) != 1:
        raise InputError('give exactly one of a TEXT, --stdin or --csv FILE (e.g. pipeline score lead "texto")')
    if args.text is not None and not args.text.strip():
        raise InputError("the text to score is empty")
    if args.stdin:
        texts = parse_stdin(sys.stdin.read(), lines=args.lines)
    elif args.csv:
        return _score_csv(args, settings)
    else:
        texts = [args.text]
    with _connection(settings) as conn:
        classifiers.usable(conn, args.name)  # unknown name or stale model: said before the model loads
        embedder = _query_embedder(conn, settings)
        results = classifiers.predict(conn, args.name, embedder.embed(texts))
    rows = [_scored(text, result) for text, result in zip(texts, results, strict=True)]
    if args.json or args.stdin:
        _print_json(rows if args.stdin else rows[0])
        return 0
    row = rows[0]
    others = ", ".join(f"{label} {p:.3f}" for label, p in row["probabilities"].items())
    print(f"{row['label']} {row['probability']:.3f}  ({others})")
    return 0


def _scored(text: str, result: dict[str, Any]) -> dict[str, Any]:
    return {"text": text, **{k: result[k] for k in ("label", "probability", "probabilities")}}


def _score_csv(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from pipeline import classifiers
    from pipeline.csvio import open_csv

    header, reader = open_csv(Path(args.csv), (args.text_col,))
    rows = list(reader)
    if not rows:
        raise InputError(f"{args.csv} has a header but no rows")
    with _connection(settings) as conn:
        classifiers.usable(conn, args.name)
        embedder = _query_embedder(conn, settings)
        step = 512
        with tqdm(total=len(rows), desc="score", unit="rows", file=sys.stderr, disable=None) as bar:
            for start in range(0, len(rows), step):
                part = rows[start : start + step]
                filled = [row for row in part if (row.get(args.text_col) or "").strip()]
                vectors = embedder.embed([row[args.text_col] for row in filled])
                for row, result in zip(filled, classifiers.predict(conn, args.name, vectors), strict=True):
                    row["label"], row["probability"] = result["label"], f"{result['probability']:.6f}"
                bar.update(len(part))
    columns = header + [c for c in ("label", "probability") if c not in header]
    if args.out in (None, "-"):
        _write_csv(sys.stdout, columns, rows)
    else:
        with open(args.out, "w", encoding="utf-8", newline="") as handle:
            _write_csv(handle, columns, rows)
    if args.out not in (None, "-"):
        print(f"wrote {len(rows)} scored rows to {args.out}", file=sys.stderr)
    return 0


def _write_csv(handle: Any, columns: list[str], rows: list[dict[str, str]]) -> None:
    writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
