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
from pipeline.embedding import Embedder
from pipeline.errors import ModelMismatchError

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

    def add(self, other: SyncReport) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    @property
    def claimed(self) -> int:
        return self.embedded + self.unchanged + self.deleted + self.requeued + self.retried + self.failed

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["seconds"] = round(self.seconds, 3)
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


class Worker:
    """Processes queue batches with one embedder; several workers may share a database."""

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
        started = time.perf_counter()
        report = SyncReport()
        limit = limit or (self.settings.claim_size if source == "dores" else max(self.settings.claim_size // 16, 1))
        with translate_errors(), conn.transaction():
            claimed = {
                row["row_id"]: row["attempts"]
                for row in conn.execute(query("claim"), {"source": source, "limit": limit})
            }
            if not claimed:
                return report
            read = "read_dores" if source == "dores" else "read_documents"
            rows = conn.execute(query(read), {"ids": list(claimed), "model": self.embedder.name}).fetchall()
            finished = set(claimed) - {row["id"] for row in rows}  # source row deleted
            report.deleted = len(finished)
            todo = []
            for row in rows:
                if row["current"]:
                    finished.add(row["id"])
                    report.unchanged += 1
                elif not row["text"].strip():
                    self._fail(
                        conn,
                        source,
                        row["id"],
                        "empty text: nothing to embed",
                        permanent=True,
                        attempts=claimed[row["id"]],
                    )
                    report.failed += 1
                else:
                    todo.append(row)
            errors: dict[int, str] = {}
            if todo:
                if source == "dores":
                    written, errors = self._write_dores(conn, todo)
                else:
                    written, errors, report.chunks = self._write_documents(conn, todo)
                finished.update(written)
                report.embedded = len(written)
                report.requeued = len(todo) - len(written) - len(errors)
            for row_id, error in errors.items():
                permanent = claimed[row_id] + 1 >= self.settings.max_attempts
                self._fail(conn, source, row_id, error, permanent=permanent, attempts=claimed[row_id])
                if permanent:
                    report.failed += 1
                else:
                    report.retried += 1
            if finished:
                conn.execute(query("delete_queue"), {"source": source, "ids": list(finished)})
        report.batches = 1
        report.seconds = time.perf_counter() - started
        if report.embedded:
            logger.info(
                "%s: %d rows embedded in %.2fs (%.0f rows/s)%s",
                source,
                report.embedded,
                report.seconds,
                report.embedded / report.seconds,
                f", {report.chunks} chunks" if report.chunks else "",
            )
        if report.requeued:
            logger.info("%s: %d rows changed while embedding, queued again", source, report.requeued)
        return report

    def _embed_isolated(self, texts: list[str], owners: list[int]) -> tuple[np.ndarray, dict[int, str]]:
        """Embed all texts; if that raises, embed owner by owner so one bad row cannot block the rest."""
        try:
            return self.embedder.embed(texts), {}
        except Exception as exc:  # a bad row, or a model problem: find out row by row
            logger.warning("batch of %d texts failed (%s); retrying row by row", len(texts), exc)
        errors: dict[int, str] = {}
        vectors = np.zeros((len(texts), self.embedder.dimension), dtype=np.float32)
        by_owner: dict[int, list[int]] = {}
        for position, owner in enumerate(owners):
            by_owner.setdefault(owner, []).append(position)
        for owner, positions in by_owner.items():
            try:
                vectors[positions] = self.embedder.embed([texts[p] for p in positions])
            except Exception as exc:
                errors[owner] = f"{type(exc).__name__}: {exc}"[:1000]
        return vectors, errors

    def _write_dores(self, conn: Connection, rows: list[dict[str, Any]]) -> tuple[set[int], dict[int, str]]:
        vectors, errors = self._embed_isolated([row["text"] for row in rows], [row["id"] for row in rows])
        if self.before_write:
            self.before_write("dores", [row["id"] for row in rows])
        conn.execute(query("create_staging"))
        with conn.cursor().copy(query("copy_dores")) as copy:
            copy.set_types(["int8", "vector", "text"])
            for row, vector in zip(rows, vectors, strict=True):
                if row["id"] not in errors:
                    copy.write_row((row["id"], vector, row["hash"]))
        written = {r["id"] for r in conn.execute(query("write_dores"), {"model": self.embedder.name})}
        return written, errors

    def _write_documents(self, conn: Connection, rows: list[dict[str, Any]]) -> tuple[set[int], dict[int, str], int]:
        tokenizer = getattr(self.embedder, "tokenizer", None)
        texts: list[str] = []
        owners: list[int] = []
        errors: dict[int, str] = {}
        for row in rows:
            try:
                pieces = chunk_text(
                    row["text"], tokenizer, max_tokens=self.chunk_tokens, overlap=self.settings.chunk_overlap
                )
            except Exception as exc:
                errors[row["id"]] = f"chunking failed: {type(exc).__name__}: {exc}"[:1000]
                continue
            texts.extend(pieces)
            owners.extend([row["id"]] * len(pieces))
        vectors, embed_errors = self._embed_isolated(texts, owners)
        errors.update(embed_errors)
        if self.before_write:
            self.before_write("documents", [row["id"] for row in rows])
        hashes = {row["id"]: row["hash"] for row in rows}
        conn.execute(query("create_staging"))
        index = 0
        previous = None
        with conn.cursor().copy(query("copy_chunks")) as copy:
            copy.set_types(["int8", "int4", "text", "vector", "text"])
            for owner, text, vector in zip(owners, texts, vectors, strict=True):
                index = index + 1 if owner == previous else 0
                previous = owner
                if owner not in errors:
                    copy.write_row((owner, index, text, vector, hashes[owner]))
        written = {r["id"] for r in conn.execute(query("write_documents"), {"model": self.embedder.name})}
        chunks = 0
        if written:
            conn.execute(query("delete_chunks"), {"ids": list(written)})
            cursor = conn.execute(query("insert_chunks"), {"ids": list(written), "model": self.embedder.name})
            chunks = cursor.rowcount
        return written, errors, chunks

    def _fail(self, conn: Connection, source: str, row_id: int, error: str, *, permanent: bool, attempts: int) -> None:
        params = {"source": source, "row_id": row_id, "error": error}
        if permanent:
            logger.warning("%s row %d failed for good after %d attempts: %s", source, row_id, attempts + 1, error)
            conn.execute(query("move_to_failed"), params)
        else:
            delay = retry_delay(attempts + 1, self.settings.retry_delay)
            logger.warning(
                "%s row %d failed (attempt %d), retrying in %.0fs: %s", source, row_id, attempts + 1, delay, error
            )
            conn.execute(query("retry_later"), {**params, "delay": delay})

    # -- many batches ----------------------------------------------------------------------------

    def drain(
        self,
        conn: Connection,
        sources: Sequence[str] = SOURCES,
        *,
        stop: threading.Event | None = None,
        on_batch: Callable[[SyncReport], None] | None = None,
    ) -> SyncReport:
        """Process batches until no row is ready (or `stop` is set); return the totals."""
        total = SyncReport()
        active = list(sources)
        while active and not (stop and stop.is_set()):
            for source in list(active):
                if stop and stop.is_set():
                    break
                report = self.run_batch(conn, source)
                if report.claimed == 0:
                    active.remove(source)
                    continue
                total.add(report)
                if on_batch:
                    on_batch(report)
        return total


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


def prepare_worker(
    conn: Connection,
    settings: Settings,
    *,
    before_write: Callable[[str, Sequence[int]], None] | None = None,
) -> Worker:
    """Resolve the model (refusing a mismatch before paying for a load), load it, record it."""
    from pipeline.embedding import SentenceTransformerEmbedder, resolve_model

    recorded, _ = recorded_model(conn)
    resolved = resolve_model(settings.model, recorded)
    check_model(conn, resolved.name)
    embedder = SentenceTransformerEmbedder(
        model=resolved, device=settings.device, batch_size=settings.batch_size, max_chars=settings.max_chars
    )
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
