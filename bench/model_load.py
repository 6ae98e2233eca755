"""Model load time and memory per backend, each in a fresh process (imports included).

torch: sentence-transformers loading the weights. onnx-int8 with a warm cache (the export made earlier)
and with a cold one (a new data directory: export and quantise first). Median of several starts.

    python bench/model_load.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, machine, table

PROBE = """
import json, resource, sys, time
t0 = time.perf_counter()
from pipeline.config import Settings
from pipeline.model import load_embedder
from pathlib import Path
embedder = load_embedder(Settings(backend=sys.argv[1], data_dir=Path(sys.argv[2])))
loaded = time.perf_counter() - t0
embedder.embed(["Pacientes faltam às consultas"] * 64)
print(json.dumps({"load_s": loaded, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def start(backend: str, data_dir: str) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, backend, data_dir],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pipeline-load-") as warm_dir:
        start("onnx-int8", warm_dir)  # build the cache once
        for label, backend, cold in (
            ("torch", "torch", False),
            ("onnx-int8, warm cache", "onnx-int8", False),
            ("onnx-int8, cold cache (export + quantise)", "onnx-int8", True),
        ):
            results = []
            for _ in range(args.runs):
                if cold:
                    with tempfile.TemporaryDirectory(prefix="pipeline-cold-") as cold_dir:
                        results.append(start(backend, cold_dir))
                else:
                    results.append(start(backend, warm_dir))
            rows.append(
                [
                    label,
                    f"{statistics.median(r['load_s'] for r in results):.2f}",
                    f"{statistics.median(r['peak_rss_mib'] for r in results):.0f}",
                ]
            )
    print(f"\nmachine: {machine()}; fresh process per start, median of {args.runs}\n")
    print(table(["backend", "load s (imports included)", "peak RSS MiB (load + 64 texts)"], rows))


if __name__ == "__main__":
    main()
