"""The commands as n8n's Execute Command node runs them: in this process (`invoke`), and as real processes
where the process is what is tested (the entry point and its exit codes, a signal)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.db import connect
from tests.conftest import ROOT, invoke, run_cli, wait_until


def test_help_explains_every_command() -> None:
    result = run_cli("--help", db_url="")
    assert result.returncode == 0
    for name in ("migrate", "run", "sync", "backfill", "status", "search", "import-csv", "db"):
        assert name in result.stdout


def test_import_sync_status_search(db_url: str) -> None:
    """The README's first steps; import-csv, sync and status as real processes (their smoke test)."""
    sample = ROOT / "pipeline" / "data" / "dores_exemplo.csv"
    imported = run_cli("import-csv", str(sample), db_url=db_url)
    assert imported.returncode == 0, imported.stderr
    assert "imported 199 dores" in imported.stdout

    synced = run_cli("sync", "--json", db_url=db_url)
    assert synced.returncode == 0, synced.stderr
    report = json.loads(synced.stdout)
    assert report["embedded"] == 199 and report["failed"] == 0
    assert "rows embedded" in synced.stderr  # one log line per batch

    status = run_cli("status", "--json", db_url=db_url)
    data = json.loads(status.stdout)
    dores = next(t for t in data["tables"] if t["table"] == "dores")
    assert (dores["rows"], dores["embedded"], dores["pending"], dores["failed"]) == (199, 199, 0, 0)
    assert data["model"] == "sentence-transformers/all-MiniLM-L6-v2" and data["dimension"] == 384

    # Hybrid by default: the README's query finds its dor in the top 3 (by vectors alone it is 21st).
    found = invoke("search", "clientes faltam às consultas", "-k", "3", "--json", db_url=db_url)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 3
    assert any(hit["dor_base"].startswith("Pacientes faltam às consultas") for hit in hits), hits
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]  # the RRF score orders them
    assert all(0 < hit["score"] < 1 and -1 <= hit["similarity"] <= 1 for hit in hits)
    vector = json.loads(invoke("search", "clientes faltam às consultas", "-k", "3", "--vector-only", "--json",
                               db_url=db_url).stdout)  # fmt: skip
    assert not any(hit["dor_base"].startswith("Pacientes faltam às consultas") for hit in vector)
    assert [hit["score"] for hit in vector] == [hit["similarity"] for hit in vector]  # the cosine orders them
    assert vector[0]["similarity"] >= vector[1]["similarity"] >= vector[2]["similarity"]
    shown = invoke("search", "clientes faltam às consultas", "-k", "3", db_url=db_url).stdout
    assert shown.startswith("1. score ") and "#107 Pacientes faltam às consultas" in shown
    both = run_cli("search", "x", "--hybrid", "--vector-only", db_url=db_url)  # a usage error: exit code 2
    assert both.returncode == 2 and "not allowed with argument" in both.stderr

    text = invoke("status", db_url=db_url)
    assert "dores" in text.stdout and "199" in text.stdout


