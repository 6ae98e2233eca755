"""Claim, embed, write, retry, dead-letter: the only place that writes vectors.

One batch is one transaction: claim queue rows (`FOR UPDATE SKIP LOCKED`), read their texts, embed,
COPY the vectors into a temp table, write them with one UPDATE ... FROM (or replace a document's chunks),
delete the claimed queue rows. A crash anywhere rolls everything back and the rows are claimed again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.chunking import chunk_text
from pipeline.config import Settings
from pipeline.db import Connection, query, translate_errors
from pipeline.embedding import Embedder, ResolvedModel
from pipeline.errors import ModelMismatchError, PipelineError, RowSecurityError

logger = logging.getLogger(__name__)

SOURCES = ("dores", "documents")
RETRY_CAP_S = 600.0


@dataclasses.dataclass
class SyncReport:
    """What one or more batches did, by row."""

    embedded: int = 0
    unchanged: int = 0
    deleted: int = 0
    requeued: int = 0
    retried: int = 0
    failed: int = 0
    chunks: int = 0
    batches: int = 0
    seconds: float = 0.0
    source: str = ""

    def add(self, other: SyncReport) -> None:
        for field in dataclasses.fields(self):
            if field.name != "source":
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    @property
    def claimed(self) -> int:
        return self.embedded + self.unchanged + self.deleted + self.requeued + self.retried + self.failed

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["seconds"] = round(self.seconds, 3)
        data.pop("source")
        return data


def retry_delay(attempts: int, base: float) -> float:
    """Seconds before the next try of a row that failed `attempts` times (exponential, capped)."""
    return float(min(base * 2 ** max(attempts - 1, 0), RETRY_CAP_S))


def recorded_model(conn: Connection) -> tuple[str | None, int | None]:
    """Model name and dimension recorded in `pipeline.state` (None before the first sync)."""
    with translate_errors():
        state = {row["key"]: row["value"] for row in conn.execute(query("get_state"))}
    dimension = state.get("dimension")
    return state.get("model"), int(dimension) if dimension else None


def check_model(conn: Connection, name: str) -> None:
    """Refuse a model other than the one the database was embedded with."""
    recorded, _ = recorded_model(conn)
    if recorded is not None and recorded != name:
        raise ModelMismatchError(
            f"this database is embedded with {recorded} but {name} is configured; "
            f"run `pipeline reembed --model {name}` to switch, or unset PIPELINE_MODEL to keep {recorded}"
        )


def record_model(conn: Connection, embedder: Embedder) -> None:
    """Record the model at the first sync; refuse if another one is recorded or the dimension differs."""
    with translate_errors():
        row = conn.execute(query("column_dimension")).fetchone()
        column = int(row["dimension"]) if row else -1
        if column > 0 and column != embedder.dimension:
            raise ModelMismatchError(
                f"{embedder.name} makes {embedder.dimension}-dimensional vectors but the tables hold "
                f"vector({column}); run `pipeline reembed --model {embedder.name}` to switch"
            )
        conn.execute(query("record_model"), {"model": embedder.name, "dimension": embedder.dimension})
    check_model(conn, embedder.name)


@dataclasses.dataclass
class Batch:
    """A claimed batch between its two phases: embedded, not yet written. Its transaction is open."""

    conn: Connection
    source: str
    claimed: dict[int, int]
    rows: list[dict[str, Any]]
    finished: set[int]
    report: SyncReport
    started: float
    texts: list[str] = dataclasses.field(default_factory=list)
    owners: list[int] = dataclasses.field(default_factory=list)
    vectors: Any = None
    errors: dict[int, str] = dataclasses.field(default_factory=dict)


class Worker:
    """Processes queue batches with one embedder; several workers may share a database.

    A batch has two phases in one transaction: `begin` (claim, read, embed: the model's time) and
    `finish` (write vectors, delete queue rows, commit: the database's time, mostly HNSW inserts).
    `drain` with a second connection overlaps the `finish` of one batch with the `begin` of the next.
    """

    def __init__(
        self,
        *,
        embedder: Embedder,
        settings: Settings,
        before_write: Callable[[str, Sequence[int]], None] | None = None,
    ) -> None:
        self.embedder = embedder
        self.settings = settings
        self.chunk_tokens = settings.chunk_tokens or max(embedder.max_tokens - 2, 8)
        # Called after embedding and before writing (tests use it to change rows mid-batch).
        self.before_write = before_write

    # -- one batch -------------------------------------------------------------------------------

    def run_batch(self, conn: Connection, source: str, limit: int | None = None) -> SyncReport:
        """Claim and process up to `limit` rows of `source` in one transaction."""
        batch = self.begin(conn, source, limit)
        return self.finish(batch) if batch else SyncReport()

    def begin(self, conn: Connection, source: str, limit: int | None = None) -> Batch | None:
        """Open a transaction, claim rows, read and embed them; None (and no transaction) if none is ready."""
        started = time.perf_counter()
        if limit is None:
            limit = self.settings.claim_size if source == "dores" else max(self.settings.claim_size // 16, 1)
        with translate_errors():
            conn.execute("begin")
            try:
                claimed = {
                    row["row_id"]: row["attempts"]
                    for row in conn.execute(query("claim"), {"source": source, "limit": limit})
                }
                if not claimed:
                    conn.rollback()
                    return None
                read = "read_dores" if source == "dores" else "read_documents"
                rows = conn.execute(query(read), {"ids": list(claimed), "model": self.embedder.name}).fetchall()
                missing = set(claimed) - {r["id"] for r in rows}
                if missing:
                    check_deleted(conn, source, missing)
                batch = Batch(conn, source, claimed, [], missing, SyncReport(source=source), started)
                batch.report.deleted = len(batch.finished)  # source row gone: nothing to do
                for row in rows:
                    if row["current"]:
                        batch.finished.add(row["id"])
                        batch.report.unchanged += 1
                    elif not row["text"].strip():
                        self._fail(batch, row["id"], "empty text: nothing to embed", permanent=True)
                    elif source == "documents" and len(row["text"]) > self.settings.max_document_chars:
                        reason = (
                            f"document too long: {len(row['text'])} characters, the limit is "
                            f"{self.settings.max_document_chars} (PIPELINE_MAX_DOCUMENT_CHARS); split it"
                        )
                        self._fail(batch, row["id"], reason, permanent=True)
                    else:
                        batch.rows.append(row)
                self._embed(batch)
            except BaseException:
                conn.rollback()
                raise
        return batch

    def finish(self, batch: Batch) -> SyncReport:
        """Write the vectors of an embedded batch, delete its queue rows and commit."""
        conn, report = batch.conn, batch.report
        with translate_errors():
            try:
                if batch.rows and self.before_write:
                    self.before_write(batch.source, [row["id"] for row in batch.rows])
                if batch.rows:
                    written = self._write(batch)
                    batch.finished.update(written)
                    report.embedded = len(written)
                    report.requeued = len(batch.rows) - len(written) - len(batch.errors)
                for row_id, error in batch.errors.items():
                    self._fail(batch, row_id, error, permanent=batch.claimed[row_id] + 1 >= self.settings.max_attempts)
                if batch.finished:
                    conn.execute(query("delete_queue"), {"source": batch.source, "ids": list(batch.finished)})
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        report.batches = 1
        report.seconds = time.perf_counter() - batch.started
        if report.embedded:
            logger.info(
                "%s: %d rows embedded in %.2fs (%.0f rows/s)%s",
                batch.source,
                report.embedded,
                report.seconds,
                report.embedded / report.seconds,
                f", {report.chunks} chunks" if report.chunks else "",
            )
        if report.requeued:
            logger.info("%s: %d rows changed while embedding, queued again", batch.source, report.requeued)
        return report

    def _embed(self, batch: Batch) -> None:
        """Chunk (documents) and embed; a failing batch is retried owner by owner."""
        if batch.source == "dores":
            batch.texts = [row["text"] for row in batch.rows]
            batch.owners = [row["id"] for row in batch.rows]
        else:
            tokenizer = getattr(self.embedder, "tokenizer", None)
            for row in batch.rows:
                try:
                    pieces = chunk_text(
                        row["text"], tokenizer, max_tokens=self.chunk_tokens, overlap=self.settings.chunk_overlap
                    )
                except Exception as exc:
                    batch.errors[row["id"]] = f"chunking failed: {type(exc).__name__}: {exc}"[:1000]
                    continue
                batch.texts.extend(pieces)
                batch.owners.extend([row["id"]] * len(pieces))
        try:
            batch.vectors = self.embedder.embed(batch.texts)
            return
        except Exception as exc:  # a bad row, or a model problem: find out row by row
            logger.warning("batch of %d texts failed (%s); retrying row by row", len(batch.texts), exc)
        batch.vectors = np.zeros((len(batch.texts), self.embedder.dimension), dtype=np.float32)
        by_owner: dict[int, list[int]] = {}
        for position, owner in enumerate(batch.owners):
            by_owner.setdefault(owner, []).append(position)
        for owner, positions in by_owner.items():
            try:
                batch.vectors[positions] = self.embedder.embed([batch.texts[p] for p in positions])
            except Exception as exc:
                batch.errors[owner] = f"{type(exc).__name__}: {exc}"[:1000]

    def _write(self, batch: Batch) -> set[int]:
        """COPY the vectors into the staging table, then write them; return the ids written."""
        conn, errors = batch.conn, batch.errors
        conn.execute(query("create_staging"))
        hashes = {row["id"]: row["hash"] for row in batch.rows}
        params = {"model": self.embedder.name}
        if batch.source == "dores":
            with conn.cursor().copy(query("copy_dores")) as copy:
                copy.set_types(["int8", "vector", "text"])
                for owner, vector in zip(batch.owners, batch.vectors, strict=True):
                    if owner not in errors:
                        copy.write_row((owner, vector, hashes[owner]))
            return {r["id"] for r in conn.execute(query("write_dores"), params)}
        index, previous = 0, None
        with conn.cursor().copy(query("copy_chunks")) as copy:
            copy.set_types(["int8", "int4", "text", "vector", "text"])
            for owner, text, vector in zip(batch.owners, batch.texts, batch.vectors, strict=True):
                index = index + 1 if owner == previous else 0
                previous = owner
                if owner not in errors:
                    copy.write_row((owner, index, text, vector, hashes[owner]))
        written = {r["id"] for r in conn.execute(query("write_documents"), params)}
        if written:
            conn.execute(query("delete_chunks"), {"ids": list(written)})
            batch.report.chunks = conn.execute(query("insert_chunks"), {**params, "ids": list(written)}).rowcount
        return written

    def _fail(self, batch: Batch, row_id: int, error: str, *, permanent: bool) -> None:
        attempts = batch.claimed[row_id] + 1
        params = {"source": batch.source, "row_id": row_id, "error": error}
        if permanent:
            logger.warning("%s row %d failed for good after %d attempts: %s", batch.source, row_id, attempts, error)
            batch.conn.execute(query("move_to_failed"), params)
            batch.report.failed += 1
        else:
            delay = retry_delay(attempts, self.settings.retry_delay)
            logger.warning(
                "%s row %d failed (attempt %d), retrying in %.0fs: %s", batch.source, row_id, attempts, delay, error
            )
            batch.conn.execute(query("retry_later"), {**params, "delay": delay})
            batch.report.retried += 1

    # -- many batches ----------------------------------------------------------------------------

    def drain(
        self,
        conn: Connection,
        sources: Sequence[str] = SOURCES,
        *,
        spare: Connection | None = None,
        stop: threading.Event | None = None,
        on_batch: Callable[[SyncReport], None] | None = None,
    ) -> SyncReport:
        """Process batches until no row is ready (or `stop` is set); return the totals.

        With a `spare` connection, each batch is written and committed on a background thread while the
        next one is claimed and embedded on the other connection (SKIP LOCKED keeps them apart).
        """
        total = SyncReport()
        started = time.perf_counter()

        def collect(report: SyncReport) -> None:
            total.add(report)
            if on_batch:
                on_batch(report)

        if spare is None:
            active = list(sources)
            while active and not (stop and stop.is_set()):
                for source in list(active):
                    if stop and stop.is_set():
                        break
                    report = self.run_batch(conn, source)
                    if report.claimed == 0:
                        active.remove(source)
                    else:
                        collect(report)
            total.seconds = time.perf_counter() - started
            return total

        from concurrent.futures import Future, ThreadPoolExecutor

        connections = [conn, spare]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer") as writer:
            writing: Future[SyncReport] | None = None
            turn = 0
            while not (stop and stop.is_set()):
                batch = None
                try:
                    for source in sources:
                        batch = self.begin(connections[turn % 2], source)
                        if batch:
                            break
                finally:
                    in_flight, writing = writing, None
                    if in_flight is not None:
                        try:
                            collect(in_flight.result())
                        except BaseException:
                            if batch is not None:
                                batch.conn.rollback()
                            raise
                if batch is None:
                    if in_flight is not None:
                        continue  # its commit may have made rows ready again (changed text, retry now)
                    break
                writing = writer.submit(self.finish, batch)
                turn += 1
            if writing is not None:
                collect(writing.result())
        total.seconds = time.perf_counter() - started  # wall time: overlapped batches' own times add up to more
        return total


def check_deleted(conn: Connection, source: str, ids: set[int]) -> None:
    """Make sure rows the worker could not read are deleted, not hidden by row-level security.

    Only a deleted row's queue row may go; a hidden one's must stay, so the batch is refused instead.
    """
    row = conn.execute(query("existing_ids"), {"source": source, "ids": sorted(ids)}).fetchone()
    hidden = sorted(row["ids"]) if row and row["ids"] else []
    if hidden:
        shown = ", ".join(map(str, hidden[:5])) + (", ..." if len(hidden) > 5 else "")
        raise RowSecurityError(
            f"{len(hidden)} queued {source} rows exist but are hidden from this role by row-level security "
            f"(ids {shown}); their queue rows are kept. Give the worker BYPASSRLS (docs/security.md)"
        )


def count_ready(conn: Connection, sources: Sequence[str] = SOURCES) -> int:
    with translate_errors():
        row = conn.execute(query("count_ready"), {"sources": list(sources)}).fetchone()
    return int(row["n"]) if row else 0


def queue_stale(conn: Connection, *, sources: Sequence[str], model: str, rebuild: bool = False) -> int:
    """Queue every row whose vectors are missing or stale (or every row, with `rebuild`)."""
    queued = 0
    with translate_errors(), conn.transaction():
        for source in sources:
            if rebuild:
                conn.execute(query(f"forget_hashes_{source}"))
            queued += conn.execute(query(f"queue_stale_{source}"), {"model": model}).rowcount
    return queued


def database_model(conn: Connection, settings: Settings, *, require_recorded: bool = False) -> ResolvedModel:
    """The model to use with this database: the configured one, else the recorded one; a mismatch is refused."""
    from pipeline.embedding import resolve_model

    recorded, _ = recorded_model(conn)
    if require_recorded and recorded is None:
        raise PipelineError("nothing is embedded yet: run `pipeline sync` first")
    resolved = resolve_model(settings.model, recorded)
    check_model(conn, resolved.name)
    return resolved


def prepare_worker(
    conn: Connection,
    settings: Settings,
    *,
    before_write: Callable[[str, Sequence[int]], None] | None = None,
) -> Worker:
    """Resolve the model (refusing a mismatch before paying for a load), load it, record it."""
    from pipeline.embedding import load_embedder
    from pipeline.security import check_worker_access

    check_worker_access(conn)
    embedder = load_embedder(settings, database_model(conn, settings))
    record_model(conn, embedder)
    return Worker(embedder=embedder, settings=settings, before_write=before_write)


def switch_model(conn: Connection, embedder: Embedder) -> None:
    """Make `embedder` the database's model, changing the vector columns' dimension if it differs.

    Vectors of the old model stay searchable until re-embedded when the dimension is the same; with a
    new dimension they are cleared (they could not be compared with new queries anyway).
    """
    with translate_errors(), conn.transaction():
        row = conn.execute(query("column_dimension")).fetchone()
        column = int(row["dimension"]) if row else -1
        if column != embedder.dimension:
            logger.warning("changing vector columns from %d to %d dimensions", column, embedder.dimension)
            for statement in query("change_dimension").decode().split(";\n"):
                if statement.strip():
                    conn.execute(statement.replace("{dim}", str(int(embedder.dimension))).encode())
        conn.execute(query("set_model"), {"model": embedder.name, "dimension": embedder.dimension})
