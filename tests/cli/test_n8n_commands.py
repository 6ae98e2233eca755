"""The commands n8n's Execute Command node runs: embed (no database), import-docs, search documents. The
node's own way, a process fed on stdin that prints JSON on stdout, is tested once per command; the rest of
the behaviour in this process (`invoke`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import Invoked, invoke, run_cli


def embed_stdin(data: str, *args: str) -> Invoked:
    return invoke("embed", "--stdin", *args, db_url="", stdin=data)


def test_embed_stdin_prints_the_models_own_vector(embedder: Any) -> None:
    result = run_cli("embed", "--stdin", db_url="", stdin="Clientes não pagam em dia\n", timeout=120)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert [item["text"] for item in body] == ["Clientes não pagam em dia"]
    got = np.asarray(body[0]["embedding"], dtype=np.float32)
    expected = embedder.model.encode(["Clientes não pagam em dia"], normalize_embeddings=True)[0]
    assert got.shape == (384,) and float(np.dot(got, expected)) >= 0.9999


def test_embed_stdin_json_bodies_and_lines() -> None:
    single = json.loads(embed_stdin('{"text": "uma dor"}').stdout)
    many = json.loads(embed_stdin('{"texts": ["a", "b", "a"]}').stdout)
    lines = json.loads(embed_stdin("primeira\n\nsegunda\n", "--lines").stdout)
    assert [x["text"] for x in single] == ["uma dor"]
    assert [x["text"] for x in many] == ["a", "b", "a"] and many[0]["embedding"] == many[2]["embedding"]
    assert [x["text"] for x in lines] == ["primeira", "segunda"]


def test_embed_stdin_bad_input_is_one_line() -> None:
    for data, message in (
        ('{"text": "sem fim"', "not valid"),
        ('{"texto": 1}', '{"text": "..."}'),
        ("   ", "nothing on standard input"),
    ):
        result = embed_stdin(data)
        assert result.returncode == 1, data
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_embed_csv_writes_id_text_embedding(tmp_path: Path) -> None:
    source = tmp_path / "dores.csv"
    source.write_text("id,dor_base\n7,Estoque não bate\n9,Entregas atrasam\n", encoding="utf-8")
    out = tmp_path / "dores.json"
    result = invoke(
        "embed", "--csv", str(source), "--text-col", "dor_base", "--out", str(out), "--batch", "32", db_url=""
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(out.read_text(encoding="utf-8"))
    assert [(x["id"], x["text"]) for x in body] == [(7, "Estoque não bate"), (9, "Entregas atrasam")]
    assert all(len(x["embedding"]) == 384 for x in body)
    missing = invoke("embed", "--csv", str(source), "--text-col", "texto", db_url="")
    assert missing.returncode == 1 and "no texto column" in missing.stderr


def test_import_docs_then_search_documents(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "proposta.md").write_text(
        "# Proposta Clínica Sol\n\nConfirmação automática de consultas.\n", encoding="utf-8"
    )
    (tmp_path / "notas_reuniao.txt").write_text("A transportadora quer reduzir o diesel das rotas.\n", encoding="utf-8")
    (tmp_path / "ignorado.pdf").write_bytes(b"%PDF")
    imported = run_cli("import-docs", str(tmp_path), db_url=db_url)  # the smoke test of import-docs as a process
    assert imported.returncode == 0, imported.stderr
    assert "imported 2 documents" in imported.stdout
    assert invoke("sync", db_url=db_url).returncode == 0
    found = invoke("search", "consultas automáticas", "--table", "documents", "-k", "2", "--json", db_url=db_url)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert hits[0]["title"] == "Proposta Clínica Sol"
    titles = {h["title"] for h in hits}
    assert "notas reuniao" in titles  # a file without a heading is titled by its name
    hybrid = invoke("search", "diesel", "--table", "documents", "--hybrid", "--json", db_url=db_url)
    assert json.loads(hybrid.stdout)[0]["title"] == "notas reuniao"
    bad = invoke("search", "x", "--table", "documents", "--filter", "[1]", db_url=db_url)
    assert bad.returncode == 1 and "must be a JSON object" in bad.stderr


def test_serve_refuses_a_public_host_without_a_token(db_url: str) -> None:
    result = invoke("serve", "--host", "0.0.0.0", db_url=db_url)
    assert result.returncode == 1
    assert "without PIPELINE_API_TOKEN" in result.stderr
