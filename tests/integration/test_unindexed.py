"""Vectors that wait for the vector index: in `embedding` from their commit, outside the HNSW graph (searched
exactly), marked into it when idle. A user's own `order by embedding <=> q` finds them too."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipeline.indexes import index_waiting
from pipeline.search import search_source
from pipeline.segments import fit_database
from pipeline.source_admin import add_source
from pipeline.sources import load_sources
from pipeline.status import status
from pipeline.worker import Worker

DORES = [
    ("Pacientes faltam às consultas e a agenda fica vazia", "Lembretes automáticos por WhatsApp"),
    ("Fechamento contábil atrasa todo mês", "Conciliação bancária automática"),
    ("Estoque não bate com o sistema", "Integração do estoque com o ERP"),
    ("Clientes abandonam o carrinho no checkout", "Checkout em uma página"),
]


def insert(conn: Any, rows: list[tuple[str, str]]) -> list[int]:
    return [
        conn.execute("insert into dores (dor_base, solucao_graventum) values (%s, %s) returning id", row).fetchone()[
            "id"
        ]
        for row in rows
    ]


def columns(conn: Any, row_id: int) -> tuple[Any, bool]:
    """The row's vector, and whether it is in the HNSW graph."""
    row = conn.execute("select embedding, embedding_indexed from dores where id = %s", (row_id,)).fetchone()
    return row["embedding"], row["embedding_indexed"]


def unit(vector: Any) -> np.ndarray:
    return np.asarray(vector.to_numpy(), dtype=np.float32)


def test_a_batch_waits_beside_the_index_is_searched_exactly_and_moved_when_idle(
    conn: Any, worker: Worker, embedder: Any
) -> None:
    ids = insert(conn, DORES)
    report = worker.run_batch(conn, "dores")  # one batch, no idle time yet
    assert report.embedded == report.unindexed == 4
    waiting = {}
    for row_id in ids:
        vector, indexed = columns(conn, row_id)
        assert vector is not None and not indexed
        waiting[row_id] = unit(vector)
    tables = {t["table"]: t for t in status(conn)["tables"]}
    assert tables["dores"]["embedded"] == 4 and tables["dores"]["unindexed"] == 4

    (source,) = load_sources(conn, ["dores"])
    for hybrid in (False, True):
        found = search_source(conn, embedder, source, "pacientes faltam às consultas", k=4, hybrid=hybrid)
        assert found[0]["id"] == ids[0]
        assert sorted(r["id"] for r in found) == sorted(ids)  # each row once
    before = [(r["id"], r["similarity"]) for r in search_source(conn, embedder, source, "estoque", k=4, hybrid=False)]
    # Plain SQL, as a user writes it, finds the waiting rows in the same order (an exact scan).
    query = embedder.embed(["estoque"])[0]
    plain = conn.execute("select id from dores order by embedding <=> %s limit 4", (query,)).fetchall()
    assert [r["id"] for r in plain] == [i for i, _ in before]

    moved, interrupted = index_waiting(conn, [source])
    assert (moved, interrupted) == (4, False)
    for row_id in ids:
        vector, indexed = columns(conn, row_id)
        assert indexed
        assert np.allclose(unit(vector), waiting[row_id])
    after = [(r["id"], r["similarity"]) for r in search_source(conn, embedder, source, "estoque", k=4, hybrid=False)]
    assert after == before
    assert {t["table"]: t for t in status(conn)["tables"]}["dores"]["unindexed"] == 0


def test_drain_ends_with_every_vector_in_the_index(conn: Any, worker: Worker) -> None:
    insert(conn, DORES)
    report = worker.drain(conn)
    assert report.embedded == report.unindexed == report.indexed == 4
    row = conn.execute(
        "select count(embedding) filter (where embedding_indexed) as indexed,"
        " count(embedding) filter (where not embedding_indexed) as waiting from dores"
    ).fetchone()
    assert (row["indexed"], row["waiting"]) == (4, 0)


def test_a_changed_row_leaves_its_stale_vector_and_comes_back_once(conn: Any, worker: Worker, embedder: Any) -> None:
    ids = insert(conn, DORES)
    worker.drain(conn)
    old, _ = columns(conn, ids[2])
    conn.execute("update dores set dor_base = 'Boletos saem com o vencimento errado' where id = %s", (ids[2],))
    worker.run_batch(conn, "dores")
    vector, indexed = columns(conn, ids[2])
    assert not indexed
    assert float(np.dot(unit(vector), unit(old))) < 0.99
    (source,) = load_sources(conn, ["dores"])
    found = search_source(conn, embedder, source, "boletos com vencimento errado", k=4, hybrid=False)
    assert [r["id"] for r in found].count(ids[2]) == 1
    assert found[0]["id"] == ids[2] and found[0]["similarity"] > 0.5
    index_waiting(conn, [source])
    vector, indexed = columns(conn, ids[2])
    assert indexed and float(np.dot(unit(vector), unit(old))) < 0.99


