"""Segments in database mode, on the shipped sample dores, with the real model."""

from __future__ import annotations

import csv
from typing import Any

import numpy as np
import pytest

from pipeline.csvio import import_dores
from pipeline.errors import InputError
from pipeline.search import search_dores
from pipeline.segments import classify, fit_database, list_segments
from pipeline.worker import Worker
from tests.conftest import ROOT

SAMPLE = ROOT / "pipeline" / "data" / "dores_exemplo.csv"


@pytest.fixture
def sample(conn: Any, worker: Worker) -> dict[str, str]:
    import_dores(conn, SAMPLE)
    worker.drain(conn)
    with SAMPLE.open(encoding="utf-8") as handle:
        return {row["dor_base"]: row["setor"] for row in csv.DictReader(handle)}


def assignments(conn: Any) -> dict[int, int]:
    return {r["id"]: r["segmento"] for r in conn.execute("select id, segmento from dores order by id")}


@pytest.mark.parametrize("method", ["embedding", "tfidf"])
def test_segments_separate_the_sectors(conn: Any, sample: dict[str, str], method: str) -> None:
    from sklearn.metrics import adjusted_rand_score

    result = fit_database(conn, clusters=6, method=method)
    assert result.k == 6 and result.n_rows == 199 and result.changed == 199
    rows = conn.execute("select dor_base, segmento from dores").fetchall()
    ari = adjusted_rand_score([sample[r["dor_base"]] for r in rows], [r["segmento"] for r in rows])
    assert ari >= 0.6, f"{method}: adjusted Rand index {ari:.3f}"
    assert sorted(s.segmento for s in result.segments) == list(range(6))
    assert sum(s.size for s in result.segments) == 199
    assert all(len(s.top_terms) >= 3 and s.label.count(" / ") == 2 for s in result.segments)
    stored = conn.execute("select method, k, n_rows, params from pipeline.segment_models").fetchone()
    assert (stored["method"], stored["k"], stored["n_rows"]) == (method, 6, 199)
    if method == "tfidf":
        assert len(stored["params"]["idf"]) == len(stored["params"]["vocabulary"]) > 50


def test_labels_name_what_the_segment_is_about(conn: Any, sample: dict[str, str]) -> None:
    fit_database(conn, clusters=6)
    segments = list_segments(conn)
    words = " ".join(" ".join(s["top_terms"]) for s in segments)
    # The sectors' own vocabulary shows up, and no Portuguese function word does.
    assert (
        sum(w in words for w in ("pacientes", "clientes", "estoque", "alunos", "produção", "entrega", "entregas")) >= 3
    )
    assert not {"de", "que", "para", "com", "não"} & set(words.split())
    assert all(len(s["examples"]) == 3 for s in segments)


def test_refit_after_five_percent_more_rows_keeps_the_numbers(
    conn: Any, worker: Worker, sample: dict[str, str]
) -> None:
    first = fit_database(conn, clusters=6)
    before = assignments(conn)
    extra = list(sample)[:10]  # 10 more rows (5%), paraphrased
    for dor in extra:
        conn.execute("insert into dores (dor_base) values (%s)", (dor + " e isso se repete toda semana",))
    worker.drain(conn)
    second = fit_database(conn, clusters=6)
    after = assignments(conn)
    kept = sum(after[row_id] == number for row_id, number in before.items()) / len(before)
    assert kept >= 0.95, f"only {kept:.1%} kept their segment number"
    assert second.model_id != first.model_id
    assert second.changed <= len(before) * 0.05 + 10


def test_new_rows_get_the_nearest_segment_on_sync(
    conn: Any, worker: Worker, embedder: Any, sample: dict[str, str]
) -> None:
    fit_database(conn, clusters=6)
    row_id = conn.execute(
        "insert into dores (dor_base) values ('Pacientes faltam e a agenda do consultório fica vazia') returning id"
    ).fetchone()["id"]
    worker.drain(conn)
    assigned = conn.execute("select segmento from dores where id = %s", (row_id,)).fetchone()["segmento"]
    expected = classify(conn, embedder, "Pacientes faltam e a agenda do consultório fica vazia")
    assert assigned == expected["segmento"]
    health = [s for s, setor in sample.items() if setor == "saude"]
    health_segments = [
        r["segmento"] for r in conn.execute("select segmento from dores where dor_base = any(%s)", (health,))
    ]
    assert assigned == max(set(health_segments), key=health_segments.count)


