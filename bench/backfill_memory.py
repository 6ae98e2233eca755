"""Peak memory of `pipeline backfill` over many rows (default 50,000), sampled while it runs.

The rows are loaded with COPY and taken off the queue, as if they predated the pipeline; then
`pipeline backfill --table dores` runs as a subprocess and its resident memory is sampled every 0.5 s.

    python bench/backfill_memory.py [--rows 50000] [--backend onnx-int8]
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
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--backend", choices=["torch", "onnx-int8"], default="torch")
    args = parser.parse_args()

    import psutil

    from pipeline.db import connect

    with scratch_database() as url:
        with connect(url) as conn:
            with conn.transaction(), conn.cursor().copy("copy dores (dor_base, solucao_graventum) from stdin") as copy:
                for dor, solucao in dores_texts(args.rows):
                    copy.write_row((dor, solucao))
            conn.execute("delete from pipeline.queue")
        env = {**os.environ, "DATABASE_URL": url, "HF_HUB_OFFLINE": "1", "PIPELINE_BACKEND": args.backend}
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "backfill", "--table", "dores", "--json"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        handle = psutil.Process(process.pid)
        samples: list[tuple[float, float]] = []
        while process.poll() is None:
            try:
                samples.append((time.perf_counter() - started, handle.memory_info().rss / 2**20))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.5)
        out, _ = process.communicate()
        elapsed = time.perf_counter() - started
        report = json.loads(out)
        assert report["embedded"] == args.rows, report

    peak = max(rss for _, rss in samples)
    marks = []
    for share in (0.1, 0.25, 0.5, 0.75, 0.95):
        at = min(samples, key=lambda s: abs(s[0] - share * elapsed))
        marks.append([f"{share:.0%} of the run ({at[0]:.0f}s)", f"{at[1]:.0f}"])
    rate = args.rows / elapsed
    print(
        f"\nmachine: {machine()}; backend {args.backend}; {args.rows} dores; "
        f"backfill took {elapsed:.0f}s ({rate:.0f} rows/s)\n"
    )
    print(table(["moment", "RSS MiB"], [*marks, ["peak", f"{peak:.0f}"]]))


if __name__ == "__main__":
    main()
