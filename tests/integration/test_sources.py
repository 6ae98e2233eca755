"""Any table as a source: keys of every type, row and chunked sources, one worker loop, bad input."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from pipeline.db import connect
from pipeline.errors import InputError
from pipeline.search import search_source
from pipeline.source_admin import add_source, remove_source
from pipeline.sources import load_sources
from pipeline.worker import Worker, count_ready
from tests.conftest import wait_until

LEADS = """
create table public.leads (
    id uuid primary key default gen_random_uuid(),
    empresa text not null,
    assunto text,
    mensagem text,
    score int,
    created_at timestamptz default now()
)
"""
TICKETS = "create table public.tickets (id bigint generated always as identity primary key, titulo text, corpo text)"
EMAILS = """
create table public.emails (
    message_id text primary key,
    remetente text not null,
    assunto text,
    corpo text,
    caixa text not null default 'vendas',
    headers jsonb not null default '{}'
)
"""


def queued(conn: Any, source: str) -> int:
    return int(conn.execute("select count(*) as n from pipeline.queue where source = %s", (source,)).fetchone()["n"])


def test_a_uuid_keyed_row_source_is_embedded_searched_and_kept_current(conn: Any, worker: Worker, embedder: Any) -> None:
    conn.execute(LEADS)
    conn.execute(
        "insert into leads (empresa, assunto, mensagem) values"
        " ('Clínica Sorriso', 'Faltas', 'Pacientes faltam às consultas e a agenda fica vazia'),"
        " ('Transportes Rápido', 'Frota', 'Caminhões rodam vazios e gastam muito diesel'),"
        " ('Loja Bela', 'Estoque', 'O estoque do sistema nunca bate com a prateleira')"
    )
    source, backlog = add_source(conn, name="leads", table="public.leads", text="empresa, assunto, mensagem")
    assert backlog == 3 and source.key_type == "uuid" and source.text_columns == ("assunto", "empresa", "mensagem")
    report = worker.drain(conn)
    assert report.embedded == 3 and queued(conn, "leads") == 0
    hits = search_source(conn, embedder, source, "pacientes não aparecem na consulta", k=2)
    assert hits[0]["content"].startswith("Clínica Sorriso") and uuid.UUID(hits[0]["id"])
    sql_hits = conn.execute("select * from match_leads(%s, 1)", (embedder.embed(["diesel"])[0],)).fetchall()
    assert sql_hits[0]["content"].startswith("Transportes Rápido")
    # A column the text does not read: no new work. A text column: queued, embedded again.
    conn.execute("update leads set score = 90")
    assert queued(conn, "leads") == 0
    conn.execute("update leads set assunto = 'Agenda' where empresa = 'Clínica Sorriso'")
    assert queued(conn, "leads") == 1
    before = conn.execute("select embedded_at from leads where empresa = 'Clínica Sorriso'").fetchone()["embedded_at"]
    assert worker.drain(conn).embedded == 1
    after = conn.execute("select embedded_at, content_hash from leads where empresa = 'Clínica Sorriso'").fetchone()
    assert after["embedded_at"] > before
    # Delete and truncate leave nothing queued.
    conn.execute("delete from leads where empresa = 'Loja Bela'")
    conn.execute("update leads set mensagem = 'mudou' where empresa = 'Transportes Rápido'")
    conn.execute("delete from leads where empresa = 'Transportes Rápido'")
    report = worker.drain(conn)
    assert report.deleted == 1 and queued(conn, "leads") == 0
    conn.execute("update leads set mensagem = 'mudou de novo'")
    conn.execute("truncate leads")
    assert queued(conn, "leads") == 0


def test_a_bigint_source_with_an_sql_expression(conn: Any, worker: Worker) -> None:
    conn.execute(TICKETS)
    conn.execute("insert into tickets (titulo, corpo) values ('Erro no login', 'Não consigo entrar'), ('Boleto', null)")
    add_source(conn, name="tickets", table="tickets", text="upper(titulo) || E'\\n' || coalesce(corpo, '')")
    assert worker.drain(conn).embedded == 2
    row = conn.execute("select content_hash, embedding is not null as has from tickets where titulo = 'Boleto'")
    assert row.fetchone()["has"]
    # The text the hash is taken of is the expression's value, byte for byte.
    expected = conn.execute("select pipeline.content_hash('BOLETO' || E'\\n') as h").fetchone()["h"]
    assert conn.execute("select content_hash from tickets where titulo = 'Boleto'").fetchone()["content_hash"] == expected


def test_a_chunked_source_with_metadata_and_a_text_key(conn: Any, worker: Worker, embedder: Any) -> None:
    conn.execute(EMAILS)
    long_body = " ".join(f"Frase número {i} sobre a proposta de automação de atendimento." for i in range(120))
    conn.execute(
        "insert into emails (message_id, remetente, assunto, corpo, caixa, headers) values"
        " ('<a@x>', 'ana@acme.com', 'Proposta', %s, 'vendas', '{\"lang\": \"pt\"}'),"
        " ('<b@x>', 'rui@globex.com', 'Suporte', 'A impressora não liga desde ontem.', 'suporte', '{}')",
        (long_body,),
    )
    source, _ = add_source(
        conn, name="emails", table="public.emails", text="assunto, corpo", chunked=True, metadata=["caixa", "headers"]
    )
    report = worker.drain(conn)
    assert report.embedded == 2 and report.chunks > 2
    chunk = conn.execute("select * from emails_chunks where emails_key = '<a@x>' order by chunk_index limit 1")
    metadata = chunk.fetchone()["metadata"]
    assert metadata == {"caixa": "vendas", "lang": "pt", "emails_key": "<a@x>", "chunk_index": 0}
    hits = search_source(conn, embedder, source, "impressora quebrada", k=3, filter={"caixa": "suporte"})
    assert [h["emails_key"] for h in hits] == ["<b@x>"]
    # LangChain's call, from SQL.
    rows = conn.execute(
        "select * from match_emails(query_embedding => %s, match_count => 2, filter => '{\"caixa\": \"vendas\"}')",
        (embedder.embed(["automação"])[0],),
    ).fetchall()
    assert len(rows) == 2 and all(r["metadata"]["caixa"] == "vendas" for r in rows)
    conn.execute("delete from emails where message_id = '<a@x>'")
    assert conn.execute("select count(*) as n from emails_chunks where emails_key = '<a@x>'").fetchone()["n"] == 0


def test_source_remove_leaves_nothing_behind(conn: Any, worker: Worker) -> None:
    conn.execute(EMAILS)
    conn.execute(TICKETS)
    conn.execute("insert into emails (message_id, remetente, corpo) values ('<c@x>', 'x@y', 'olá')")
    conn.execute("insert into tickets (titulo) values ('um'), ('dois')")
    add_source(conn, name="emails", table="emails", text="corpo", chunked=True)
    add_source(conn, name="tickets", table="tickets", text="titulo")
    worker.drain(conn, ["emails"])
    remove_source(conn, "emails")
    remove_source(conn, "tickets", drop_columns=True)
    assert conn.execute("select to_regclass('public.emails_chunks') as t").fetchone()["t"] is None
    assert conn.execute("select count(*) as n from pg_trigger where tgrelid in ('emails'::regclass, 'tickets'::regclass)"
                        " and not tgisinternal").fetchone()["n"] == 0  # fmt: skip
    assert conn.execute("select to_regproc('public.match_emails') as f").fetchone()["f"] is None
    assert queued(conn, "tickets") == 0 and queued(conn, "emails") == 0
    columns = {r["attname"] for r in conn.execute("select attname from pg_attribute where attrelid = 'tickets'::regclass")}
    assert "embedding" not in columns and "content_hash" not in columns
    assert sorted(s.name for s in load_sources(conn)) == ["documents", "dores"]
    conn.execute("insert into tickets (titulo) values ('três')")  # no trigger left: nothing queued
    assert queued(conn, "tickets") == 0


def test_bad_sources_are_refused_whole(conn: Any) -> None:
    conn.execute(LEADS)
    conn.execute("create table public.nokey (texto text)")
    conn.execute("create table public.composite (a int, b int, texto text, primary key (a, b))")
    cases = {
        "does not work on public.leads": dict(name="leads", table="leads", text="assunto ||| corpo"),
        "reads no column": dict(name="leads", table="leads", text="'constante'"),
        'column "nada" does not exist': dict(name="leads", table="leads", text="nada"),
        "needs a primary key": dict(name="nokey", table="nokey", text="texto"),
        "primary key of one column": dict(name="composite", table="composite", text="texto"),
        "no such table": dict(name="ghost", table="public.ghost", text="x"),
        "exists already": dict(name="dores", table="leads", text="assunto"),
        "already the table of source dores": dict(name="outra", table="dores", text="dor_base"),
        "use lowercase": dict(name="Leads!", table="leads", text="assunto"),
        "applies to chunked": dict(name="leads", table="leads", text="assunto", metadata=["empresa"]),
        "no such text search configuration": dict(name="leads", table="leads", text="assunto", language="klingon"),
    }
    for message, kwargs in cases.items():
        with pytest.raises(InputError, match=message):
            add_source(conn, **kwargs)  # type: ignore[arg-type]
    columns = {r["attname"] for r in conn.execute("select attname from pg_attribute where attrelid = 'leads'::regclass")}
    assert "embedding" not in columns
    assert sorted(s.name for s in load_sources(conn)) == ["documents", "dores"]


def test_a_row_whose_text_raises_fails_alone_and_a_dropped_table_does_not_stop_the_others(
    conn: Any, worker: Worker
) -> None:
    conn.execute("create table public.medidas (id int primary key, valor int, nome text)")
    conn.execute("insert into medidas values (1, 2, 'a'), (2, 0, 'b'), (3, 5, 'c')")
    add_source(conn, name="medidas", table="medidas", text="nome || (10 / valor)::text")
    report = worker.drain(conn)
    assert report.embedded == 2 and report.failed == 1
    error = conn.execute("select row_id, error from pipeline.failed where source = 'medidas'").fetchone()
    assert error["row_id"] == "2" and "division by zero" in error["error"]
    conn.execute(TICKETS)
    add_source(conn, name="tickets", table="tickets", text="titulo")
    conn.execute("insert into medidas values (4, 1, 'd')")
    conn.execute("drop table medidas")
    conn.execute("insert into tickets (titulo) values ('continua')")
    assert worker.drain(conn).embedded == 1
    assert queued(conn, "medidas") == 1  # kept until the source is removed
    from pipeline.status import status

    assert "source medidas: table public.medidas is gone (`pipeline source remove`)" in status(conn)["warnings"]
    remove_source(conn, "medidas")
    assert queued(conn, "medidas") == 0


def test_sources_take_turns_a_backlog_does_not_starve_another(db_url: str, embedder: Any, settings: Any) -> None:
    with connect(db_url) as conn:
        conn.execute(LEADS)
        conn.execute(TICKETS)
        add_source(conn, name="leads", table="leads", text="empresa, mensagem")
        add_source(conn, name="tickets", table="tickets", text="titulo")
        conn.execute(
            "insert into leads (empresa, mensagem) select 'Empresa ' || g, 'Mensagem de contato número ' || g"
            " from generate_series(1, 20000) g"
        )
    worker = Worker(embedder=embedder, settings=settings.__class__(claim_size=256))
    stop = threading.Event()
    with connect(db_url) as conn, connect(db_url) as spare, connect(db_url) as watcher:
        thread = threading.Thread(target=worker.drain, args=(conn,), kwargs={"spare": spare, "stop": stop})
        thread.start()
        try:
            leads_embedded = "select count(*) as n from leads where embedding is not null"
            wait_until(lambda: watcher.execute(leads_embedded).fetchone()["n"], 120, "the leads backlog worked on")
            watcher.execute("insert into tickets (titulo) values ('Sistema fora do ar')")
            ticket = "select embedded_at from tickets where embedded_at is not null"
            wait_until(lambda: watcher.execute(ticket).fetchone(), 120, "the ticket embedded")
            left = count_ready(watcher, ["leads"])
        finally:
            stop.set()
            thread.join()
    # Taking turns is the behaviour; how long a turn takes is the model's speed (bench/throughput.py).
    assert left > 15_000, "the ticket waited for the leads backlog"


def test_segments_for_a_uuid_source_live_beside_the_dores_ones(conn: Any, worker: Worker, embedder: Any) -> None:
    from pipeline.segments import classify, fit_database, list_segments

    conn.execute(LEADS)
    add_source(conn, name="leads", table="leads", text="mensagem")
    conn.execute(
        "insert into leads (empresa, mensagem) select 'Empresa ' || g, case when g % 2 = 0"
        " then 'Pacientes faltam às consultas da clínica ' || g else 'Caminhões da frota gastam diesel ' || g end"
        " from generate_series(1, 40) g"
    )
    conn.execute("insert into dores (dor_base) select 'dor ' || g from generate_series(1, 10) g")
    worker.drain(conn)
    dores = fit_database(conn, clusters=2)
    leads = fit_database(conn, source="leads", clusters=2)
    assert leads.model_id != dores.model_id and leads.n_rows == 40
    groups = conn.execute(
        "select count(distinct segmento) as n from leads group by mensagem like 'Pacientes%'"
    ).fetchall()
    assert [g["n"] for g in groups] == [1, 1]  # each theme in one segment
    conn.execute("insert into leads (empresa, mensagem) values ('Nova', 'Pacientes faltam às consultas')")
    worker.drain(conn)
    new = conn.execute("select segmento from leads where empresa = 'Nova'").fetchone()["segmento"]
    same = conn.execute("select segmento from leads where mensagem like 'Pacientes%' limit 1").fetchone()["segmento"]
    assert new == same
    assert classify(conn, embedder, "consultas canceladas pelos pacientes", source="leads")["segmento"] == same
    listed = list_segments(conn, source="leads")
    assert len(listed) == 2 and sum(s["size"] for s in listed) == 40
    # The dores' model is still the one dores use.
    assert {s["segmento"] for s in list_segments(conn)} <= {0, 1}
    assert conn.execute("select count(*) as n from current_segments").fetchone()["n"] == 2


def test_a_row_source_gets_hybrid_search_where_rare_words_count_more(
    conn: Any, worker: Worker, embedder: Any
) -> None:
    conn.execute("create table public.chamados (id int primary key, assunto text)")
    conn.execute(
        "insert into chamados values (1, 'Cliente reclama da fatura'), (2, 'Cliente pede segunda via do boleto'),"
        " (3, 'Cliente quer cancelar o contrato'), (4, 'Impressora da recepção sem toner')"
    )
    source, _ = add_source(conn, name="chamados", table="public.chamados", text="assunto")
    assert worker.drain(conn).embedded == 4
    vector = embedder.embed(["cliente impressora"])[0]
    # Words alone: "impressora" is in one row, "cliente" in three, so the rare word's row comes first.
    words = conn.execute(
        "select id, score from match_chamados_hybrid('cliente impressora', %s, 4, semantic_weight => 0)", (vector,)
    ).fetchall()
    assert [row["id"] for row in words][:1] == ["4"] and words[0]["score"] > words[1]["score"] > 0
    hits = search_source(conn, embedder, source, "cliente quer cancelar", k=2)  # hybrid by default
    assert hits[0]["id"] == "3" and hits[0]["score"] > hits[1]["score"]
    assert set(hits[0]) == {"id", "content", "similarity", "score"}
    remove_source(conn, "chamados")
    assert conn.execute("select to_regproc('public.match_chamados_hybrid') as f").fetchone()["f"] is None


def test_a_chunked_source_gets_hybrid_search_in_its_own_language(conn: Any, worker: Worker, embedder: Any) -> None:
    conn.execute("create table public.tickets_en (id bigint primary key, body text)")
    conn.execute(
        "insert into tickets_en values (1, 'The printers on the third floor keep jamming'),"
        " (2, 'Invoice XR-2047 was charged twice'), (3, 'Password reset emails never arrive')"
    )
    source, _ = add_source(conn, name="tickets_en", table="public.tickets_en", text="body", chunked=True, language="english")
    assert worker.drain(conn).embedded == 3
    vector = embedder.embed(["printer jams"])[0]
    # English stems: "printer jams" matches "printers ... jamming", which Portuguese stemming would not.
    rows = conn.execute("select * from match_tickets_en_hybrid('printer jams', %s, 3)", (vector,)).fetchall()
    assert "printers" in rows[0]["content"] and rows[0]["score"] > rows[-1]["score"]
    found = search_source(conn, embedder, source, "XR-2047", k=1, hybrid=True)
    assert "XR-2047" in found[0]["content"] and "score" in found[0]
    assert conn.execute("select count(*) as n from tickets_en_chunks where fts @@ to_tsquery('english', 'jam')").fetchone()["n"] == 1
    remove_source(conn, "tickets_en")
    assert conn.execute("select to_regproc('public.match_tickets_en_hybrid') as f").fetchone()["f"] is None


def test_migrate_gives_older_sources_the_new_search_functions_and_keeps_their_grants(
    conn: Any, worker: Worker, embedder: Any
) -> None:
    from pipeline.migrations import migrate

    conn.execute(TICKETS)
    conn.execute("insert into tickets (titulo) values ('Impressora sem toner'), ('Cliente quer cancelar')")
    add_source(conn, name="tickets", table="tickets", text="titulo")
    worker.drain(conn)
    # As a source added by an older version: no hybrid function, and an owner's revoke on match_tickets.
    conn.execute("drop function public.match_tickets_hybrid")
    reader = f"reader_{uuid.uuid4().hex[:8]}"
    conn.execute(f"create role {reader}")
    conn.execute("revoke execute on function public.match_tickets(vector, int) from public")
    conn.execute("create table public.gone (id int primary key, t text)")
    add_source(conn, name="gone", table="gone", text="t")
    conn.execute("drop table gone")  # its functions cannot be recreated: migrate goes on without them
    migrate(conn)
    (source,) = load_sources(conn, ["tickets"])
    hits = search_source(conn, embedder, source, "impressora", k=1)
    assert hits[0]["content"] == "Impressora sem toner" and hits[0]["score"] != hits[0]["similarity"]
    allowed = conn.execute(
        "select has_function_privilege(%s, 'public.match_tickets(vector, int)', 'execute') as ok", (reader,)
    ).fetchone()["ok"]
    conn.execute(f"drop role {reader}")
    assert allowed is False