def test_classify_returns_the_nearest_centroid(conn: Any, embedder: Any, sample: dict[str, str]) -> None:
    fit_database(conn, clusters=6)
    text = "a frota de caminhões gasta muito diesel nas rotas"
    result = classify(conn, embedder, text)
    vector = embedder.embed([text])[0]
    centroids = conn.execute("select segmento, centroid from current_segments").fetchall()
    best = max(centroids, key=lambda c: float(np.dot(c["centroid"].to_numpy(), vector)))
    assert result["segmento"] == best["segmento"]
    assert abs(result["similarity"] - float(np.dot(best["centroid"].to_numpy(), vector))) < 1e-3
    with pytest.raises(InputError):
        classify(conn, embedder, "   ")


def test_match_dores_filters_by_segment_and_still_returns_k(conn: Any, embedder: Any, sample: dict[str, str]) -> None:
    fit_database(conn, clusters=6)
    target = classify(conn, embedder, "alunos abandonam o curso")["segmento"]
    rows = search_dores(conn, embedder, "pacientes faltam às consultas", k=10, segmento=target)
    assert len(rows) == 10
    assert all(r["segmento"] == target for r in rows)


def test_auto_k_picks_a_k_in_range(conn: Any, sample: dict[str, str]) -> None:
    result = fit_database(conn, clusters="auto", k_range=range(2, 12))
    assert 2 <= result.k < 12
    assert result.score is not None


def test_bad_inputs(conn: Any, worker: Worker) -> None:
    with pytest.raises(InputError, match="run `pipeline sync` first"):
        fit_database(conn, clusters=3)
    conn.execute("insert into dores (dor_base) values ('um'), ('dois'), ('três')")
    worker.drain(conn)
    with pytest.raises(InputError, match="cannot make 5 segments"):
        fit_database(conn, clusters=5)
    with pytest.raises(InputError, match="unknown method"):
        fit_database(conn, clusters=2, method="lda")


def test_daemon_fits_when_enough_rows_and_refits_on_growth(conn: Any, db_url: str, worker: Worker) -> None:
    from pipeline.config import Settings
    from pipeline.daemon import Daemon

    daemon = Daemon(settings=Settings(segment_clusters="3"), url=db_url, worker=worker)
    conn.execute("insert into dores (dor_base) select 'dor ' || g from generate_series(1, 20) g")
    worker.drain(conn)
    daemon.growth_job()  # 20 rows < 10 per segment × 3: too few for a first fit
    assert conn.execute("select count(*) as n from pipeline.segment_models").fetchone()["n"] == 0
    conn.execute("insert into dores (dor_base) select 'problema ' || g from generate_series(1, 20) g")
    worker.drain(conn)
    daemon.growth_job()
    assert conn.execute("select n_rows from pipeline.segment_models").fetchall() == [{"n_rows": 40}]
    daemon.growth_job()  # no growth: no refit
    conn.execute("insert into dores (dor_base) select 'questão ' || g from generate_series(1, 8) g")
    worker.drain(conn)
    daemon.growth_job()  # 48 >= 40 × 1.2
    assert [r["n_rows"] for r in conn.execute("select n_rows from pipeline.segment_models order by id")] == [40, 48]
    assert conn.execute("select count(*) as n from dores where segmento is null").fetchone()["n"] == 0


def test_a_first_fit_over_a_big_table_rebuilds_the_vector_index_after(
    conn: Any, sample: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import segments
    from pipeline.status import status

    monkeypatch.setattr(segments, "SET_ASIDE_INDEX_FROM", 10)  # the sample is small; the path is the big tables'
    definition = "select pg_get_indexdef('public.dores_embedding_idx'::regclass) as d"
    before = conn.execute(definition).fetchone()["d"]
    result = fit_database(conn, clusters=6)
    assert result.changed == result.n_rows
    assert conn.execute(definition).fetchone()["d"] == before
    valid = "select indisvalid as ok from pg_index where indexrelid = 'public.dores_embedding_idx'::regclass"
    assert conn.execute(valid).fetchone()["ok"]
    assert conn.execute("select count(*) as n from pipeline.state where key like 'index:%%'").fetchone()["n"] == 0

    # Interrupted after the drop: status says so, and the next fit builds it again.
    conn.execute("insert into pipeline.state (key, value) values ('index:public.dores_embedding_idx', %s)", (before,))
    conn.execute("drop index public.dores_embedding_idx")
    assert any("dores_embedding_idx is being rebuilt" in w for w in status(conn)["warnings"])
    fit_database(conn, clusters=6)
    assert conn.execute(definition).fetchone()["d"] == before
    assert not any("being rebuilt" in w for w in status(conn)["warnings"])
