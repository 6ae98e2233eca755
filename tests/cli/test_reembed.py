"""Switching models: same dimension, and a new dimension (the vector columns are altered)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.db import connect
from tests.conftest import invoke


def _seed(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute("insert into dores (dor_base) select 'dor ' || g from generate_series(1, 30) g")
        conn.execute("insert into documents (title, content) values ('Doc', 'Um documento curto.')")
    assert invoke("sync", db_url=db_url).returncode == 0


def test_reembed_with_a_smaller_model_alters_the_columns(db_url: str, tmp_path: Path, embedder: Any) -> None:
    import torch
    from sentence_transformers import SentenceTransformer, models

    from pipeline.model import bundled_model_path

    torch.manual_seed(0)
    base = SentenceTransformer(str(bundled_model_path()))
    dense = models.Dense(in_features=384, out_features=128, bias=False, activation_function=torch.nn.Identity())
    small = SentenceTransformer(modules=[*base, dense])
    small_dir = tmp_path / "minilm-128"
    small.save(str(small_dir))

    _seed(db_url)
    refused = invoke("sync", "--model", str(small_dir), db_url=db_url)
    assert refused.returncode == 1 and "pipeline reembed --model" in refused.stderr

    result = invoke("reembed", "--model", str(small_dir), "--json", db_url=db_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["embedded"] == 31
    with connect(db_url) as conn:
        state = {r["key"]: r["value"] for r in conn.execute("select key, value from pipeline.state")}
        assert state["model"] == str(small_dir.resolve()) and state["dimension"] == "128"
        row = conn.execute("select dor_base, embedding, embedding_model from dores order by id limit 1").fetchone()
        assert len(row["embedding"].to_numpy()) == 128 and row["embedding_model"] == str(small_dir.resolve())
        expected = small.encode([row["dor_base"]], normalize_embeddings=True)[0]
        assert float(np.dot(row["embedding"].to_numpy(), expected)) >= 0.999
        assert conn.execute("select count(*) as n from dores where embedding is null").fetchone()["n"] == 0
    found = invoke("search", "dor 7", "--json", db_url=db_url)  # queries use the new model
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)) == 5


def test_reembed_needs_a_model(db_url: str) -> None:
    result = invoke("reembed", db_url=db_url)
    assert result.returncode == 1 and "reembed needs the new model" in result.stderr


def test_a_big_first_backfill_builds_the_vector_index_after_the_write(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute("alter table dores disable trigger user")  # rows that predate the pipeline
        conn.execute("insert into dores (dor_base) select 'dor antiga ' || g from generate_series(1, 40) g")
        conn.execute("alter table dores enable trigger user")
    result = invoke("backfill", "--source", "dores", "--json", db_url=db_url, PIPELINE_BULK_INDEX_FROM="30")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["embedded"] == 40
    assert "dores_embedding_idx set aside" in result.stderr and "built again" in result.stderr
    with connect(db_url) as conn:
        index = conn.execute(
            "select i.indisvalid as valid, pg_get_indexdef(i.indexrelid) as definition from pg_index i"
            " where i.indexrelid = 'public.dores_embedding_idx'::regclass"
        ).fetchone()
        assert index["valid"] and "m='16', ef_construction='64'" in index["definition"]
        assert conn.execute("select count(*) as n from pipeline.state where starts_with(key, 'index:')").fetchone()["n"] == 0
