"""Trained classifiers: `classifier train|list|remove|score-all`, and `score` for texts (n8n)."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from pipeline.commands.common import Handler, Parents, Subparsers, connection, plural, print_json, query_embedder
from pipeline.config import Settings
from pipeline.errors import InputError


def register(sub: Subparsers, parents: Parents) -> None:
    common = [parents.common]
    p = sub.add_parser(
        "classifier",
        parents=common,
        help="train classifiers (lead score, triage) from labelled rows; list, remove, score-all",
        description="A classifier learns a label (a column, or an SQL expression of the row) from the stored "
        "vectors of a row source's labelled rows: logistic regression, its regularisation chosen by "
        "cross-validation. It is kept in the database; the daemon scores every new or changed row of the source "
        "into pipeline.predictions, and SQL callers use public.predict(name, query_embedding).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train", parents=common, help="train a new version and make it active (rescores every row)"
    )
    train.add_argument("name", help="the classifier's name: lowercase letters, digits and _ (e.g. lead)")
    train.add_argument("--source", required=True, metavar="SRC", help="the row source whose rows it learns from")
    train.add_argument("--label", required=True, help="column or SQL expression: each row's label (null: unlabelled)")
    train.add_argument("--positive", help="the class whose probability is the score (with more labels: it vs the rest)")
    train.add_argument("--no-score", action="store_true", help="do not score the source's rows now")
    train.add_argument("--json", action="store_true")
    lst = actions.add_parser("list", parents=common, help="classifiers with their classes, metrics and lag")
    lst.add_argument("--json", action="store_true")
    rm = actions.add_parser("remove", parents=common, help="drop a classifier, its versions and predictions")
    rm.add_argument("name")
    sa = actions.add_parser("score-all", parents=common, help="score the rows its active version has not scored")
    sa.add_argument("name")

    p = sub.add_parser(
        "score",
        parents=common,
        help="a classifier's label and probabilities for texts (n8n): TEXT, --stdin or --csv",
        description='`pipeline score lead "texto"` prints the label and its probability (--json: '
        '{"text", "label", "probability", "probabilities"}). --stdin reads a text, {"text"} or {"texts"} '
        "(--lines: one per line) and prints a JSON list. --csv F --text-col C --out G adds label and probability "
        "columns.",
    )
    p.add_argument("name", help="the classifier")
    p.add_argument("text", nargs="?", help="the text to score")
    p.add_argument("--stdin", action="store_true", help="read the text(s) from standard input")
    p.add_argument("--lines", action="store_true", help="with --stdin: one text per line")
    p.add_argument("--csv", help="CSV file to score")
    p.add_argument("--text-col", default="text", help="CSV column to score (default text)")
    p.add_argument("--out", help="CSV file to write (default: stdout)")
    p.add_argument("--json", action="store_true")


def cmd_classifier(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline import classifiers
    from pipeline.progress import Progress

    with connection(settings) as conn:
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
                print_json(result.as_dict())
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
                print(f"scored {plural(result.scored, 'row')} into pipeline.predictions")
        elif args.action == "score-all":
            with Progress(classifiers.unscored(conn, args.name), "score") as progress:
                scored = classifiers.score_all(conn, args.name, on_scored=lambda n: progress.bar.update(n))
            print(f"scored {plural(scored, 'row')} with {args.name}")
        elif args.action == "list":
            rows = classifiers.list_classifiers(conn)
            if args.json:
                print_json(rows)
            elif not rows:
                print("no classifiers: train one with `pipeline classifier train NAME --source SRC --label COLUMN`")
            for row in [] if args.json else rows:
                metrics = row["metrics"] or {}
                counts = ", ".join(f"{c} {n}" for c, n in zip(row["classes"] or [], row["counts"] or [], strict=True))
                print(
                    f"{row['name']:<16} v{row['version']} on {row['source']} (label {row['label']}): {counts}; "
                    f"accuracy {metrics.get('accuracy')}, macro-F1 {metrics.get('macro_f1')}; "
                    f"{plural(row['unscored'], 'row')} unscored"
                )
        else:
            dropped = classifiers.remove(conn, args.name)
            print(f"classifier {args.name} removed with its versions and {plural(dropped, 'prediction')}")
    return 0


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
    with connection(settings) as conn:
        classifiers.usable(conn, args.name)  # unknown name or stale model: said before the model loads
        embedder = query_embedder(conn, settings)
        results = classifiers.predict(conn, args.name, embedder.embed(texts))
    rows = [_scored(text, result) for text, result in zip(texts, results, strict=True)]
    if args.json or args.stdin:
        print_json(rows if args.stdin else rows[0])
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
    with connection(settings) as conn:
        classifiers.usable(conn, args.name)
        embedder = query_embedder(conn, settings)
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
        print(f"wrote {plural(len(rows), 'scored row')} to {args.out}", file=sys.stderr)
    return 0


def _write_csv(handle: Any, columns: list[str], rows: list[dict[str, str]]) -> None:
    writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


COMMANDS: dict[str, Handler] = {"classifier": cmd_classifier, "score": cmd_score}
