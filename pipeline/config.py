"""One typed settings object: command-line flags > environment (`DATABASE_URL`, `PIPELINE_*`) > defaults."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pipeline"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a command needs to know, built once at the edge and passed down."""

    database_url: str | None = None
    """`DATABASE_URL`; when unset, an embedded PostgreSQL under `data_dir` is used."""
    data_dir: Path = dataclasses.field(default_factory=_default_data_dir)
    """`PIPELINE_DATA_DIR`: where the embedded PostgreSQL keeps its files."""
    model: str | None = None
    """`PIPELINE_MODEL`: a hub name or a local directory; unset means 'as recorded, else the default'."""
    device: str | None = None
    """`PIPELINE_DEVICE`: cpu, cuda, mps; unset lets sentence-transformers pick."""
    threads: int | None = None
    """`PIPELINE_THREADS`: torch threads (unset: all cores; with several workers on one machine, cores ÷ workers)."""
    batch_size: int = 32
    """`PIPELINE_BATCH_SIZE`: texts per forward pass (texts of similar token counts go together)."""
    claim_size: int = 512
    """`PIPELINE_CLAIM_SIZE`: queue rows claimed (and committed) together."""
    synchronous_commit: str = "on"
    """`PIPELINE_SYNCHRONOUS_COMMIT`: `off` lets the worker's batch commits return before the WAL is flushed.
    A crash can then lose only the last batches whole, their queue rows with them: they are embedded again."""
    interval: float = 30.0
    """`PIPELINE_INTERVAL`: seconds between polls when no notification arrives."""
    max_attempts: int = 5
    """`PIPELINE_MAX_ATTEMPTS`: tries before a row moves to `pipeline.failed`."""
    retry_delay: float = 5.0
    """`PIPELINE_RETRY_DELAY`: seconds before the first retry of a failed row; doubles each time."""
    max_chars: int = 100_000
    """`PIPELINE_MAX_CHARS`: characters of a dor kept before tokenizing (the model reads far fewer)."""
    max_document_chars: int = 2_000_000
    """`PIPELINE_MAX_DOCUMENT_CHARS`: longer documents are refused (recorded in pipeline.failed), not chunked."""
    chunk_tokens: int | None = None
    """`PIPELINE_CHUNK_TOKENS`: tokens per document chunk; unset means 128, or the model's window if smaller."""
    chunk_overlap: float = 0.15
    """`PIPELINE_CHUNK_OVERLAP`: share of a chunk repeated at the start of the next one."""
    segment_clusters: str = "8"
    """`PIPELINE_SEGMENT_CLUSTERS`: K for the daemon's refits, or `auto`."""
    segment_method: str = "embedding"
    """`PIPELINE_SEGMENT_METHOD`: `embedding` (KMeans on the vectors) or `tfidf` (as the seed)."""
    segment_cron: str = "0 3 * * *"
    """`PIPELINE_SEGMENT_CRON`: when the daemon refits segments (crontab, UTC)."""
    segment_growth: float = 0.2
    """`PIPELINE_SEGMENT_GROWTH`: refit when embedded dores grew by this share since the last fit."""
    api_token: str | None = None
    """`PIPELINE_API_TOKEN`: bearer token for the HTTP API's /ml/* routes."""
    api_max_texts: int = 256
    """`PIPELINE_API_MAX_TEXTS`: texts per HTTP call."""
    api_max_chars: int = 20_000
    """`PIPELINE_API_MAX_CHARS`: characters per text in an HTTP call."""
    api_max_body: int = 2_000_000
    """`PIPELINE_API_MAX_BODY`: bytes per HTTP request body."""
    api_public_docs: bool = False
    """`PIPELINE_API_PUBLIC_DOCS`: serve /docs, /redoc and /openapi.json to anyone. Off by default: with a token
    set, /openapi.json takes the token and the docs pages are off."""
    jwt_secret: str | None = None
    """`PIPELINE_JWT_SECRET`: the Supabase project's JWT secret (HS256). A request with a user's JWT then runs
    its queries as the token's role (anon or authenticated), under row-level security."""
    metrics_host: str = "127.0.0.1"
    """`PIPELINE_METRICS_HOST`: address of `run --metrics-port`'s /metrics and /healthz (no auth: loopback)."""
    max_unindexed: int = 10_000
    """`PIPELINE_MAX_UNINDEXED`: most vectors of a row source that may wait for the vector index. The worker
    writes new vectors beside the index and moves them into it when nothing is left to embed; searches scan
    the waiting ones exactly meanwhile. Past this many, vectors go into the index at once (0: always)."""
    bulk_index_from: int = 50_000
    """`PIPELINE_BULK_INDEX_FROM`: a backfill with this many rows queued for a source that has almost nothing
    embedded sets its vector index aside and builds it after the write (0: never)."""
    backend: str | None = None
    """`PIPELINE_BACKEND`: `torch` or `onnx-int8` (default: as recorded in the database, else torch)."""
    lead_classifier: str = "lead"
    """`PIPELINE_LEAD_CLASSIFIER`: the classifier `/ml/score-lead` asks (its positive class is the score)."""
    log_level: str = "INFO"
    """`PIPELINE_LOG_LEVEL`."""

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment, then apply flags (`None` values are ignored)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = "DATABASE_URL" if field.name == "database_url" else f"PIPELINE_{field.name.upper()}"
            raw = env.get(name)
            if raw is not None and raw.strip() != "":
                values[field.name] = _parse(field, raw.strip(), name)
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("batch_size", "claim_size", "max_attempts", "max_chars", "max_document_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_unindexed < 0:
            raise ConfigError(f"max_unindexed must not be negative, got {self.max_unindexed}")
        if self.retry_delay < 0:
            raise ConfigError(f"retry_delay must not be negative, got {self.retry_delay}")
        if self.interval <= 0:
            raise ConfigError(f"interval must be positive, got {self.interval}")
        if self.segment_clusters != "auto" and not self.segment_clusters.isdigit():
            raise ConfigError(f"segment_clusters must be a number or 'auto', got {self.segment_clusters!r}")
        if self.synchronous_commit not in ("on", "off", "local"):
            raise ConfigError(f"synchronous_commit must be on, off or local, got {self.synchronous_commit!r}")
        if self.backend not in (None, "torch", "onnx-int8"):
            raise ConfigError(f"backend must be torch or onnx-int8, got {self.backend!r}")
        if self.segment_method not in ("embedding", "tfidf"):
            raise ConfigError(f"segment_method must be embedding or tfidf, got {self.segment_method!r}")
        try:
            from apscheduler.triggers.cron import CronTrigger

            CronTrigger.from_crontab(self.segment_cron)
        except ValueError as exc:
            raise ConfigError(f"segment_cron {self.segment_cron!r} is not a crontab expression: {exc}") from None
        if not 0 <= self.chunk_overlap < 0.5:
            raise ConfigError(f"chunk_overlap must be in [0, 0.5), got {self.chunk_overlap}")


def _parse(field: dataclasses.Field[Any], raw: str, name: str) -> Any:
    kind = str(field.type)
    if kind.startswith("bool"):
        if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ConfigError(f"{name}={raw!r} is not a boolean (1/0, true/false)")
        return raw.lower() in ("1", "true", "yes", "on")
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if kind.startswith("Path"):
        return Path(raw).expanduser()
    return raw


_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")
_PASSWORD_KW = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide passwords in a connection string (or in a message that quotes one)."""
    return _PASSWORD_KW.sub(r"\1***", _PASSWORD.sub(r"\1***@", text))
