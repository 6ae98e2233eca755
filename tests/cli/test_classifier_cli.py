"""`pipeline classifier ...` and `pipeline score` as an operator or an n8n Execute Command node runs them."""

from __future__ import annotations

import csv
import io
import json

from pipeline.db import connect
from tests.conftest import invoke
from tests.integration.test_classifiers import COLD, HOT, LEADS


def test_train_score_list_status_remove(db_url: str, tmp_path: object) -> None:
    with connect(db_url) as conn:
        conn.execute(LEADS)
        with conn.cursor() as cursor:
            cursor.executemany(
                "insert into leads (mensagem, status) values (%s, %s)",
                [(t, "quente") for t in HOT] + [(t, "frio") for t in COLD],
            )
    assert invoke("source", "add", "leads", "--table", "leads", "--text", "mensagem", db_url=db_url).returncode == 0
    assert invoke("sync", db_url=db_url).returncode == 0

    one_class = invoke("classifier", "train", "lead", "--source", "leads", "--label", "'quente'::text", db_url=db_url)
    assert one_class.returncode == 1
    assert one_class.stderr.strip().splitlines()[-1].startswith("pipeline: error: --label")
    trained = invoke(
        "classifier", "train", "lead", "--source", "leads", "--label", "status", "--positive", "quente", db_url=db_url
    )
    assert trained.returncode == 0, trained.stderr
    assert "classifier lead v1 on leads: frio 12, quente 12; cross-validated accuracy" in trained.stdout
    assert "scored 24 rows" in trained.stdout

    scored = invoke("score", "lead", "Orçamento aprovado, vamos assinar o contrato hoje", "--json", db_url=db_url)
    assert scored.returncode == 0, scored.stderr
    body = json.loads(scored.stdout)
    assert body["label"] == "quente" and set(body) == {"text", "label", "probability", "probabilities"}

    lines = invoke(  # texts on stdin, JSON on stdout (as a process: test_n8n_commands.py's embed --stdin)
        "score", "lead", "--stdin", "--lines", db_url=db_url,
        stdin="Queremos fechar negócio hoje, verba aprovada\nNão tenho interesse, só pesquisando\n",
    )  # fmt: skip
    assert lines.returncode == 0, lines.stderr
    assert [r["label"] for r in json.loads(lines.stdout)] == ["quente", "frio"]

    source = tmp_path / "leads.csv"  # type: ignore[operator]
    source.write_text("id,mensagem\n1,Contrato aprovado: podemos assinar amanhã\n2,\n", encoding="utf-8")
    out = tmp_path / "scored.csv"  # type: ignore[operator]
    from_csv = invoke(
        "score", "lead", "--csv", str(source), "--text-col", "mensagem", "--out", str(out), db_url=db_url
    )
    assert from_csv.returncode == 0, from_csv.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert rows[0]["label"] == "quente" and 0.5 < float(rows[0]["probability"]) <= 1 and rows[1]["label"] == ""

    listed = json.loads(invoke("classifier", "list", "--json", db_url=db_url).stdout)
    assert listed[0]["name"] == "lead" and listed[0]["classes"] == ["frio", "quente"] and listed[0]["unscored"] == 0
    status = invoke("status", "--json", db_url=db_url)
    assert json.loads(status.stdout)["classifiers"] == [
        {"classifier": "lead", "source": "leads", "version": 1, "unscored": 0}
    ]
    unknown = invoke("score", "nada", "texto", db_url=db_url)
    assert unknown.returncode == 1 and "no classifier named nada" in unknown.stderr
    removed = invoke("classifier", "remove", "lead", db_url=db_url)
    assert removed.returncode == 0 and "24 predictions" in removed.stdout
