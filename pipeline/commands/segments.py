"""Segments: `segment` fits them (or labels a CSV), `segments` lists them, `segment-of TEXT` places a text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.commands.common import (
    Handler,
    Parents,
    Subparsers,
    connection,
    one_line,
    plural,
    print_json,
    query_embedder,
    source_option,
)
from pipeline.config import Settings
from pipeline.errors import InputError


def register(sub: Subparsers, parents: Parents) -> None:
    common = [parents.common]
    p = sub.add_parser(
        "segment",
        parents=common,
        help="fit segments (KMeans) over the database's dores, or add `segmento` to a CSV (--csv)",
        description="Database mode (default): fit over all embedded rows of the source (dores by default), store "
        "the model and update its segmento column in one transaction; numbers stay stable across refits. CSV mode "
        "(--csv): the seed's TF-IDF + KMeans on dor_base + ' ' + solucao_graventum, no database needed.",
    )
    source_option(p, "database mode: the row source to segment (default: dores)", default="dores")
    p.add_argument("--csv", help="CSV mode: input file with dor_base and solucao_graventum")
    p.add_argument("--out", help="CSV mode: output file (default: stdout, counts then go to stderr)")
    p.add_argument("--clusters", default="8", help="number of segments, or `auto` (database mode; 2..20 by silhouette)")
    p.add_argument("--max-features", type=int, default=500, help="TF-IDF vocabulary size (default 500)")
    p.add_argument(
        "--method", choices=["embedding", "tfidf"], default="embedding", help="database mode: what to cluster"
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("segments", parents=common, help="list segments: number, label, size, top terms, examples")
    source_option(p, "the source whose segments to list (default: dores)", default="dores")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "segment-of",
        aliases=["classify"],
        parents=common,
        help="which segment a text (a lead's pain) belongs to (old name: classify)",
        description="Embeds the text and prints the nearest of the source's current segments: its number, label "
        "and cosine similarity. `classify` is the old name of this command. Trained classifiers (labels you "
        "chose) are `pipeline classifier` and `pipeline score`.",
    )
    p.add_argument("text")
    source_option(p, "whose segments (default: dores)", default="dores")
    p.add_argument("--json", action="store_true")
    p.set_defaults(command="segment-of")  # one handler whichever name was typed


def cmd_segment(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.seed_tfidf import segment_csv
    from pipeline.segments import fit_database

    if args.csv:
        if args.clusters == "auto":
            raise InputError("--clusters auto works on the database; CSV mode takes a number")
        frame, counts = segment_csv(Path(args.csv), clusters=_clusters(args.clusters), max_features=args.max_features)
        report = sys.stdout if args.out else sys.stderr
        if args.out:
            frame.to_csv(args.out, index=False)
        else:
            frame.to_csv(sys.stdout, index=False)
        for number, size in counts.items():
            print(f"segmento {number}: {size}", file=report)
        return 0
    clusters: int | str = "auto" if args.clusters == "auto" else _clusters(args.clusters)
    with connection(settings) as conn:
        result = fit_database(
            conn, source=args.source, clusters=clusters, method=args.method, max_features=args.max_features
        )
    if args.json:
        print_json(result.as_dict())
    else:
        print(
            f"{result.method} K={result.k} over {plural(result.n_rows, 'row')} of {args.source} in "
            f"{result.seconds:.1f}s (silhouette {result.score}); {plural(result.changed, 'row')} changed segment"
        )
        for info in result.segments:
            print(f"  {info.segmento:>3}  {info.size:>6}  {info.label}")
    return 0


def _clusters(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--clusters takes a number or auto, got {value!r}") from None


def cmd_segments(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.segments import list_segments

    with connection(settings) as conn:
        rows = list_segments(conn, source=args.source)
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        print(f"{row['segmento']:>3}  {row['size']:>6}  {row['label']}   [{', '.join(row['top_terms'])}]")
        for example in row["examples"]:
            print(f"        - {one_line(example)}")
    return 0


def cmd_segment_of(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.segments import classify

    if not args.text.strip():
        raise InputError("the text to classify is empty")
    with connection(settings) as conn:
        embedder = query_embedder(conn, settings)
        result = classify(conn, embedder, args.text, source=args.source)
    if args.json:
        print_json(result)
    else:
        print(f"segmento {result['segmento']}: {result['label']} (similarity {result['similarity']:.3f})")
    return 0


COMMANDS: dict[str, Handler] = {"segment": cmd_segment, "segments": cmd_segments, "segment-of": cmd_segment_of}
