"""What a new user meets in the first hour: documents with metadata, honest messages, no wasted work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.db import connect
from tests.conftest import invoke, run_cli


def test_import_docs_reads_front_matter_and_metadata_and_says_when_nothing_matches(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "acme.md").write_text(
        "---\ncliente: acme\nano: 2026\n---\n# Proposta ACME\n\nConfirmação automática de consultas por WhatsApp.\n",
        encoding="utf-8",
    )
    (tmp_path / "notas.txt").write_text("Reunião sobre rotas de entrega.\n", encoding="utf-8")
    imported = invoke("import-docs", str(tmp_path), "--metadata", '{"tipo": "proposta"}', db_url=db_url)
    assert imported.returncode == 0, imported.stderr
    assert invoke("sync", db_url=db_url).returncode == 0
    with connect(db_url) as conn:
        doc = conn.execute("select title, content, metadata from documents where title = 'Proposta ACME'").fetchone()
        chunk = conn.execute("select content from document_chunks order by id limit 1").fetchone()["content"]
    assert doc["metadata"]["cliente"] == "acme" and doc["metadata"]["ano"] == 2026
    assert doc["metadata"]["tipo"] == "proposta" and not doc["content"].startswith("#")
    assert chunk.count("Proposta ACME") == 1  # the heading is the title, read once
    found = invoke("search", "consultas", "--source", "documents", "--filter", '{"cliente": "acme"}', "--json",
                   db_url=db_url)  # fmt: skip
    assert found.returncode == 0 and json.loads(found.stdout)[0]["title"] == "Proposta ACME"
    nothing = invoke("search", "consultas", "--source", "documents", "--filter", '{"cliente": "globex"}',
                     db_url=db_url)  # fmt: skip
    assert nothing.returncode == 0 and nothing.stdout == ""
    assert 'no results in documents matching {"cliente": "globex"}' in nothing.stderr


def test_argument_mistakes_are_reported_before_the_model_loads(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import model

    def no_model(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(model, "load_embedder", no_model)
    for args, message in (
        (["search", "consultas", "-k", "0"], "-k must be at least 1"),
        (["search", "   "], "the search text is empty"),
        (["classify", ""], "the text to classify is empty"),
    ):
        result = invoke(*args, db_url=db_url)
        assert result.returncode == 1 and message in result.stderr, result.stderr


def test_help_texts(db_url: str) -> None:
    embed = invoke("embed", "--help", db_url=db_url).stdout
    assert "--database-url" not in embed and "--batch-size" in embed and "--batch " not in embed
    for command in ("search", "import-docs", "source"):
        text = invoke(command, "--help", db_url=db_url).stdout
        assert len(text.split("\n\n")[1]) > 60, f"{command} --help has no description"


def test_embed_csv_warns_about_empty_texts_and_writes_null(tmp_path: Path) -> None:
    source = tmp_path / "dores.csv"
    source.write_text("id,dor_base\n1,Estoque não bate\n2,\n3,   \n", encoding="utf-8")
    result = invoke("embed", "--csv", str(source), "--text-col", "dor_base", db_url="")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert [x["embedding"] is None for x in body] == [False, True, True]
    assert "2 rows have an empty dor_base (ids 2, 3): written with a null embedding" in result.stderr


def test_reembed_with_the_same_model_is_a_no_op_unless_forced(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute("insert into dores (dor_base) values ('Estoque não bate')")
    assert invoke("sync", db_url=db_url).returncode == 0
    with connect(db_url) as conn:
        model = conn.execute("select value from pipeline.state where key = 'model'").fetchone()["value"]
        before = conn.execute("select embedded_at from dores").fetchone()["embedded_at"]
    same = invoke("reembed", "--model", model, db_url=db_url)
    assert same.returncode == 0 and "nothing to do" in same.stdout, same.stderr
    with connect(db_url) as conn:
        assert conn.execute("select embedded_at from dores").fetchone()["embedded_at"] == before
    forced = invoke("reembed", "--model", model, "--force", db_url=db_url)
    assert forced.returncode == 0, forced.stderr
    with connect(db_url) as conn:
        assert conn.execute("select embedded_at from dores").fetchone()["embedded_at"] > before


def test_a_row_that_failed_for_good_is_not_queued_again_and_status_shows_the_sync(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute("insert into dores (dor_base) values ('   ')")
    assert invoke("sync", db_url=db_url).returncode == 0
    status = json.loads(invoke("status", "--json", db_url=db_url).stdout)
    dores = next(t for t in status["tables"] if t["table"] == "dores")
    assert dores["failed"] == 1 and dores["embedded"] == 0 and dores["last_sync"] is not None
    backfill = invoke("backfill", "--json", db_url=db_url)
    assert backfill.returncode == 0 and json.loads(backfill.stdout)["failed"] == 0, backfill.stdout
    with connect(db_url) as conn:
        assert conn.execute("select attempts from pipeline.failed").fetchone()["attempts"] == 1
        conn.execute("update dores set dor_base = 'agora tem texto'")  # a new text leaves the dead letter
    assert json.loads(invoke("sync", "--json", db_url=db_url).stdout)["embedded"] == 1


def test_model_download_says_why_it_cannot_when_offline(tmp_path: Path) -> None:
    # A real process: huggingface_hub reads HF_HOME (an empty cache here) when it is imported.
    result = run_cli("model", "download", "some-org/some-model", db_url="", HF_HOME=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "pipeline: error: cannot download some-org/some-model: HF_HUB_OFFLINE is set"
    ]


def test_the_demo_searches_with_words_and_meaning_and_finds_the_readmes_dor(db_url: str) -> None:
    result = invoke("demo", db_url=db_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index('search "clientes faltam às consultas" (words and meaning, RRF score):')
    assert any("Pacientes faltam às consultas" in line for line in lines[start + 1 : start + 4]), lines[start : start + 4]
    assert "sync: 199 rows embedded" in result.stdout