def test_csv_errors_are_one_line(db_url: str, tmp_path: Path) -> None:
    cases = {
        "no_column.csv": b"texto,solucao\nalgo,outra\n",
        "empty.csv": b"",
        "latin1.csv": "dor_base\nPreço alto\n".encode("latin-1"),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        result = invoke("import-csv", str(path), db_url=db_url)
        assert result.returncode == 1, name
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pipeline: error:"), result.stderr
        assert "Traceback" not in result.stderr
    missing = invoke("import-csv", str(tmp_path / "nope.csv"), db_url=db_url)
    assert missing.returncode == 1 and "no such file" in missing.stderr
    with connect(db_url) as conn:
        assert conn.execute("select count(*) as n from dores").fetchone()["n"] == 0


def test_csv_with_semicolons_and_nul_bytes_is_read(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "dores.csv"
    path.write_bytes(b"dor_base;solucao_graventum;setor\nFila\x00 no caixa;Autoatendimento;varejo\n")
    result = invoke("import-csv", str(path), db_url=db_url)
    assert result.returncode == 0, result.stderr
    with connect(db_url) as conn:
        row = conn.execute("select dor_base, solucao_graventum, metadata from dores").fetchone()
    assert (row["dor_base"], row["solucao_graventum"], row["metadata"]) == (
        "Fila no caixa",
        "Autoatendimento",
        {"setor": "varejo"},
    )


def test_model_mismatch_is_refused_with_a_clear_message(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute(
            "insert into pipeline.state (key, value) values ('model', 'sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2'), ('dimension', '384')"
        )
    bundled = invoke("sync", "--model", "sentence-transformers/all-MiniLM-L6-v2", db_url=db_url)
    assert bundled.returncode == 1
    assert "pipeline reembed --model sentence-transformers/all-MiniLM-L6-v2" in bundled.stderr
    assert len(bundled.stderr.strip().splitlines()) == 1


def test_recorded_model_that_cannot_be_loaded_says_so(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute(
            "insert into pipeline.state (key, value) values ('model', 'someone/not-here'), ('dimension', '384')"
        )
    result = invoke("sync", db_url=db_url)
    assert result.returncode == 1
    assert "someone/not-here is not in the local cache" in result.stderr


def test_unmigrated_database_is_refused(empty_db_url: str) -> None:
    result = invoke("sync", db_url=empty_db_url)
    assert result.returncode == 1 and "run `pipeline migrate`" in result.stderr
    migrated = run_cli("migrate", db_url=empty_db_url)  # the smoke test of migrate as a process
    assert migrated.returncode == 0 and "0001_init.sql" in migrated.stdout
    again = invoke("migrate", db_url=empty_db_url)
    assert again.returncode == 0 and "applied 0 migration(s)" in again.stdout


def test_unreachable_database_hides_the_password() -> None:
    url = "postgresql://app:s3cr3t-pass@127.0.0.1:1/nothing"
    result = run_cli("status", db_url=url, timeout=60)  # a real process: its exit code and its whole stderr
    assert result.returncode == 1
    assert "s3cr3t-pass" not in result.stderr + result.stdout
    assert result.stderr.startswith("pipeline: error:")


def test_backfill_queues_stale_rows_and_resumes(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute("insert into dores (dor_base) select 'dor número ' || g from generate_series(1, 300) g")
        conn.execute("delete from pipeline.queue")  # as if the rows predated the triggers
    result = invoke("backfill", "--table", "dores", "--json", db_url=db_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["embedded"] == 300
    assert "backfill" in result.stderr and "rows" in result.stderr  # the progress bar
    again = invoke("backfill", "--json", db_url=db_url)
    assert json.loads(again.stdout)["embedded"] == 0
    rebuilt = invoke("backfill", "--rebuild", "--json", db_url=db_url)
    assert json.loads(rebuilt.stdout)["embedded"] == 300


def test_export_csv_writes_dores(db_url: str, tmp_path: Path) -> None:
    with connect(db_url) as conn:
        conn.execute("insert into dores (dor_base, solucao_graventum, segmento) values ('a, com vírgula', null, 2)")
    out = tmp_path / "out.csv"
    result = invoke("export-csv", "--out", str(out), db_url=db_url)
    assert result.returncode == 0, result.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id,dor_base,solucao_graventum,segmento,metadata"
    assert lines[1].endswith('"a, com vírgula",,2,{}')


@pytest.mark.slow
def test_backfill_interrupted_then_continued(db_url: str) -> None:
    import signal
    import subprocess
    import sys

    from tests.conftest import cli_env

    with connect(db_url) as conn:
        conn.execute(
            "insert into dores (dor_base) select 'texto número ' || g || repeat(' mais', 30) from generate_series(1, 400) g"
        )
        conn.execute("delete from pipeline.queue")
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "backfill", "--table", "dores"],
            env={**cli_env(db_url), "PIPELINE_CLAIM_SIZE": "100"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        embedded = "select count(*) as n from dores where embedding is not null"
        wait_until(lambda: conn.execute(embedded).fetchone()["n"], 120, "a first batch committed")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        left = conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"]
        assert f"interrupted: {left} rows still queued" in err and 0 < left < 400
    again = invoke("backfill", "--table", "dores", "--json", db_url=db_url)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["embedded"] == left
