"""`pipeline source ...` as n8n or an operator runs it, and the daemon picking a new source up by itself."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.db import connect
from tests.cli.test_daemon import start, wait_for_line
from tests.conftest import daemon_thread, invoke, wait_until

TICKETS = "create table public.tickets (id bigint generated always as identity primary key, titulo text, corpo text)"


def test_source_add_list_search_status_remove(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute(
            "create table public.leads (id uuid primary key default gen_random_uuid(), empresa text, mensagem text)"
        )
        conn.execute(
            "insert into leads (empresa, mensagem) values ('Clínica', 'Pacientes faltam às consultas'),"
            " ('Frota', 'Caminhões gastam diesel demais')"
        )
    added = invoke("source", "add", "leads", "--table", "public.leads", "--text", "empresa, mensagem", db_url=db_url)
    assert added.returncode == 0, added.stderr
    assert "row source on public.leads (key id uuid)" in added.stdout and "2 rows queued" in added.stdout
    listed = json.loads(invoke("source", "list", "--json", db_url=db_url).stdout)
    assert {s["name"] for s in listed} == {"dores", "documents", "leads"}
    synced = invoke("sync", "--source", "leads", "--json", db_url=db_url)
    assert synced.returncode == 0 and json.loads(synced.stdout)["embedded"] == 2, synced.stderr
    found = invoke("search", "agenda de pacientes", "--source", "leads", "-k", "1", "--json", db_url=db_url)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["content"].startswith("Clínica")
    status = invoke("status", "--json", db_url=db_url)
    rows = {t["table"]: t for t in json.loads(status.stdout)["tables"]}
    assert rows["leads"]["embedded"] == 2 and rows["leads"]["pending"] == 0
    assert "leads" in invoke("status", db_url=db_url).stdout
    bad = invoke("source", "add", "tickets", "--table", "public.nada", "--text", "x", db_url=db_url)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "pipeline: error: --table public.nada: no such table (give SCHEMA.TABLE)"
    ]
    unknown = invoke("sync", "--source", "nada", db_url=db_url)
    assert unknown.returncode == 1 and "no source named nada" in unknown.stderr
    removed = invoke("source", "remove", "leads", "--drop-columns", db_url=db_url)
    assert removed.returncode == 0, removed.stderr
    assert "leads" not in invoke("status", db_url=db_url).stdout


def test_a_running_daemon_picks_up_a_new_source_and_embeds_on_its_notification(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute(TICKETS)
    with daemon_thread(db_url):
        added = invoke("source", "add", "tickets", "--table", "tickets", "--text", "titulo, corpo", db_url=db_url)
        assert added.returncode == 0, added.stderr
        with connect(db_url) as conn:
            conn.execute("insert into tickets (titulo, corpo) values ('Sistema fora do ar', 'Desde as 8h')")
            # Long before the 300 s poll: the notification woke it (bench/throughput.py times commit to embedded).
            embedded = "select embedded_at from tickets where embedded_at is not null"
            wait_until(lambda: conn.execute(embedded).fetchone(), 60, "the ticket embedded")
            # An update of a column the text does not read is not work.
            conn.execute("alter table tickets add column prioridade int")
            conn.execute("update tickets set prioridade = 1")
            assert conn.execute("select count(*) as n from pipeline.queue").fetchone()["n"] == 0


@pytest.mark.slow
def test_kill_9_mid_batch_on_a_chunked_source_loses_and_duplicates_nothing(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute("create table public.emails (message_id text primary key, assunto text, corpo text)")
        conn.execute(
            "insert into emails select '<' || g || '@x>', 'Assunto ' || g,"
            " repeat('Texto longo do e-mail número ' || g || '. ', 60) from generate_series(1, 48) g"
        )
    assert invoke("source", "add", "emails", "--table", "emails", "--text", "assunto, corpo", "--chunked",
                  db_url=db_url).returncode == 0  # fmt: skip
    sync = start(["sync", "--source", "emails"], db_url, PIPELINE_CLAIM_SIZE="16")
    wait_for_line(sync, "emails:")  # one batch committed, others in flight
    sync.kill()
    sync.wait()
    again = invoke("sync", db_url=db_url)
    assert again.returncode == 0, again.stderr
    with connect(db_url) as conn:
        counts: Any = conn.execute(
            "select count(*) as emails, count(*) filter (where embedded_at is not null) as embedded,"
            " (select count(*) from pipeline.queue) as queued,"
            " (select count(*) from (select emails_key, chunk_index from emails_chunks"
            "  group by 1, 2 having count(*) > 1) d) as duplicated,"
            " (select count(distinct emails_key) from emails_chunks) as with_chunks from emails"
        ).fetchone()
    assert counts == {"emails": 48, "embedded": 48, "queued": 0, "duplicated": 0, "with_chunks": 48}
