"""Sync against the real PostgreSQL + pgvector and the real MiniLM model."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from pipeline.db import connect
from pipeline.errors import ModelMismatchError
from pipeline.model import check_model, record_model
from pipeline.worker import Worker


def insert(conn: Any, *rows: tuple[str, str | None]) -> list[int]:
    ids = []
    for dor, solucao in rows:
        row = conn.execute(
            "insert into dores (dor_base, solucao_graventum) values (%s, %s) returning id", (dor, solucao)
        ).fetchone()
        ids.append(row["id"])
    return ids


def stored(conn: Any, row_id: int) -> dict[str, Any]:
    return conn.execute("select * from dores where id = %s", (row_id,)).fetchone()


def queue(conn: Any) -> list[tuple[str, int]]:
    return [(r["source"], int(r["row_id"])) for r in conn.execute("select source, row_id from pipeline.queue")]


def test_vectors_equal_the_models_own(conn: Any, worker: Worker, embedder: Any) -> None:
    texts = [
        ("Fechamento contábil atrasa todo mês", "Automação da conciliação bancária"),
        ("Pacientes faltam às consultas", None),
        ("Clientes abandonam o carrinho", ""),
    ]
    ids = insert(conn, *texts)
    report = worker.drain(conn)
    assert report.embedded == 3
    assert queue(conn) == []
    model = embedder.model
    for row_id, (dor, solucao) in zip(ids, texts, strict=True):
        row = stored(conn, row_id)
        expected_text = f"{dor}\n{solucao}" if solucao else dor
        expected = model.encode([expected_text], normalize_embeddings=True)[0]
        got = np.asarray(row["embedding"].to_numpy(), dtype=np.float32)
        assert float(np.dot(got, expected)) >= 0.999
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-4
        assert row["embedding_model"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert row["embedded_at"] is not None


def test_changed_text_is_reembedded_and_other_columns_are_not(conn: Any, worker: Worker, embedder: Any) -> None:
    (row_id,) = insert(conn, ("Estoque não bate", "Integração de estoque"))
    worker.drain(conn)
    first = stored(conn, row_id)

    conn.execute('update dores set metadata = \'{"setor": "varejo"}\', segmento = 3 where id = %s', (row_id,))
    assert queue(conn) == []
    conn.execute("update dores set dor_base = dor_base where id = %s", (row_id,))  # same text
    assert queue(conn) == []

    conn.execute("update dores set dor_base = 'Entregas atrasam sempre' where id = %s", (row_id,))
    assert queue(conn) == [("dores", row_id)]
    assert worker.drain(conn).embedded == 1
    second = stored(conn, row_id)
    expected = embedder.model.encode(["Entregas atrasam sempre\nIntegração de estoque"], normalize_embeddings=True)[0]
    assert float(np.dot(second["embedding"].to_numpy(), expected)) >= 0.999
    assert second["content_hash"] != first["content_hash"]


def test_unchanged_text_is_not_reembedded(conn: Any, worker: Worker) -> None:
    (row_id,) = insert(conn, ("Fila no caixa", None))
    worker.drain(conn)
    before = stored(conn, row_id)["embedded_at"]
    # Queue it by hand (as backfill would): the hash matches, so nothing is embedded.
    conn.execute("insert into pipeline.queue (source, row_id) values ('dores', %s)", (row_id,))
    report = worker.drain(conn)
    assert (report.embedded, report.unchanged) == (0, 1)
    assert stored(conn, row_id)["embedded_at"] == before
    assert queue(conn) == []


def test_identical_texts_in_a_batch_are_embedded_once(embedder: Any) -> None:
    calls: list[int] = []
    original = embedder.model.encode

    def counting(texts: list[str], **kwargs: Any) -> Any:
        calls.append(len(texts))
        return original(texts, **kwargs)

    embedder.model.encode = counting
    try:
        vectors = embedder.embed(["a mesma dor", "outra dor", "a mesma dor"])
    finally:
        embedder.model.encode = original
    assert calls == [2]
    assert np.allclose(vectors[0], vectors[2])


def test_batches_group_texts_of_similar_token_counts(embedder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    words = ["estoque", "nota", "fiscal", "atraso", "cliente", "entrega", "margem", "caixa"]
    texts = [" ".join(words[: 1 + i % 8] * (1 + i % 5)) for i in range(150)]
    tokens = [embedder.count_tokens(text) for text in texts]
    size = 64
    monkeypatch.setattr(embedder, "batch_size", size)
    batches = embedder._batches(texts)
    assert all(len(b) <= size for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(150))
    for longer, shorter in itertools.pairwise(batches):
        assert min(tokens[i] for i in longer) >= max(tokens[i] for i in shorter)
    # Fewer tokens computed (each pass pads to its longest text) than passes cut every `size` texts.
    by_length = sorted(tokens, reverse=True)
    computed = sum(len(b) * max(tokens[i] for i in b) for b in batches)
    assert computed < sum(min(size, 150 - start) * by_length[start] for start in range(0, 150, size))
    # Regrouping changes no vector: each equals the model's own embedding of that text alone.
    vectors = embedder.embed(texts)
    for i in (0, 37, 149):
        expected = embedder.model.encode([texts[i]], normalize_embeddings=True)[0]
        assert float(np.dot(vectors[i], expected)) >= 0.999


def test_delete_leaves_nothing_behind(conn: Any, worker: Worker) -> None:
    ids = insert(conn, ("um", None), ("dois", None))
    conn.execute("delete from dores where id = %s", (ids[0],))  # deleted before its sync
    report = worker.drain(conn)
    assert (report.embedded, report.deleted) == (1, 1)
    assert queue(conn) == []
    conn.execute("delete from dores")
    assert conn.execute("select count(*) as n from dores").fetchone()["n"] == 0


def test_truncate_clears_the_queue(conn: Any) -> None:
    insert(conn, ("um", None), ("dois", None))
    conn.execute("truncate dores")
    assert queue(conn) == []


def test_text_changed_while_embedding_is_embedded_again(conn: Any, db_url: str, embedder: Any, settings: Any) -> None:
    (row_id,) = insert(conn, ("texto antigo", None))
    record_model(conn, embedder)

    def change_row(source: str, ids: Any) -> None:
        # Another client commits a new text after the worker read the old one.
        with connect(db_url) as other:
            other.execute("update dores set dor_base = 'texto novo' where id = %s", (row_id,))

    racing = Worker(embedder=embedder, settings=settings, before_write=change_row)
    report = racing.run_batch(conn, "dores")
    assert (report.embedded, report.requeued) == (0, 1)
    assert stored(conn, row_id)["embedding"] is None
    assert queue(conn) == [("dores", row_id)]

    Worker(embedder=embedder, settings=settings).drain(conn)
    row = stored(conn, row_id)
    expected = embedder.model.encode(["texto novo"], normalize_embeddings=True)[0]
    assert float(np.dot(row["embedding"].to_numpy(), expected)) >= 0.999
    assert queue(conn) == []


def test_bad_rows_are_embedded_or_failed_by_rule(conn: Any, worker: Worker) -> None:
    good = insert(conn, ("Dor normal de cliente", "Solução"))[0]
    empty = insert(conn, ("", None))[0]
    blank = insert(conn, ("   \n\t ", "  "))[0]
    huge = insert(conn, ("palavra " * 131_072, None))[0]  # 1 MiB
    emoji = insert(conn, ("Cliente bravo 😡🔥 com atraso 🚚", "Rastreamento ✅"))[0]
    mixed = insert(conn, ("مرحبا 你好 Olá — dor mista", None))[0]
    sqlish = insert(conn, ("'; drop table dores; --", None))[0]
    report = worker.drain(conn)
    assert report.embedded == 5
    assert report.failed == 2
    for row_id in (good, huge, emoji, mixed, sqlish):
        assert stored(conn, row_id)["embedding"] is not None
    failed = {
        r["row_id"]: r["error"] for r in conn.execute("select row_id::bigint as row_id, error from pipeline.failed")
    }
    assert set(failed) == {empty, blank}
    assert all("empty text" in error for error in failed.values())
    assert queue(conn) == []
    # Fixing the text takes the row out of `failed` and queues it again.
    conn.execute("update dores set dor_base = 'agora tem texto' where id = %s", (empty,))
    assert (
        conn.execute("select count(*) as n from pipeline.failed where row_id = %s", (str(empty),)).fetchone()["n"] == 0
    )
    assert worker.drain(conn).embedded == 1


def test_poison_row_backs_off_then_fails_and_others_go_on(
    conn: Any, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker.embedder, "poison_marker", "VENENO")
    ids = insert(conn, ("linha boa um", None), ("linha VENENO", None), ("linha boa dois", None))
    first = worker.run_batch(conn, "dores")
    assert (first.embedded, first.retried) == (2, 1)
    attempt = conn.execute("select attempts, last_error from pipeline.queue").fetchone()
    assert attempt["attempts"] == 1 and "poison" in attempt["last_error"]
    worker.drain(conn)  # retry_delay is 0 in tests: tries until max_attempts (3)
    failed = conn.execute("select row_id::bigint as row_id, attempts, error from pipeline.failed").fetchall()
    assert [(r["row_id"], r["attempts"]) for r in failed] == [(ids[1], 3)]
    assert queue(conn) == []
    assert stored(conn, ids[0])["embedding"] is not None and stored(conn, ids[2])["embedding"] is not None


def test_retry_waits_for_its_backoff(conn: Any, embedder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import Settings

    record_model(conn, embedder)
    slow = Worker(embedder=embedder, settings=Settings(retry_delay=60.0))
    monkeypatch.setattr(embedder, "poison_marker", "VENENO")
    insert(conn, ("VENENO", None))
    assert slow.drain(conn).retried == 1
    assert slow.drain(conn).claimed == 0  # not due for a minute
    delay = conn.execute("select extract(epoch from next_attempt_at - now()) as s from pipeline.queue").fetchone()
    assert 50 < delay["s"] <= 60


def test_model_mismatch_is_refused(conn: Any, worker: Worker) -> None:
    with pytest.raises(ModelMismatchError, match=r"pipeline reembed --model other/model"):
        check_model(conn, "other/model")


def test_documents_are_chunked_and_replaced(conn: Any, worker: Worker, embedder: Any) -> None:
    paragraph = "A clínica perde pacientes porque a agenda é confusa e ninguém confirma as consultas. " * 12
    body = "\n\n".join([paragraph, paragraph.replace("clínica", "escola"), paragraph.replace("clínica", "fábrica")])
    doc = conn.execute(
        "insert into documents (title, content, metadata) values ('Proposta', %s, '{\"cliente\": \"x\"}') returning id",
        (body,),
    ).fetchone()["id"]
    report = worker.drain(conn)
    assert report.embedded == 1 and report.chunks >= 3
    chunks = conn.execute(
        "select * from document_chunks where document_id = %s order by chunk_index", (doc,)
    ).fetchall()
    assert [c["chunk_index"] for c in chunks] == list(range(len(chunks)))
    assert worker.chunk_tokens == 128  # the default, below this model's window of 254
    assert all(embedder.count_tokens(c["content"]) <= 128 for c in chunks)
    assert chunks[0]["metadata"] == {"cliente": "x", "document_id": doc, "title": "Proposta", "chunk_index": 0}

    conn.execute("update documents set content = 'Texto curto agora.' where id = %s", (doc,))
    worker.drain(conn)
    after = conn.execute("select content from document_chunks where document_id = %s", (doc,)).fetchall()
    assert [c["content"] for c in after] == ["Proposta\n\nTexto curto agora."]
    conn.execute("delete from documents where id = %s", (doc,))
    assert conn.execute("select count(*) as n from document_chunks").fetchone()["n"] == 0


def test_overlapped_drain_embeds_every_row_once(conn: Any, db_url: str, worker: Worker, embedder: Any) -> None:
    conn.execute("insert into dores (dor_base) select 'dor de teste ' || g from generate_series(1, 500) g")
    with connect(db_url) as spare:
        report = worker.drain(conn, spare=spare)
    assert report.embedded == 500 and report.batches == 8  # claim_size 64
    assert conn.execute("select count(*) as n from dores where embedding is null").fetchone()["n"] == 0
    assert queue(conn) == []
    row = conn.execute("select dor_base, embedding from dores order by id desc limit 1").fetchone()
    expected = embedder.model.encode([row["dor_base"]], normalize_embeddings=True)[0]
    assert float(np.dot(row["embedding"].to_numpy(), expected)) >= 0.999


def test_overlapped_drain_redoes_rows_changed_mid_batch(conn: Any, db_url: str, embedder: Any, settings: Any) -> None:
    ids = insert(conn, *[(f"versão antiga {i}", None) for i in range(100)])
    record_model(conn, embedder)
    changed: list[int] = []

    def change_once(source: str, batch_ids: Any) -> None:
        if not changed:
            changed.append(batch_ids[0])
            with connect(db_url) as other:
                other.execute("update dores set dor_base = 'versão nova' where id = %s", (batch_ids[0],))

    racing = Worker(embedder=embedder, settings=settings, before_write=change_once)
    with connect(db_url) as spare:
        report = racing.drain(conn, spare=spare)
    assert report.requeued == 1 and report.embedded == 100
    assert stored(conn, changed[0])["content_hash"] is not None
    expected = embedder.model.encode(["versão nova"], normalize_embeddings=True)[0]
    assert float(np.dot(stored(conn, changed[0])["embedding"].to_numpy(), expected)) >= 0.999
    assert queue(conn) == [] and len(ids) == 100


def test_overlapped_drain_with_a_poison_row(
    conn: Any, db_url: str, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker.embedder, "poison_marker", "VENENO")
    insert(conn, *[(f"linha {i}", None) for i in range(150)], ("linha VENENO", None))
    with connect(db_url) as spare:
        report = worker.drain(conn, spare=spare)
    assert report.embedded == 150 and report.failed == 1 and report.retried == 2
    assert queue(conn) == []


def test_huge_document_is_refused_by_rule(conn: Any, worker: Worker) -> None:
    huge = conn.execute(
        "insert into documents (title, content) values ('Enorme', repeat('palavra ', 655360)) returning id"
    ).fetchone()["id"]  # 5 MiB
    small = conn.execute(
        "insert into documents (title, content) values ('Curto', 'Texto curto.') returning id"
    ).fetchone()["id"]
    report = worker.drain(conn)
    assert report.embedded == 1 and report.failed == 1
    failed = conn.execute("select row_id::bigint as row_id, error from pipeline.failed").fetchall()
    assert failed[0]["row_id"] == huge and "document too long: 5242888 characters" in failed[0]["error"]  # title too
    assert (
        conn.execute("select count(*) as n from document_chunks where document_id = %s", (small,)).fetchone()["n"] == 1
    )
    assert queue(conn) == []


def test_asynchronous_commits_still_write_every_row_once(conn: Any, embedder: Any) -> None:
    from pipeline.config import Settings

    worker = Worker(embedder=embedder, settings=Settings(synchronous_commit="off", claim_size=16))
    insert(conn, *[(f"dor assíncrona {i}", None) for i in range(40)])
    assert worker.drain(conn).embedded == 40
    assert conn.execute("select count(*) as n from dores where embedding is null").fetchone()["n"] == 0
    assert conn.execute("show synchronous_commit").fetchone()["synchronous_commit"] == "on"  # only the batches'
