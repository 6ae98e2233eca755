"""The onnx-int8 backend: the model's own vectors within a small quantisation error, a cache that is
reused and never trusted when broken, and a backend that is part of the database's model identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import Settings
from pipeline.errors import ModelMismatchError
from pipeline.model import BUNDLED_MODEL, load_embedder, parse_identity, record_model, resolve_model
from pipeline.worker import Worker, prepare_worker

TEXTS = [
    "Pacientes faltam às consultas e a agenda fica vazia",
    "O estoque do sistema nunca bate com a prateleira",
    "Caminhões rodam vazios na volta e gastam muito diesel",
    "Clientes não pagam em dia e o caixa aperta no fim do mês",
    "curto",
    "   espaços em volta   ",
    "A clínica perde receita quando o paciente não aparece " * 40,  # past the model's 256 tokens
]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def onnx(models_dir: Path) -> Any:
    return load_embedder(Settings(data_dir=models_dir, model=BUNDLED_MODEL, backend="onnx-int8"))


def test_vectors_match_the_models_own_within_quantisation_error(onnx: Any, embedder: Any) -> None:
    assert onnx.name == f"{BUNDLED_MODEL}@onnx-int8" and parse_identity(onnx.name) == (BUNDLED_MODEL, "onnx-int8")
    assert onnx.dimension == embedder.dimension and onnx.max_tokens == embedder.max_tokens == 256
    fast, exact = onnx.embed(TEXTS), embedder.embed(TEXTS)
    assert fast.dtype == np.float32 and np.allclose(np.linalg.norm(fast, axis=1), 1, atol=1e-5)
    cosines = (fast * exact).sum(axis=1)
    assert cosines.min() >= 0.97 and cosines.mean() >= 0.98, cosines
    # Same tokenisation: token counts, truncation and stripping agree with sentence-transformers.
    assert onnx.count_tokens(TEXTS[0]) == embedder.count_tokens(TEXTS[0])
    # Stripped as sentence-transformers does; alone or in a batch (one activation scale per batch), close.
    assert float(onnx.embed(["espaços em volta"])[0] @ onnx.embed(["   espaços em volta   "])[0]) > 0.9999
    assert float(onnx.embed(["espaços em volta"])[0] @ fast[5]) > 0.98


def test_the_cache_is_reused_and_a_corrupt_one_is_rebuilt(
    onnx: Any, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import model as models

    monkeypatch.setattr(models, "_LOADED", {})  # every load below reads the cache on disk again
    settings = Settings(data_dir=models_dir, model=BUNDLED_MODEL, backend="onnx-int8")
    warm = load_embedder(settings)
    assert not warm.cold  # the quantised model from disk; how long that takes is bench/model_load.py's
    (entry,) = [p for p in (models_dir / "models").iterdir() if not p.name.startswith(".")]
    model = entry / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a partial write
    models._LOADED.clear()
    rebuilt = load_embedder(settings)
    assert rebuilt.cold and float(rebuilt.embed(TEXTS[:1])[0] @ onnx.embed(TEXTS[:1])[0]) > 0.9999
    models._LOADED.clear()
    assert not load_embedder(settings).cold
    assert load_embedder(settings) is load_embedder(settings)  # a process loads a model once


def test_the_backend_is_part_of_the_model_identity(conn: Any, onnx: Any, embedder: Any, models_dir: Path) -> None:
    conn.execute("insert into dores (dor_base) values ('Pacientes faltam'), ('Estoque não bate')")
    record_model(conn, embedder)
    assert Worker(embedder=embedder, settings=Settings()).drain(conn).embedded == 2
    with pytest.raises(ModelMismatchError, match=r"on the torch backend but onnx-int8 .* reembed --backend onnx-int8"):
        prepare_worker(conn, Settings(data_dir=models_dir, backend="onnx-int8"))
    # The recorded backend is the default: a worker without --backend runs what the database holds.
    conn.execute("update pipeline.state set value = %s where key = 'model'", (onnx.name,))
    assert resolve_model(None, onnx.name).backend == "onnx-int8"
    with pytest.raises(ModelMismatchError, match="on the onnx-int8 backend but torch is configured"):
        prepare_worker(conn, Settings(data_dir=models_dir, backend="torch"))


def test_reembed_embed_search_and_status_with_the_onnx_backend(db_url: str, onnx: Any, models_dir: Path) -> None:
    import json

    from pipeline.db import connect
    from tests.conftest import invoke, run_cli

    data = {"PIPELINE_DATA_DIR": str(models_dir)}  # the cache built above
    with connect(db_url) as conn:
        conn.execute(
            "insert into dores (dor_base) values ('Pacientes faltam às consultas'), ('O estoque nunca bate'),"
            " ('Caminhões rodam vazios')"
        )
    assert invoke("sync", db_url=db_url, **data).returncode == 0
    refused = invoke("search", "estoque", "--backend", "onnx-int8", db_url=db_url, **data)
    assert refused.returncode == 1 and "reembed --backend onnx-int8" in refused.stderr
    switched = invoke("reembed", "--backend", "onnx-int8", "--json", db_url=db_url, **data)
    assert switched.returncode == 0, switched.stderr
    assert json.loads(switched.stdout.splitlines()[-1])["embedded"] == 3
    status = json.loads(invoke("status", "--json", db_url=db_url, **data).stdout)
    assert status["model"] == BUNDLED_MODEL and status["backend"] == "onnx-int8"
    found = invoke(
        "search", "mercadoria em falta na prateleira", "-k", "1", "--vector-only", "--json", db_url=db_url, **data
    )
    assert found.returncode == 0, found.stderr
    assert "estoque" in json.loads(found.stdout)[0]["dor_base"]
    with connect(db_url) as conn:
        models = {r["embedding_model"] for r in conn.execute("select embedding_model from dores")}
    assert models == {onnx.name}
    # A real process: the onnx backend as n8n's Execute Command node runs it, from the cache on disk.
    embedded = run_cli(
        "embed", "--stdin", "--backend", "onnx-int8", db_url=db_url, stdin="Pacientes faltam às consultas", **data
    )
    assert embedded.returncode == 0, embedded.stderr
    vector = np.asarray(json.loads(embedded.stdout)[0]["embedding"])
    assert float(vector @ onnx.embed(["Pacientes faltam às consultas"])[0]) > 0.9999
    back = invoke("reembed", "--backend", "torch", db_url=db_url, **data)
    assert back.returncode == 0 and json.loads(invoke("status", "--json", db_url=db_url).stdout)["backend"] == "torch"
