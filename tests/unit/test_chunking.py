from __future__ import annotations

import itertools
from typing import Any

import pytest

from pipeline.chunking import chunk_text
from pipeline.model import bundled_model_path


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    path = bundled_model_path()
    assert path is not None
    return AutoTokenizer.from_pretrained(str(path))


def count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_short_text_is_one_chunk(tokenizer: Any) -> None:
    assert chunk_text("  Uma frase curta.  ", tokenizer, max_tokens=64) == ["Uma frase curta."]
    assert chunk_text(" \n ", tokenizer, max_tokens=64) == []


def test_chunks_fit_and_prefer_paragraphs(tokenizer: Any) -> None:
    paragraphs = [f"Parágrafo {i}. " + "A agenda da clínica está sempre cheia de faltas. " * 4 for i in range(6)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, tokenizer, max_tokens=100, overlap=0.0)
    assert len(chunks) > 1
    assert all(count(tokenizer, chunk) <= 100 for chunk in chunks)
    assert all(chunk.startswith("Parágrafo") for chunk in chunks)  # cuts fell on paragraph breaks


def test_overlap_repeats_the_end_of_the_previous_chunk(tokenizer: Any) -> None:
    text = " ".join(f"palavra{i}" for i in range(400))
    chunks = chunk_text(text, tokenizer, max_tokens=64, overlap=0.25)
    assert all(count(tokenizer, chunk) <= 64 for chunk in chunks)
    for previous, current in itertools.pairwise(chunks):
        first_word = current.split()[0]
        assert first_word in previous.split()  # starts inside the previous chunk, on a word
    assert "palavra399" in chunks[-1] and chunks[0].startswith("palavra0")


def test_every_word_is_covered(tokenizer: Any) -> None:
    words = [f"termo{i}" for i in range(300)]
    chunks = chunk_text(". ".join(words), tokenizer, max_tokens=50, overlap=0.1)
    joined = " ".join(chunks)
    assert all(word in joined for word in words)
