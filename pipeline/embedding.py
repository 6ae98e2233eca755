"""The embedding backends' common ground: the `Embedder` interface, batching by token count, and the torch
backend (sentence-transformers). Which model to load, and whether it may be used with a database, is
`pipeline.model`'s business; this module only runs what it is given."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.errors import ModelError

if TYPE_CHECKING:
    from numpy.typing import NDArray

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx-int8")


class Embedder(Protocol):
    """What the pipeline needs from a model."""

    name: str
    dimension: int
    max_tokens: int

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Unit-length float32 vectors, one row per text."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for `text`, special tokens excluded."""
        ...


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    name: str
    """The model: a hub name, or an absolute local path."""
    source: str
    """What `SentenceTransformer` loads: a local directory or a hub name to download."""
    backend: str = "torch"
    """What runs it: `torch` (float32 on CPU) or `onnx-int8` (docs/benchmarks.md)."""

    @property
    def identity(self) -> str:
        """What is recorded in the database and beside every vector: vectors of another model or backend
        are never mixed with these silently."""
        return self.name if self.backend == "torch" else f"{self.name}@{self.backend}"



PASS_COST_TOKENS = 200
"""What one more forward pass costs, in tokens computed: a cut that saves less padding than this is not
worth a pass (small passes use the CPU less well). `bench/batching.py` on onnx-int8: ASSIN 2's short
sentences 4% faster than passes cut every `batch_size` texts (100 passes instead of 94), the longer dores
no slower (98 instead of 94); lower costs made many more passes (docs/benchmarks.md)."""


def batch_cuts(lengths: Sequence[int], batch_size: int, pass_cost: int) -> list[tuple[int, int]]:
    """Where to cut texts sorted longest first into forward passes of at most `batch_size` texts.

    A pass computes its longest text's token count for every text in it, so cutting every `batch_size`
    texts pads whichever texts share a pass with a longer one. This picks the cuts that make the tokens
    computed plus `pass_cost` per pass fewest (dynamic programming over the sorted lengths, O(n ×
    batch_size)): texts of one length go together, and a short remainder joins the next length when its
    padding costs less than a pass.
    """
    n = len(lengths)
    best = [0] + [-1] * n  # the least cost of the first `end` texts
    start = [0] * (n + 1)
    for end in range(1, n + 1):
        for begin in range(max(0, end - batch_size), end):
            cost = best[begin] + (end - begin) * lengths[begin] + pass_cost
            if best[end] < 0 or cost < best[end]:
                best[end], start[end] = cost, begin
    cuts = []
    end = n
    while end:
        cuts.append((start[end], end))
        end = start[end]
    return cuts[::-1]


class BatchedEmbedder:
    """What every backend shares: identical texts embedded once, batches of similar token counts."""

    name: str
    dimension: int
    max_tokens: int
    batch_size: int
    max_chars: int
    poison_marker: str | None
    tokenizer: Any

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.poison_marker and any(self.poison_marker in text for text in texts):
            raise ValueError("poison row (test hook PIPELINE_TEST_POISON)")
        # Identical texts are embedded once.
        unique: dict[str, int] = {}
        positions = [unique.setdefault(text[: self.max_chars], len(unique)) for text in texts]
        distinct = list(unique)
        vectors = np.empty((len(distinct), self.dimension), dtype=np.float32)
        for batch in self._batches(distinct):
            vectors[batch] = self._encode([distinct[i] for i in batch])
        result: NDArray[np.float32] = vectors[positions]
        return result

    def _encode(self, texts: list[str]) -> NDArray[np.float32]:
        """Unit vectors of one batch."""
        raise NotImplementedError

    def _batches(self, texts: Sequence[str]) -> list[list[int]]:
        """Positions of `texts` in model batches of similar token counts, longest first.

        Every text in a batch is padded to the batch's longest, so grouping by the tokens the model will
        see (not by characters, as `encode` does on its own) wastes the least compute on padding.
        """
        if len(texts) <= self.batch_size:
            return [list(range(len(texts)))]
        ids = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_tokens,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
        cuts = batch_cuts([len(ids[i]) for i in order], self.batch_size, PASS_COST_TOKENS)
        return [order[start:end] for start, end in cuts]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class SentenceTransformerEmbedder(BatchedEmbedder):
    """A sentence-transformers model on torch, loaded once. On a GPU (`cuda`) it runs under fp16 autocast."""

    backend = "torch"

    def __init__(
        self,
        *,
        model: ResolvedModel,
        device: str | None = None,
        batch_size: int = 32,
        max_chars: int = 100_000,
        threads: int | None = None,
    ) -> None:
        started = time.perf_counter()
        if threads:
            import torch

            torch.set_num_threads(threads)
        try:
            from sentence_transformers import SentenceTransformer

            self.model: Any = SentenceTransformer(model.source, device=device)
        except Exception as exc:
            raise ModelError(f"could not load model {model.name}: {exc}") from exc
        self.load_seconds = time.perf_counter() - started
        self.name = model.identity
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(getter())
        self.max_tokens = int(self.model.max_seq_length)
        self.batch_size = batch_size
        self.max_chars = max_chars
        self.cuda = str(self.model.device).startswith("cuda")
        # Test hook: a text containing this marker raises, as a poison row would (see docs/operations.md).
        self.poison_marker = os.environ.get("PIPELINE_TEST_POISON") or None
        logger.info(
            "model %s loaded in %.1fs (%d dims, %d tokens, device %s%s)",
            self.name,
            self.load_seconds,
            self.dimension,
            self.max_tokens,
            self.model.device,
            ", fp16 autocast" if self.cuda else "",
        )

    def _encode(self, texts: list[str]) -> NDArray[np.float32]:
        import contextlib

        autocast: Any = contextlib.nullcontext()
        if self.cuda:
            import torch

            autocast = torch.autocast("cuda", dtype=torch.float16)
        with autocast:
            vectors = self.model.encode(
                texts,
                batch_size=len(texts),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    @property
    def tokenizer(self) -> Any:  # type: ignore[override]
        return self.model.tokenizer
