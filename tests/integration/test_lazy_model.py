"""A command with nothing to embed never loads the model: its identity and dimension come from the record."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.backfill import backfill
from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.model import LazyEmbedder, database_embedder, record_model
from pipeline.segments import classify
from pipeline.worker import prepare_worker


def test_nothing_to_embed_loads_nothing(conn: Any, embedder: Any) -> None:
    record_model(conn, embedder)
    worker = prepare_worker(conn, Settings())
    assert isinstance(worker.embedder, LazyEmbedder)
    assert worker.drain(conn).claimed == 0
    assert backfill(conn, worker).claimed == 0
    with pytest.raises(PipelineError, match="no segments yet"):
        classify(conn, worker.embedder, "a clínica perde pacientes")
    assert worker.embedder.name == embedder.name and worker.embedder.dimension == embedder.dimension
    assert worker.embedder._loaded is None  # nothing asked the model for anything

    conn.execute("insert into dores (dor_base) values ('Pacientes faltam às consultas')")
    assert worker.drain(conn).embedded == 1
    assert worker.embedder._loaded is not None


def test_a_model_not_recorded_yet_is_loaded_for_its_dimension(conn: Any) -> None:
    lazy = database_embedder(conn, Settings())
    assert lazy._dimension is None
    assert lazy.dimension == 384 and lazy._loaded is not None
