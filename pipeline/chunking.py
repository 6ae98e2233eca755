"""Token-aware splitting of documents, counted with the model's own tokenizer, with overlap."""

from __future__ import annotations

from typing import Any

# A break between two tokens is better the larger the unit it ends.
_PARAGRAPH, _SENTENCE, _WORD, _NONE = 3, 2, 1, 0


def _break_strength(gap: str, previous: str) -> int:
    if "\n\n" in gap or "\r\n\r\n" in gap:
        return _PARAGRAPH
    if "\n" in gap or (gap and previous.endswith((".", "!", "?", ";", ":"))):
        return _SENTENCE
    if gap:
        return _WORD
    return _NONE


def chunk_text(text: str, tokenizer: Any, *, max_tokens: int, overlap: float = 0.15) -> list[str]:
    """Split `text` into pieces of at most `max_tokens` tokens (special tokens excluded).

    Cuts prefer paragraph ends, then sentence ends, then word ends, looking back at most half a chunk
    from the hard limit; each chunk after the first starts about `overlap` of a chunk before the
    previous one ended, on a word boundary.
    """
    if max_tokens < 8:
        raise ValueError("max_tokens must be at least 8")
    if not text.strip():
        return []
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets: list[tuple[int, int]] = [tuple(pair) for pair in encoding["offset_mapping"]]
    total = len(offsets)
    if total <= max_tokens:
        return [text.strip()]

    def strength(index: int) -> int:
        """How good a cut is just before token `index`."""
        if index <= 0 or index >= total:
            return _PARAGRAPH
        gap = text[offsets[index - 1][1] : offsets[index][0]]
        return _break_strength(gap, text[offsets[index - 1][0] : offsets[index - 1][1]])

    overlap_tokens = int(max_tokens * overlap)
    chunks: list[str] = []
    start = 0
    while start < total:
        end = min(start + max_tokens, total)
        if end < total:
            floor = start + max_tokens // 2
            best, best_strength = end, strength(end)
            for candidate in range(end - 1, floor, -1):
                if best_strength == _PARAGRAPH:
                    break
                candidate_strength = strength(candidate)
                if candidate_strength > best_strength:
                    best, best_strength = candidate, candidate_strength
            end = best
        piece = text[offsets[start][0] : offsets[end - 1][1]].strip()
        if piece:
            chunks.append(piece)
        if end >= total:
            break
        next_start = max(end - overlap_tokens, start + 1)
        while next_start < end and strength(next_start) == _NONE:
            next_start += 1
        start = next_start
    return chunks
