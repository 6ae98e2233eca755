"""Cutting texts sorted by token count into forward passes (`batch_cuts`), without the model."""

from __future__ import annotations

import itertools
import random

from pipeline.embedding import batch_cuts


def cost(lengths: list[int], cuts: list[tuple[int, int]], pass_cost: int) -> int:
    return sum((end - start) * lengths[start] + pass_cost for start, end in cuts)


def test_cuts_cover_every_text_once_in_order_within_the_batch_size() -> None:
    rng = random.Random(1)
    for n in (1, 2, 31, 32, 33, 64, 500):
        lengths = sorted((rng.randint(5, 80) for _ in range(n)), reverse=True)
        cuts = batch_cuts(lengths, 32, 64)
        assert cuts[0][0] == 0 and cuts[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(cuts))
        assert all(0 < end - start <= 32 for start, end in cuts)


def test_texts_of_one_length_go_together_when_a_pass_is_cheaper_than_the_padding() -> None:
    lengths = [20] * 40 + [10] * 24
    # Every 32 texts, the second pass would pad 24 texts of 10 tokens to 20 (240 tokens for nothing).
    cuts = batch_cuts(lengths, 32, 8)
    assert len(cuts) == 3 and cost(lengths, cuts, 0) == 40 * 20 + 24 * 10  # no padding at all
    # A pass that costs more than the padding it saves is not made.
    assert len(batch_cuts(lengths, 32, 1000)) == 2


def test_never_costlier_than_cutting_every_batch_size_texts() -> None:
    rng = random.Random(2)
    for _ in range(50):
        lengths = sorted((rng.randint(8, 120) for _ in range(rng.randint(33, 400))), reverse=True)
        fixed = [(start, min(start + 32, len(lengths))) for start in range(0, len(lengths), 32)]
        assert cost(lengths, batch_cuts(lengths, 32, 64), 64) <= cost(lengths, fixed, 64)
