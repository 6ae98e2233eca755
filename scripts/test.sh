#!/usr/bin/env bash
# Install everything into .venv (if needed), lint, type-check the package (mypy, strict), and run the whole
# test suite on the embedded PostgreSQL (or on $DATABASE_URL when set) with the real MiniLM model.
# Arguments go to pytest: `bash scripts/test.sh -m "not slow"` skips the long tests (CI runs them all).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt -e .
.venv/bin/pip check >/dev/null
export HF_HUB_OFFLINE=1
.venv/bin/ruff check pipeline tests bench
.venv/bin/mypy pipeline
# Two workers, each running whole test files, the slow ones first (the machine has 2 cores; a worker's
# torch uses one thread): about 4.5 minutes here. `-n 0` runs everything in one process.
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=15 "$@"
