#!/usr/bin/env bash
# Install everything into .venv (if needed) and run the whole test suite on the embedded PostgreSQL
# (or on $DATABASE_URL when set) with the real MiniLM model.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt -e .
.venv/bin/pip check >/dev/null
export HF_HUB_OFFLINE=1
.venv/bin/ruff check pipeline tests bench
exec .venv/bin/python -m pytest -q "$@"
