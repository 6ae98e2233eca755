"""A faster CPU backend: the model's transformer exported to ONNX, its weights quantised to int8.

Derived locally from the same weights (no network): exported once with torch, quantised with ONNX
Runtime (dynamic, per-channel int8 weights: per-tensor scales lose far more), cached under the data
directory in a folder named after the weights' hash. A cache entry records the hash of the file it
holds; one that does not match (a partial or corrupt write) is rebuilt, never trusted.

Tokenisation, truncation, pooling and normalisation are the model's own: its tokenizer with its
`max_seq_length`, and its sentence-transformers pooling (mean or CLS) read from its configuration.
Activations are quantised with one scale per batch (dynamic quantisation), so a text's vector moves
slightly with its batch neighbours (cosine above 0.99 between batchings), as the quantisation error does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.embedding import BatchedEmbedder
from pipeline.errors import ModelError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from pipeline.embedding import ResolvedModel

logger = logging.getLogger(__name__)

BACKEND = "onnx-int8"
EXPORT_VERSION = "2"  # bump when the export or quantisation changes: old cache entries are then unused
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).exists():
            return directory / name
    raise ModelError(f"{directory} has no {' or '.join(WEIGHT_FILES)}: the {BACKEND} backend needs local weights")


def _st_config(directory: Path) -> dict[str, Any]:
    """The sentence-transformers settings the backend must honour: max_seq_length, lower-casing, pooling."""
    config: dict[str, Any] = {"max_seq_length": None, "do_lower_case": False, "pooling": "mean", "normalize": True}
    bert = directory / "sentence_bert_config.json"
    if bert.exists():
        data = json.loads(bert.read_text(encoding="utf-8"))
        config["max_seq_length"] = data.get("max_seq_length")
        config["do_lower_case"] = bool(data.get("do_lower_case", False))
    modules = directory / "modules.json"
    if modules.exists():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            kind = str(module.get("type", ""))
            if kind.endswith("Pooling"):
                pooling = json.loads((directory / module["path"] / "config.json").read_text(encoding="utf-8"))
                modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
                if modes == ["pooling_mode_mean_tokens"]:
                    config["pooling"] = "mean"
                elif modes == ["pooling_mode_cls_token"]:
                    config["pooling"] = "cls"
                else:
                    raise ModelError(f"the {BACKEND} backend pools by mean or CLS; this model pools by {modes}")
            elif not kind.endswith(("Transformer", "Normalize")):
                raise ModelError(f"the {BACKEND} backend cannot run the module {kind}; use --backend torch")
    return config


def cache_entry(model_dir: Path, cache_dir: Path) -> tuple[Path, str]:
    """Where the quantised model of these weights lives, and the weights' hash."""
    weights_hash = _sha256(_weights(model_dir))
    return cache_dir / f"{weights_hash[:32]}-v{EXPORT_VERSION}", weights_hash


def _valid(entry: Path, weights_hash: str) -> bool:
    meta = entry / "meta.json"
    model = entry / "model.onnx"
    if not (meta.exists() and model.exists()):
        return False
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(data.get("weights_sha256") == weights_hash and data.get("onnx_sha256") == _sha256(model))


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantiser warns through the root logger; hold warnings back while it runs."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def build(model_dir: Path, entry: Path, weights_hash: str) -> None:
    """Export the transformer to ONNX and quantise it; write the entry atomically (temp dir, rename)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    started = time.perf_counter()
    entry.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=entry.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        # Eager attention traces into a graph without shape-dependent Python branches (SDPA has some).
        model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]

        class Encoder(torch.nn.Module):  # keyword arguments: what transformers 5 expects
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *inputs: Any) -> Any:
                return self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state

        sample = tokenizer(["uma frase de exemplo", "outra"], padding=True, return_tensors="pt")
        axes = {n: {0: "batch", 1: "tokens"} for n in names}
        # The tracer and the quantiser talk to the user about things that do not apply to this export
        # (TracerWarning on shape arithmetic that dynamic_axes covers, "consider pre-processing": measured
        # without, docs/benchmarks.md); the one-line log below says what happened.
        with torch.no_grad(), warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Encoder(model),
                tuple(sample[n] for n in names),
                str(work / "fp32.onnx"),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={**axes, "last_hidden_state": {0: "batch", 1: "tokens"}},
                opset_version=17,
                dynamo=False,
            )
            quantize_dynamic(
                str(work / "fp32.onnx"), str(work / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True
            )
        (work / "fp32.onnx").unlink()
        meta = {
            "weights_sha256": weights_hash,
            "onnx_sha256": _sha256(work / "model.onnx"),
            "backend": BACKEND,
            "export_version": EXPORT_VERSION,
            "source": str(model_dir),
            "inputs": names,
        }
        (work / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(work, entry)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info(
        "%s: exported and quantised %s in %.1fs (cached in %s)",
        BACKEND,
        model_dir,
        time.perf_counter() - started,
        entry,
    )


class OnnxEmbedder(BatchedEmbedder):
    """The `Embedder` interface over ONNX Runtime; batches by token count like the torch embedder."""

    backend = BACKEND

    def __init__(
        self,
        *,
        model: ResolvedModel,
        cache_dir: Path,
        batch_size: int = 32,
        max_chars: int = 100_000,
        threads: int | None = None,
    ) -> None:
        started = time.perf_counter()
        directory = Path(model.source)  # `pipeline.model.load_embedder` hands over a local directory
        if not directory.is_dir():
            raise ModelError(f"{model.name}: the {BACKEND} backend reads local files; {directory} is not a directory")
        entry, weights_hash = cache_entry(directory, cache_dir)
        self.cold = not _valid(entry, weights_hash)
        if self.cold:
            if entry.exists():
                logger.warning("%s cache %s is incomplete or corrupt: rebuilding it", BACKEND, entry)
            try:
                build(directory, entry, weights_hash)
            except ModelError:
                raise
            except Exception as exc:
                raise ModelError(f"could not export {model.name} to ONNX: {type(exc).__name__}: {exc}") from exc
        import onnxruntime as ort
        from transformers import AutoTokenizer

        config = _st_config(directory)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(directory))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        # Idle threads must not spin: the worker's database writes and the HTTP server share the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(entry / "model.onnx"), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"could not load the {BACKEND} model in {entry}: {exc}") from exc
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.pooling = config["pooling"]
        self.do_lower_case = config["do_lower_case"]
        self.max_tokens = int(config["max_seq_length"] or self.tokenizer.model_max_length)
        self.dimension = int(self.session.get_outputs()[0].shape[-1])
        self.source_name = model.name
        self.name = model.identity
        self.batch_size = batch_size
        self.max_chars = max_chars
        self.poison_marker = os.environ.get("PIPELINE_TEST_POISON") or None
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "model %s loaded in %.1fs (%s, %d dims, %d tokens%s)",
            model.name,
            self.load_seconds,
            BACKEND,
            self.dimension,
            self.max_tokens,
            ", cache built" if self.cold else "",
        )

    def _encode(self, texts: list[str]) -> NDArray[np.float32]:
        texts = [t.strip() for t in texts]  # as sentence-transformers tokenises
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        encoded = self.tokenizer(
            texts, padding=True, truncation="longest_first", max_length=self.max_tokens, return_tensors="np"
        )
        feed = {name: encoded[name].astype(np.int64) for name in self.inputs}
        hidden = self.session.run(None, feed)[0]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = encoded["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)
