"""How forward passes are cut: every `batch_size` texts, or where the token count changes (`batch_cuts`).

The texts of each claim (512, as the worker takes them) are sorted by token count and embedded pass by
pass, cut either way; the variants take turns, round after round, and the table gives the median time,
the tokens computed (padding included) and the number of passes.

    python bench/batching.py [--texts assin2|dores] [--backend onnx-int8|torch] [--rounds 5] [--claim 3000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import assin2_sentences, dores_texts, machine, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", choices=["assin2", "dores"], default="assin2")
    parser.add_argument("--backend", choices=["onnx-int8", "torch"], default="onnx-int8")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--claim", type=int, help="texts sorted together (default: the worker's claim, 512)")
    parser.add_argument("--evaldata", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "evaldata")
    args = parser.parse_args()

    from pipeline.config import Settings
    from pipeline.embedding import batch_cuts
    from pipeline.model import load_embedder

    if args.texts == "assin2":
        texts = assin2_sentences(args.evaldata, args.rows)
    else:
        texts = [f"{d}\n{s}" for d, s in dores_texts(args.rows)]
    settings = Settings(backend=args.backend)
    embedder = load_embedder(settings)
    size = embedder.batch_size
    claim_size = args.claim or settings.claim_size
    claims = [texts[start : start + claim_size] for start in range(0, len(texts), claim_size)]
    plans = {}
    for claim in claims:  # each claim sorted longest first, as the worker does
        ids = embedder.tokenizer(claim, truncation=True, max_length=embedder.max_tokens)["input_ids"]
        order = sorted(range(len(claim)), key=lambda i: -len(ids[i]))
        lengths = [len(ids[i]) for i in order]
        variants = {f"every {size} texts": [(s, min(s + size, len(order))) for s in range(0, len(order), size)]}
        for pass_cost in (32, 64, 96, 200):
            variants[f"batch_cuts, pass cost {pass_cost}"] = batch_cuts(lengths, size, pass_cost)
        for name, cuts in variants.items():
            plans.setdefault(name, []).append(
                ([[claim[order[i]] for i in range(a, b)] for a, b in cuts], sum((b - a) * lengths[a] for a, b in cuts))
            )
    embedder.embed(texts[:256])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in plans}
    for _ in range(args.rounds):
        for name, claim_plans in plans.items():
            started = time.perf_counter()
            for passes, _tokens in claim_plans:
                for batch in passes:
                    embedder._encode(batch)
            times[name].append(time.perf_counter() - started)
    print(
        f"\nmachine: {machine()}; {embedder.name}; {len(texts)} {args.texts} texts in claims of "
        f"{claim_size}, passes of at most {size}; median of {args.rounds} interleaved rounds\n"
    )
    rows = []
    for name, claim_plans in plans.items():
        tokens = sum(t for _, t in claim_plans)
        passes = sum(len(p) for p, _ in claim_plans)
        rows.append([name, f"{statistics.median(times[name]):.2f}", tokens, passes])
    print(table(["passes cut", "seconds", "tokens computed", "passes"], rows))


if __name__ == "__main__":
    main()