def test_past_max_unindexed_vectors_go_into_the_index_at_once(conn: Any, embedder: Any, settings: Any) -> None:
    worker = Worker(embedder=embedder, settings=dataclasses.replace(settings, max_unindexed=2))
    ids = insert(conn, DORES)
    assert worker.run_batch(conn, "dores", limit=3).unindexed == 3  # fewer than 2 waited before it
    assert worker.run_batch(conn, "dores").unindexed == 0  # 3 wait now: written into the index
    (last,) = set(ids) - {int(r["id"]) for r in conn.execute("select id from dores where not embedding_indexed")}
    assert columns(conn, last)[0] is not None and columns(conn, last)[1]

    never = Worker(embedder=embedder, settings=dataclasses.replace(settings, max_unindexed=0))
    (fresh,) = insert(conn, [("Vendedores não registram as visitas", "CRM no celular")])
    assert never.run_batch(conn, "dores").unindexed == 0
    assert columns(conn, fresh)[0] is not None and columns(conn, fresh)[1]


def test_queued_rows_come_before_moving_vectors_into_the_index(conn: Any, worker: Worker) -> None:
    insert(conn, DORES)
    worker.run_batch(conn, "dores")
    insert(conn, [("Vendedores não registram as visitas", "CRM no celular")])
    sources = load_sources(conn, ["dores"])
    assert index_waiting(conn, sources, step=1) == (1, True)
    report = worker.drain(conn)  # embeds the new row, then moves the rest
    assert report.embedded == 1 and report.indexed == 4
    assert conn.execute("select count(*) as n from dores where not embedding_indexed").fetchone()["n"] == 0


def test_segments_and_a_bulk_read_see_the_waiting_vectors(conn: Any, worker: Worker) -> None:
    ids = insert(conn, DORES)
    worker.run_batch(conn, "dores")
    result = fit_database(conn, clusters=2)
    assert result.n_rows == 4
    assigned = conn.execute("select count(*) as n from dores where segmento is not null").fetchone()["n"]
    assert assigned == len(ids)


def test_a_row_source_added_by_command_waits_too(
    conn: Any, worker: Worker, embedder: Any
) -> None:
    conn.execute("create table public.tickets (id bigint generated always as identity primary key, corpo text)")
    conn.execute("insert into tickets (corpo) values ('A impressora fiscal trava no fechamento do caixa'),"
                 " ('O boleto sai com o vencimento errado')")  # fmt: skip
    source, queued = add_source(conn, name="tickets", table="public.tickets", text="corpo")
    assert source.waits and queued == 2
    assert worker.run_batch(conn, "tickets").unindexed == 2
    for hybrid in (False, True):
        found = search_source(conn, embedder, source, "boleto com vencimento errado", k=2, hybrid=hybrid)
        assert found[0]["content"] == "O boleto sai com o vencimento errado"
        assert len(found) == 2
    worker.drain(conn)
    assert conn.execute("select count(embedding) as n from tickets").fetchone()["n"] == 2

    conn.execute("update tickets set corpo = 'O boleto chega com a data de vencimento errada' where id = 2")
    assert worker.run_batch(conn, "tickets").unindexed == 1
    found = search_source(conn, embedder, source, "boleto com vencimento errado", k=2, hybrid=False)
    assert found[0]["content"] == "O boleto chega com a data de vencimento errada"


def test_a_worker_granted_only_the_older_columns_writes_into_the_index(conn: Any, embedder: Any, settings: Any) -> None:
    conn.execute("create role pipeline_older_grants bypassrls")
    conn.execute("grant select on public.dores to pipeline_older_grants")
    conn.execute(
        "grant update (embedding, embedding_model, content_hash, embedded_at, segmento) on public.dores"
        " to pipeline_older_grants"
    )
    conn.execute("grant select, insert, update, delete on all tables in schema pipeline to pipeline_older_grants")
    conn.execute("grant usage on schema pipeline to pipeline_older_grants")
    conn.execute("grant select on public.segments to pipeline_older_grants")
    (row_id,) = insert(conn, DORES[:1])
    conn.execute("set role pipeline_older_grants")
    try:
        (source,) = load_sources(conn, ["dores"])
        assert not source.waits
        report = Worker(embedder=embedder, settings=settings).run_batch(conn, source)
    finally:
        conn.execute("reset role")
    assert report.embedded == 1 and report.unindexed == 0
    assert columns(conn, row_id)[0] is not None and columns(conn, row_id)[1]  # in the graph


def test_a_source_whose_table_goes_away_mid_drain_is_skipped(conn: Any, worker: Worker) -> None:
    conn.execute("create table public.tickets (id bigint generated always as identity primary key, corpo text)")
    conn.execute("insert into tickets (corpo) values ('O boleto sai com o vencimento errado')")
    source, _ = add_source(conn, name="tickets", table="public.tickets", text="corpo")
    worker.run_batch(conn, source)
    conn.execute("drop table tickets")
    (dores,) = load_sources(conn, ["dores"])
    insert(conn, DORES[:1])
    worker.run_batch(conn, dores)
    assert index_waiting(conn, [source, dores]) == (1, False)
