"""Classifiers from labelled rows: train on stored vectors, score live in the worker's transaction, in SQL."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline import classifiers
from pipeline.errors import InputError
from pipeline.source_admin import add_source, remove_source
from pipeline.worker import Worker

LEADS = """
create table public.leads (
    id bigint generated always as identity primary key,
    mensagem text not null,
    status text
)
"""
HOT = [
    "Queremos contratar agora, o orçamento já está aprovado, mandem a proposta hoje",
    "Precisamos fechar o contrato esta semana, temos verba e urgência",
    "Aprovado pela diretoria, podemos assinar o contrato amanhã",
    "Quero comprar o plano completo hoje, qual o valor para fechar?",
    "Temos budget aprovado e queremos começar a implantação imediatamente",
    "Envie o contrato para assinatura, vamos fechar negócio",
    "Decidimos contratar, podem emitir a nota fiscal e começar",
    "Urgente: queremos a proposta final para assinar ainda hoje",
    "O financeiro liberou o pagamento, vamos fechar a compra agora",
    "Pode agendar a implantação, já estamos prontos para contratar",
    "Fechado, aceitamos a proposta e queremos assinar o contrato",
    "Temos urgência e orçamento, queremos comprar esta semana",
]
COLD = [
    "Só estou pesquisando, talvez no ano que vem",
    "Sem orçamento por enquanto, apenas curiosidade",
    "Não temos interesse agora, quem sabe no futuro",
    "Estamos só olhando opções, nada decidido e sem prazo",
    "Por favor não me liguem, não tenho interesse",
    "Talvez daqui a alguns anos, hoje não há verba",
    "Apenas coletando informações para um trabalho da faculdade",
    "Não é prioridade, sem previsão de compra",
    "Achei caro, vou deixar para depois, sem interesse no momento",
    "Só queria conhecer, não pretendo contratar",
    "Remover meu contato, não tenho interesse nenhum",
    "Sem dinheiro e sem planos de contratar este ano",
]


@pytest.fixture
def leads(conn: Any, worker: Worker) -> Any:
    conn.execute(LEADS)
    with conn.cursor() as cursor:
        cursor.executemany(
            "insert into leads (mensagem, status) values (%s, %s)",
            [(t, "quente") for t in HOT] + [(t, "frio") for t in COLD] + [("Quero saber mais", None)],
        )
    source, _ = add_source(conn, name="leads", table="public.leads", text="mensagem")
    worker.drain(conn)
    return source


def prediction(conn: Any, key: Any) -> dict[str, Any]:
    return conn.execute(
        "select * from pipeline.predictions where classifier = 'lead' and row_key = %s", (str(key),)
    ).fetchone()


def test_a_lead_classifier_scores_new_leads_live_and_in_sql(conn: Any, leads: Any, embedder: Any) -> None:
    worker = Worker(embedder=embedder, settings=_settings())
    result = classifiers.train(conn, "lead", source="leads", label="status", positive="quente")
    assert result.version == 1 and result.counts == {"frio": 12, "quente": 12} and result.classes == ["frio", "quente"]
    assert result.accuracy is not None and result.accuracy >= 0.75 and result.folds == 5
    assert result.scored == 25  # every embedded row, labelled or not

    hot, cold = _insert(
        conn,
        "Orçamento aprovado, queremos assinar o contrato e começar hoje",
        "Não tenho interesse, só pesquisando, talvez ano que vem",
    )
    report = worker.drain(conn)
    assert report.embedded == 2
    assert prediction(conn, hot)["label"] == "quente" and prediction(conn, cold)["label"] == "frio"
    assert prediction(conn, hot)["version"] == 1 and prediction(conn, hot)["probability"] > 0.5
    assert set(prediction(conn, cold)["probabilities"]) == {"quente", "frio"}

    vector = embedder.embed(["Queremos fechar o contrato hoje, orçamento aprovado"])[0]
    rows = conn.execute("select * from public.predict('lead', %s)", (vector,)).fetchall()
    assert [r["label"] for r in rows] == ["quente", "frio"] and abs(sum(r["probability"] for r in rows) - 1) < 1e-9
    (scored,) = classifiers.predict(conn, "lead", vector[None, :])
    assert scored["label"] == "quente" and scored["positive"] == "quente"
    assert abs(scored["probability"] - rows[0]["probability"]) < 1e-5

    # The same numbers from the stored weights in numpy: SQL computes softmax(W·x + b).
    weights = conn.execute(
        "select weight, intercept from pipeline.classifier_weights where classifier = 'lead' order by position"
    ).fetchall()
    fit = classifiers.Fit(
        ["frio", "quente"],
        np.vstack([w["weight"].to_numpy() for w in weights]),
        np.asarray([w["intercept"] for w in weights]),
        1.0,
        0,
        None,
        None,
    )
    assert abs(fit.probabilities(vector[None, :])[0, 1] - rows[0]["probability"]) < 1e-4

    conn.execute("delete from leads where id = %s", (hot,))
    assert prediction(conn, hot) is None
    assert conn.execute("select unscored from pipeline.classifier_lag where source = 'leads'").fetchone()["unscored"] == 0


def _insert(conn: Any, *texts: str) -> list[int]:
    return [conn.execute("insert into leads (mensagem) values (%s) returning id", (t,)).fetchone()["id"] for t in texts]


def _settings() -> Any:
    from pipeline.config import Settings

    return Settings(retry_delay=0.0, max_attempts=3, claim_size=64)


def test_retraining_makes_a_new_version_and_rescores(conn: Any, leads: Any) -> None:
    classifiers.train(conn, "lead", source="leads", label="status", score=False)
    assert classifiers.unscored(conn, "lead") == 25
    assert conn.execute("select unscored from pipeline.classifier_lag where classifier = 'lead'").fetchone()["unscored"] == 25
    assert classifiers.score_all(conn, "lead") == 25 and classifiers.unscored(conn, "lead") == 0
    # Label expressions are SQL over the row.
    second = classifiers.train(
        conn, "lead", source="leads", label="case when status = 'quente' then 'sim' else 'não' end"
    )
    assert second.version == 2 and second.scored == 25
    versions = conn.execute("select distinct version, label from pipeline.predictions order by 1, 2").fetchall()
    assert {v["version"] for v in versions} == {2} and {v["label"] for v in versions} <= {"sim", "não"}
    listed = classifiers.list_classifiers(conn)
    assert listed[0]["versions"] == 2 and listed[0]["version"] == 2 and listed[0]["unscored"] == 0


def test_labels_that_cannot_be_learnt_are_refused(conn: Any, leads: Any) -> None:
    with pytest.raises(InputError, match=r"1 class .*'quente'.*at least 2 labels"):
        classifiers.train(conn, "lead", source="leads", label="case when status = 'quente' then status end")
    with pytest.raises(InputError, match="at least 2 examples; too few: 'raro' \\(1\\)"):
        classifiers.train(conn, "lead", source="leads", label="case when id = 1 then 'raro' else status end")
    with pytest.raises(InputError, match=r"is not an expression over public\.leads"):
        classifiers.train(conn, "lead", source="leads", label="nada")
    with pytest.raises(InputError, match="--positive 'morno' is not among the labels"):
        classifiers.train(conn, "lead", source="leads", label="status", positive="morno")
    with pytest.raises(InputError, match="documents is chunked"):
        classifiers.train(conn, "doc", source="documents", label="title")
    assert conn.execute("select count(*) as n from pipeline.classifiers").fetchone()["n"] == 0


def test_removing_the_source_removes_its_classifiers_and_predictions(conn: Any, leads: Any) -> None:
    classifiers.train(conn, "lead", source="leads", label="status")
    assert conn.execute("select count(*) as n from pipeline.predictions").fetchone()["n"] == 25
    remove_source(conn, "leads")
    for table in ("classifiers", "classifier_versions", "classifier_weights", "predictions"):
        assert conn.execute(f"select count(*) as n from pipeline.{table}").fetchone()["n"] == 0, table


def test_http_score_and_score_lead(conn: Any, leads: Any, db_url: str, embedder: Any, worker: Worker) -> None:
    from fastapi.testclient import TestClient

    from pipeline.api import create_app
    from pipeline.config import Settings
    from pipeline.csvio import import_dores
    from pipeline.segments import fit_database
    from tests.conftest import ROOT

    import_dores(conn, ROOT / "pipeline" / "data" / "dores_exemplo.csv")
    worker.drain(conn)
    fit_database(conn, clusters=6)
    app = create_app(settings=Settings(api_token="t"), url=db_url, embedder=embedder)
    auth = {"Authorization": "Bearer t"}
    with TestClient(app) as client:
        missing = client.post("/ml/score-lead", json={"text": "Quero contratar"}, headers=auth)
        assert missing.status_code == 422 and "no classifier named lead" in missing.json()["error"]
        classifiers.train(conn, "lead", source="leads", label="status", positive="quente")
        lead = "Temos orçamento aprovado e queremos fechar contrato hoje; nossos pacientes faltam às consultas"
        one = client.post("/ml/score", json={"classifier": "lead", "text": lead}, headers=auth)
        assert one.status_code == 200, one.text
        assert one.json()["label"] == "quente" and next(iter(one.json()["probabilities"])) == "quente"
        many = client.post("/ml/score", json={"classifier": "lead", "texts": [lead, "Sem interesse"]}, headers=auth)
        assert [r["label"] for r in many.json()["results"]] == ["quente", "frio"]
        scored = client.post("/ml/score-lead", json={"text": lead}, headers=auth)
        assert scored.status_code == 200, scored.text
        body = scored.json()
        assert body["classifier"] == "lead" and body["positive"] == "quente" and body["score"] > 0.5
        assert body["score"] == body["probabilities"]["quente"] and isinstance(body["segmento"], int)
        assert body["segment_label"] and len(body["similar_dores"]) == 3
        assert any("consultas" in d["dor_base"] for d in body["similar_dores"])
        assert client.post("/ml/score", json={"classifier": "lead", "text": "x"}).status_code == 401
        empty = client.post("/ml/score", json={"classifier": "lead", "text": " "}, headers=auth)
        assert empty.status_code == 422


def test_percent_signs_in_the_owners_sql_reach_the_server_as_written(conn: Any, worker: Worker) -> None:
    conn.execute(LEADS)
    conn.execute("insert into leads (mensagem, status) select 'Lead número ' || g, null from generate_series(1, 12) g")
    add_source(conn, name="leads", table="public.leads", text="format('%s (%s%%)', mensagem, id % 7)")
    assert worker.drain(conn).embedded == 12
    assert conn.execute("select count(*) as n from leads where embedding is not null").fetchone()["n"] == 12
    parity = classifiers.train(conn, "parity", source="leads", label="(id % 2)::text")
    assert parity.counts == {"0": 6, "1": 6} and parity.scored == 12
    from pipeline.segments import fit_database

    assert fit_database(conn, source="leads", clusters=2).n_rows == 12


def test_rows_of_another_model_count_as_unscored_until_the_classifier_is_trained_again(
    conn: Any, leads: Any
) -> None:
    classifiers.train(conn, "lead", source="leads", label="status")
    assert classifiers.unscored(conn, "lead") == 0
    conn.execute("update pipeline.classifier_versions set model = 'another/model' where classifier = 'lead'")
    conn.execute("delete from pipeline.predictions where row_key in ('1', '2')")
    assert classifiers.score_all(conn, "lead") == 0  # it cannot score another model's vectors
    assert classifiers.unscored(conn, "lead") == 2
    with pytest.raises(Exception, match="trained on another/model vectors"):
        classifiers.predict(conn, "lead", np.zeros((1, 384), dtype=np.float32))
