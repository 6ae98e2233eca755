"""Documents and RAG in SQL: match_documents as LangChain calls it, filters, hybrid search."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.search import search_documents
from pipeline.worker import Worker

DOCS = [
    (
        "Proposta clínica",
        {"cliente": "clinica-sol", "tipo": "proposta"},
        "A clínica perde receita com faltas.\n\nPropomos confirmação automática de consultas por WhatsApp, "
        "com lista de espera que preenche os horários vagos. O painel mostra a taxa de faltas por médico.",
    ),
    (
        "Diagnóstico transportadora",
        {"cliente": "rodofast", "tipo": "diagnostico"},
        "A transportadora gasta demais com diesel porque as rotas são feitas à mão.\n\nRecomendamos "
        "roteirização com janelas de entrega e acompanhamento do consumo de cada caminhão.",
    ),
    (
        "Notas escola",
        {"cliente": "colegio-azul", "tipo": "nota"},
        "A escola vê a evasão crescer. Alunos faltam e os pais não são avisados a tempo.\n\nSugestão: alerta "
        "de evasão a partir da frequência e um aplicativo de comunicação com as famílias.",
    ),
    (
        "Contabilidade",
        {"cliente": "conta-certa", "tipo": "proposta"},
        "O escritório contábil atrasa o fechamento porque concilia extratos bancários em planilhas.\n\n"
        "Automatizamos a conciliação e a cobrança de documentos dos clientes.",
    ),
]


@pytest.fixture
def documents(conn: Any, worker: Worker) -> dict[str, int]:
    ids = {}
    for title, metadata, content in DOCS:
        ids[title] = conn.execute(
            "insert into documents (title, content, metadata) values (%s, %s, %s) returning id",
            (title, content, json.dumps(metadata)),
        ).fetchone()["id"]
    worker.drain(conn)
    return ids


def test_match_documents_as_langchain_python_calls_it(conn: Any, embedder: Any, documents: dict[str, int]) -> None:
    query = embedder.embed(["confirmação automática de consultas para reduzir faltas"])[0]
    # Python SupabaseVectorStore: rpc("match_documents", {"query_embedding": ..., "filter": ...}).limit(k)
    rows = conn.execute(
        "select * from match_documents(query_embedding => %s, filter => %s::jsonb) limit 2", (query, "{}")
    ).fetchall()
    assert rows[0]["metadata"]["document_id"] == documents["Proposta clínica"]
    assert set(rows[0]) == {"id", "content", "metadata", "similarity"}
    assert rows[0]["similarity"] >= rows[1]["similarity"]


def test_match_documents_as_langchain_js_calls_it(conn: Any, embedder: Any, documents: dict[str, int]) -> None:
    query = embedder.embed(["rotas de caminhões e consumo de diesel"])[0]
    # JS SupabaseVectorStore: rpc("match_documents", {query_embedding, match_count, filter})
    rows = conn.execute(
        "select * from match_documents(query_embedding => %s, match_count => %s, filter => %s::jsonb)",
        (query, 3, "{}"),
    ).fetchall()
    assert len(rows) == 3
    assert rows[0]["metadata"]["title"] == "Diagnóstico transportadora"


def test_filter_restricts_by_metadata(conn: Any, embedder: Any, documents: dict[str, int]) -> None:
    rows = search_documents(conn, embedder, "faltas de alunos e pacientes", k=10, filter={"tipo": "proposta"})
    assert rows and {r["document_id"] for r in rows} <= {documents["Proposta clínica"], documents["Contabilidade"]}
    none = search_documents(conn, embedder, "qualquer coisa", k=5, filter={"cliente": "ninguem"})
    assert none == []


def test_hybrid_beats_pure_vector_on_an_exact_code(conn: Any, worker: Worker, embedder: Any) -> None:
    codes = [f"XR-20{n}-{letter}" for n, letter in zip(range(40, 52), "ABCDEFGHJKLM", strict=True)]
    target = "XR-2047-H"
    for code in codes:
        conn.execute(
            "insert into documents (title, content) values (%s, %s)",
            (
                f"Ficha {code}",
                f"Peça de reposição {code} para a linha de envase. Prazo de entrega de cinco dias úteis.",
            ),
        )
    worker.drain(conn)

    def rank(rows: list[dict[str, Any]]) -> int:
        titles = [r["title"] for r in rows]
        return titles.index(f"Ficha {target}") + 1 if f"Ficha {target}" in titles else 99

    vector = rank(search_documents(conn, embedder, target, k=10, hybrid=False))
    hybrid = rank(search_documents(conn, embedder, target, k=10, hybrid=True))
    assert hybrid == 1
    assert hybrid < vector


def test_document_metadata_and_chunks_follow_edits(conn: Any, worker: Worker, documents: dict[str, int]) -> None:
    doc = documents["Notas escola"]
    conn.execute('update documents set metadata = metadata || \'{"tipo": "arquivo"}\' where id = %s', (doc,))
    assert conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"] == 0  # metadata only
    conn.execute(
        "update documents set content = content || %s where id = %s", ("\n\nNova seção sobre transporte escolar.", doc)
    )
    worker.drain(conn)
    chunks = conn.execute("select content, metadata from document_chunks where document_id = %s", (doc,)).fetchall()
    assert any("transporte escolar" in c["content"] for c in chunks)
    assert all(c["metadata"]["tipo"] == "arquivo" for c in chunks)


@pytest.mark.slow
def test_a_selective_filter_still_returns_match_count_chunks(conn: Any, worker: Any, embedder: Any) -> None:
    conn.execute(
        "insert into documents (title, content, metadata) select 'Nota ' || g, 'Reunião de acompanhamento número '"
        " || g || ' com o cliente.', case when g % 100 = 0 then '{\"tipo\": \"raro\"}' else '{\"tipo\": \"comum\"}'"
        " end::jsonb from generate_series(1, 2000) g"
    )
    worker.drain(conn)
    query = embedder.embed(["reunião com o cliente"])[0]
    rows = conn.execute(
        "select * from match_documents(%s, 5, '{\"tipo\": \"raro\"}')", (query,)
    ).fetchall()
    assert len(rows) == 5 and all(r["metadata"]["tipo"] == "raro" for r in rows)
    assert [r["similarity"] for r in rows] == sorted((r["similarity"] for r in rows), reverse=True)
    hybrid = conn.execute(
        "select * from match_documents_hybrid('reunião com o cliente', %s, 5, filter => '{\"tipo\": \"raro\"}')",
        (query,),
    ).fetchall()
    assert len(hybrid) == 5 and all(r["metadata"]["tipo"] == "raro" for r in hybrid)
