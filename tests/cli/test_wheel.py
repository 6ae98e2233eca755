"""A normal install (a wheel, not editable) carries its SQL: `migrate` and `sync` work from any directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT, cli_env


@pytest.mark.slow
def test_a_wheel_install_migrates_and_syncs_from_any_directory(tmp_path: Path, empty_db_url: str) -> None:
    # From a copy of the tree: a checkout's own build/ may hold files this version no longer has.
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(tree)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("pipeline-*.whl")
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = cli_env(empty_db_url, PYTHONPATH=str(target))
    env.pop("PIPELINE_SQL_DIR", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", *args], env=env, cwd=elsewhere, capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip

    where = subprocess.run(
        [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"], env=env, cwd=elsewhere,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(target)), where.stdout  # the wheel's files, not the checkout's
    shipped = {str(p.relative_to(target / "pipeline" / "sql")) for p in (target / "pipeline" / "sql").rglob("*.sql")}
    assert shipped == {str(p.relative_to(ROOT / "pipeline" / "sql")) for p in (ROOT / "pipeline" / "sql").rglob("*.sql")}
    migrated = run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("insert into dores (dor_base) values ('Clientes faltam às consultas')")
    synced = run("sync", "--json")
    assert synced.returncode == 0, synced.stderr
    assert '"embedded": 1' in synced.stdout
