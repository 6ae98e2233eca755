"""`pipeline segment` (CSV and database mode), `segments` and `classify`: in this process (`invoke`), and
CSV mode to stdout as a real process (the CSV on stdout, the counts on stderr)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.db import connect
from tests.conftest import ROOT, invoke, run_cli

SAMPLE = ROOT / "pipeline" / "data" / "dores_exemplo.csv"


def test_csv_mode_matches_scikit_learn_run_directly(tmp_path: Path) -> None:
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    out = tmp_path / "out.csv"
    result = invoke(
        "segment", "--csv", str(SAMPLE), "--out", str(out), "--clusters", "6", "--max-features", "300", db_url=""
    )
    assert result.returncode == 0, result.stderr
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    original = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    assert list(written.columns) == [*original.columns, "segmento"]
    assert written[original.columns].equals(original)

    texts = original["dor_base"] + " " + original["solucao_graventum"]
    matrix = TfidfVectorizer(max_features=300, min_df=2, max_df=0.95).fit_transform(texts)
    expected = KMeans(n_clusters=6, random_state=42, n_init=10).fit_predict(matrix)
    assert written["segmento"].astype(int).tolist() == expected.tolist()

    counts = {int(line.split()[1].rstrip(":")): int(line.split()[2]) for line in result.stdout.splitlines()}
    assert sum(counts.values()) == len(original) and set(counts) == set(range(6))


def test_csv_mode_to_stdout(tmp_path: Path) -> None:
    result = run_cli("segment", "--csv", str(SAMPLE), "--clusters", "3", db_url="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "dor_base,solucao_graventum,setor,segmento"
    assert "segmento 0:" in result.stderr


def test_csv_mode_errors_are_one_line(tmp_path: Path) -> None:
    cases = {
        "missing.csv": ("dor_base\nalgo\noutro\n", "no solucao_graventum column"),
        "empty.csv": ("", "is empty"),
        "header_only.csv": ("dor_base,solucao_graventum\n", "no rows"),
        "few.csv": ("dor_base,solucao_graventum\na b,c d\ne f,g h\n", "cannot make 8 segments"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        result = invoke("segment", "--csv", str(path), db_url="")
        assert result.returncode == 1, name
        assert message in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    bad = invoke("segment", "--csv", str(SAMPLE), "--clusters", "muitos", db_url="")
    assert bad.returncode == 1 and "--clusters takes a number" in bad.stderr


def test_database_mode_segments_and_classify(db_url: str) -> None:
    assert invoke("import-csv", str(SAMPLE), db_url=db_url).returncode == 0
    assert invoke("sync", db_url=db_url).returncode == 0
    fitted = invoke("segment", "--clusters", "6", "--json", db_url=db_url)
    assert fitted.returncode == 0, fitted.stderr
    result = json.loads(fitted.stdout)
    assert result["k"] == 6 and result["n_rows"] == 199 and len(result["segments"]) == 6

    listed = json.loads(invoke("segments", "--json", db_url=db_url).stdout)
    assert [s["segmento"] for s in listed] == list(range(6))
    assert all(len(s["examples"]) == 3 and s["label"] for s in listed)

    answer = invoke("classify", "a escola perde alunos todo semestre", "--json", db_url=db_url)
    assert answer.returncode == 0, answer.stderr
    segment = json.loads(answer.stdout)
    assert {"segmento", "label", "similarity"} <= set(segment)
    with connect(db_url) as conn:
        school = conn.execute(
            "select mode() within group (order by segmento) as s from dores where metadata->>'setor' = 'educacao'"
        ).fetchone()["s"]
    assert segment["segmento"] == school

    text = invoke("segments", db_url=db_url)
    assert text.returncode == 0 and " - " in text.stdout


def test_segments_before_any_fit_says_what_to_do(db_url: str) -> None:
    result = invoke("segments", db_url=db_url)
    assert result.returncode == 1 and "run `pipeline segment`" in result.stderr
