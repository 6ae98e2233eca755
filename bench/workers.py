"""Scale-out on one machine: 1, 2 and 4 `pipeline sync` processes draining the same queue.

Each step queues the same N dores and times until every row is embedded; every row must be embedded
exactly once. Each process gets cores ÷ workers torch threads (PIPELINE_THREADS). Prints the curve.

    python bench/workers.py [--rows 6000] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, dores_texts, machine, scratch_database, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()

    from pipeline.db import connect

    pairs = dores_texts(args.rows)
    rows = []
    with scratch_database() as url:
        env = {**os.environ, "DATABASE_URL": url, "HF_HUB_OFFLINE": "1"}
        for count in args.workers:
            with connect(url) as conn:
                conn.execute("truncate dores")
                with (
                    conn.transaction(),
                    conn.cursor().copy("copy dores (dor_base, solucao_graventum) from stdin") as copy,
                ):
                    for pair in pairs:
                        copy.write_row(pair)
            threads = str(max(1, (os.cpu_count() or 1) // count))  # cores shared out, not oversubscribed
            started = time.perf_counter()
            processes = [
                subprocess.Popen(
                    [sys.executable, "-m", "pipeline", "sync", "--json"],
                    env={**env, "PIPELINE_THREADS": threads},
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                for _ in range(count)
            ]
            reports = [json.loads(p.communicate()[0]) for p in processes]
            elapsed = time.perf_counter() - started
            embedded = sum(r["embedded"] for r in reports)
            assert embedded == args.rows, f"{embedded} embeddings for {args.rows} rows"
            rows.append(
                [count, f"{elapsed:.1f}", f"{args.rows / elapsed:.0f}", " / ".join(str(r["embedded"]) for r in reports)]
            )
            print(f"{count} worker(s): {elapsed:.1f}s", file=sys.stderr)
    print(f"\nmachine: {machine()}; {args.rows} dores; wall time includes each process's model load\n")
    print(table(["workers", "seconds", "rows/s", "rows per worker"], rows))


if __name__ == "__main__":
    main()
