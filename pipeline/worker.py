"""Claim, embed, write, retry, dead-letter: the only place that writes vectors.

One batch is one transaction: claim queue rows (`FOR UPDATE SKIP LOCKED`), read their texts, embed,
COPY the vectors into a temp table, write them with one UPDATE ... FROM (or replace a document's chunks),
delete the claimed queue rows. A crash anywhere rolls everything back and the rows are claimed again.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import psycopg

from pipeline.chunking import chunk_text
from pipeline.config import Settings
from pipeline.db import Connection, query, translate_errors
from pipeline.embedding import Embedder
from pipeline.errors import RowSecurityError, SourceUnavailable
from pipeline.sources import Source, load_sources

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_TOKENS = 128
"""Tokens per chunk unless PIPELINE_CHUNK_TOKENS says otherwise (less where the model's window is smaller):
the size that retrieved best on SciFact among 96, 128, 192 and 254 (docs/benchmarks.md)."""

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
    unindexed: int = 0  # of the embedded rows, those whose vectors were written to wait for the vector index
    indexed: int = 0  # waiting vectors moved into the vector index
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


@dataclasses.dataclass
class Batch:
    """A claimed batch between its two phases: embedded, not yet written. Its transaction is open.

    Keys are the source rows' primary keys as text, whatever their type.
    """

    conn: Connection
    source: Source
    claimed: dict[str, int]
    rows: list[dict[str, Any]]
    finished: set[str]
    report: SyncReport
    started: float
    texts: list[str] = dataclasses.field(default_factory=list)
    owners: list[str] = dataclasses.field(default_factory=list)
    vectors: Any = None
    errors: dict[str, str] = dataclasses.field(default_factory=dict)


class Worker:
    """Processes queue batches with one embedder; several workers may share a database.

    A batch has two phases in one transaction: `begin` (claim, read, embed: the model's time) and
    `finish` (write vectors, delete queue rows, commit: the database's time, mostly HNSW inserts).
    `drain` with a second connection overlaps the `finish` of one batch with the `begin` of the next.
    What differs between sources (their table, key, text, row or chunked) is read from the `Source`.
    """

    def __init__(
        self,
        *,
        embedder: Embedder,
        settings: Settings,
        before_write: Callable[[str, Sequence[str]], None] | None = None,
    ) -> None:
        self.embedder = embedder
        self.settings = settings
        # Called after embedding and before writing (tests use it to change rows mid-batch).
        self.before_write = before_write

    @functools.cached_property
    def chunk_tokens(self) -> int:
        """Tokens per chunk of a chunked source (asked of the model only when something is chunked)."""
        return self.settings.chunk_tokens or max(min(self.embedder.max_tokens - 2, DEFAULT_CHUNK_TOKENS), 8)

    # -- one batch -------------------------------------------------------------------------------

    def run_batch(self, conn: Connection, source: Source | str, limit: int | None = None) -> SyncReport:
        """Claim and process up to `limit` rows of `source` in one transaction."""
        if isinstance(source, str):
            (source,) = load_sources(conn, [source])
        batch = self.begin(conn, source, limit)
        return self.finish(batch) if batch else SyncReport()

    def begin(self, conn: Connection, source: Source, limit: int | None = None) -> Batch | None:
        """Open a transaction, claim rows, read and embed them; None (and no transaction) if none is ready."""
        started = time.perf_counter()
        if limit is None:
            limit = max(self.settings.claim_size // 16, 1) if source.chunked else self.settings.claim_size
        with translate_errors():
            conn.execute("begin")
            try:
                if self.settings.synchronous_commit != "on":  # validated: on, off or local
                    conn.execute(f"set local synchronous_commit = {self.settings.synchronous_commit}".encode())
                claimed = {
                    row["row_id"]: row["attempts"]
                    for row in conn.execute(query("claim"), {"source": source.name, "limit": limit})
                }
                if not claimed:
                    conn.rollback()
                    return None
                try:
                    rows, unreadable = self._read(conn, source, claimed)
                except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
                    raise SourceUnavailable(
                        f"source {source.name}: {str(exc).strip().splitlines()[0]}; its rows stay queued "
                        f"(`pipeline source remove {source.name}` drops them)"
                    ) from exc
                missing = set(claimed) - {r["key"] for r in rows} - set(unreadable)
                if missing:
                    check_deleted(conn, source.name, missing)
                batch = Batch(conn, source, claimed, [], missing, SyncReport(source=source.name), started)
                batch.report.deleted = len(batch.finished)  # source row gone: nothing to do
                for key, reason in unreadable.items():
                    self._fail(batch, key, reason, permanent=True)
                for row in rows:
                    if row["current"]:
                        batch.finished.add(row["key"])
                        batch.report.unchanged += 1
                    elif not row["text"].strip():
                        self._fail(batch, row["key"], "empty text: nothing to embed", permanent=True)
                    elif source.chunked and len(row["text"]) > self.settings.max_document_chars:
                        reason = (
                            f"document too long: {len(row['text'])} characters, the limit is "
                            f"{self.settings.max_document_chars} (PIPELINE_MAX_DOCUMENT_CHARS); split it"
                        )
                        self._fail(batch, row["key"], reason, permanent=True)
                    else:
                        batch.rows.append(row)
                self._embed(batch)
            except BaseException:
                conn.rollback()
                raise
        return batch

    def _read(
        self, conn: Connection, source: Source, claimed: dict[str, int]
    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The claimed rows' texts; and the keys whose text expression raised, with the reason.

        When the whole read fails (a text expression that raises for some row, a key that is not of
        the table's type), each row is read alone, so the bad ones fail and the others go on.
        """
        params = {"keys": list(claimed), "model": self.embedder.name}
        statement = source.read_query()
        conn.execute("savepoint pipeline_read")
        try:
            return conn.execute(statement, params).fetchall(), {}
        except psycopg.errors.DataError:
            conn.execute("rollback to savepoint pipeline_read")
        rows: list[dict[str, Any]] = []
        unreadable: dict[str, str] = {}
        for key in claimed:
            try:
                rows.extend(conn.execute(statement, {**params, "keys": [key]}).fetchall())
                conn.execute("release savepoint pipeline_read")
                conn.execute("savepoint pipeline_read")
            except psycopg.errors.DataError as exc:
                conn.execute("rollback to savepoint pipeline_read")
                unreadable[key] = f"the text expression failed for this row: {str(exc).strip().splitlines()[0]}"[:1000]
        return rows, unreadable

    def finish(self, batch: Batch) -> SyncReport:
        """Write the vectors of an embedded batch, delete its queue rows and commit."""
        conn, report = batch.conn, batch.report
        with translate_errors():
            try:
                if batch.rows and self.before_write:
                    self.before_write(batch.source.name, [row["key"] for row in batch.rows])
                if batch.rows:
                    written = self._write(batch)
                    batch.finished.update(written)
                    report.embedded = len(written)
                    report.requeued = len(batch.rows) - len(written) - len(batch.errors)
                for key, error in batch.errors.items():
                    self._fail(batch, key, error, permanent=batch.claimed[key] + 1 >= self.settings.max_attempts)
                if batch.finished:
                    conn.execute(query("delete_queue"), {"source": batch.source.name, "ids": list(batch.finished)})
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        report.batches = 1
        report.seconds = time.perf_counter() - batch.started
        name = batch.source.name
        if report.embedded:
            logger.info(
                "%s: %d rows embedded in %.2fs (%.0f rows/s)%s",
                name,
                report.embedded,
                report.seconds,
                report.embedded / report.seconds,
                f", {report.chunks} chunks" if report.chunks else "",
            )
        if report.requeued:
            logger.info("%s: %d rows changed while embedding, queued again", name, report.requeued)
        return report

    def _embed(self, batch: Batch) -> None:
        """Chunk (chunked sources) and embed; a failing batch is retried owner by owner."""
        if not batch.source.chunked:
            batch.texts = [row["text"] for row in batch.rows]
            batch.owners = [row["key"] for row in batch.rows]
        else:
            tokenizer = getattr(self.embedder, "tokenizer", None)
            for row in batch.rows:
                try:
                    pieces = chunk_text(
                        row["text"], tokenizer, max_tokens=self.chunk_tokens, overlap=self.settings.chunk_overlap
                    )
                except Exception as exc:
                    batch.errors[row["key"]] = f"chunking failed: {type(exc).__name__}: {exc}"[:1000]
                    continue
                batch.texts.extend(pieces)
                batch.owners.extend([row["key"]] * len(pieces))
        try:
            batch.vectors = self.embedder.embed(batch.texts)
            return
        except Exception as exc:  # a bad row, or a model problem: find out row by row
            logger.warning("batch of %d texts failed (%s); retrying row by row", len(batch.texts), exc)
        batch.vectors = np.zeros((len(batch.texts), self.embedder.dimension), dtype=np.float32)
        by_owner: dict[str, list[int]] = {}
        for position, owner in enumerate(batch.owners):
            by_owner.setdefault(owner, []).append(position)
        for owner, positions in by_owner.items():
            try:
                batch.vectors[positions] = self.embedder.embed([batch.texts[p] for p in positions])
            except Exception as exc:
                batch.errors[owner] = f"{type(exc).__name__}: {exc}"[:1000]

    def _write(self, batch: Batch) -> set[str]:
        """COPY the vectors into the staging table, then write them; return the keys written."""
        conn, errors, source = batch.conn, batch.errors, batch.source
        conn.execute(query("create_staging"))
        hashes = {row["key"]: row["hash"] for row in batch.rows}
        params = {"model": self.embedder.name}
        if not source.chunked:
            with conn.cursor().copy(query("copy_rows")) as copy:
                copy.set_types(["text", "vector", "text"])
                for owner, vector in zip(batch.owners, batch.vectors, strict=True):
                    if owner not in errors:
                        copy.write_row((owner, vector, hashes[owner]))
            later = self._index_later(conn, source)
            written = {r["key"] for r in conn.execute(source.write_query(index_later=later), params)}
            if later:
                batch.report.unindexed = len(written)
            if written and source.classified:
                conn.execute(query("score_staged"), {**params, "source": source.name, "keys": list(written)})
            return written
        index, previous = 0, None
        with conn.cursor().copy(query("copy_chunks")) as copy:
            copy.set_types(["text", "int4", "text", "vector", "text"])
            for owner, text, vector in zip(batch.owners, batch.texts, batch.vectors, strict=True):
                index = index + 1 if owner == previous else 0
                previous = owner
                if owner not in errors:
                    copy.write_row((owner, index, text, vector, hashes[owner]))
        written = {r["key"] for r in conn.execute(source.write_query(), params)}
        if written:
            conn.execute(source.delete_chunks_query(), {"keys": list(written)})
            batch.report.chunks = conn.execute(source.insert_chunks_query(), {**params, "keys": list(written)}).rowcount
        return written

    def _index_later(self, conn: Connection, source: Source) -> bool:
        """Whether this batch's vectors may wait for the vector index: the source can hold them, fewer than
        PIPELINE_MAX_UNINDEXED wait already, and the index is there (a bulk write may have set it aside:
        then writing into `embedding` costs no index insert anyway)."""
        if not source.waits or self.settings.max_unindexed <= 0:
            return False
        waiting = conn.execute(source.unindexed_query(), {"cap": self.settings.max_unindexed}).fetchone()["n"]
        if waiting >= self.settings.max_unindexed:
            return False
        found = conn.execute(query("has_vector_index"), {"table": source.table.as_string(conn)}).fetchone()
        return bool(found["indexed"])

    def _fail(self, batch: Batch, key: str, error: str, *, permanent: bool) -> None:
        attempts = batch.claimed[key] + 1
        name = batch.source.name
        params = {"source": name, "row_id": key, "error": error}
        if permanent:
            logger.warning("%s row %s failed for good after %d attempts: %s", name, key, attempts, error)
            batch.conn.execute(query("move_to_failed"), params)
            batch.report.failed += 1
        else:
            delay = retry_delay(attempts, self.settings.retry_delay)
            logger.warning("%s row %s failed (attempt %d), retrying in %.0fs: %s", name, key, attempts, delay, error)
            batch.conn.execute(query("retry_later"), {**params, "delay": delay})
            batch.report.retried += 1

    # -- many batches ----------------------------------------------------------------------------

    def drain(
        self,
        conn: Connection,
        sources: Sequence[Source | str] | None = None,
        *,
        spare: Connection | None = None,
        stop: threading.Event | None = None,
        on_batch: Callable[[SyncReport], None] | None = None,
    ) -> SyncReport:
        """Process batches until no row is ready (or `stop` is set); return the totals (`pipeline.drain`)."""
        from pipeline.drain import drain

        return drain(self, conn, sources, spare=spare, stop=stop, on_batch=on_batch)


def resolve_sources(conn: Connection, sources: Sequence[Source | str] | None) -> list[Source]:
    if sources is None:
        return load_sources(conn)
    names = [s for s in sources if isinstance(s, str)]
    loaded = {s.name: s for s in load_sources(conn, names)} if names else {}
    return [loaded[s] if isinstance(s, str) else s for s in sources]


def check_deleted(conn: Connection, source: str, keys: set[str]) -> None:
    """Make sure rows the worker could not read are deleted, not hidden by row-level security.

    Only a deleted row's queue row may go; a hidden one's must stay, so the batch is refused instead.
    """
    row = conn.execute(query("existing_keys"), {"source": source, "keys": sorted(keys)}).fetchone()
    hidden = sorted(row["keys"]) if row and row["keys"] else []
    if hidden:
        shown = ", ".join(hidden[:5]) + (", ..." if len(hidden) > 5 else "")
        raise RowSecurityError(
            f"{len(hidden)} queued {source} rows exist but are hidden from this role by row-level security "
            f"(keys {shown}); their queue rows are kept. Give the worker BYPASSRLS (docs/security.md)"
        )


def count_ready(conn: Connection, sources: Sequence[Source | str] | None = None) -> int:
    names = [s if isinstance(s, str) else s.name for s in sources] if sources is not None else None
    with translate_errors():
        row = conn.execute(query("count_ready"), {"sources": names}).fetchone()
    return int(row["n"]) if row else 0


def prepare_worker(
    conn: Connection,
    settings: Settings,
    *,
    before_write: Callable[[str, Sequence[int]], None] | None = None,
) -> Worker:
    """Resolve the model (refusing a mismatch before paying for a load) and record it; it loads when first used."""
    from pipeline.model import database_embedder, record_model
    from pipeline.security import check_worker_access

    check_worker_access(conn)
    embedder = database_embedder(conn, settings)  # loaded when there is text to embed
    record_model(conn, embedder)
    return Worker(embedder=embedder, settings=settings, before_write=before_write)
