"""Padding-aware micro-batches: every row once, little padding, and embeddings equal to one text at a time."""

import random

import pytest
import torch

from bench.workload import embed_texts
from model.length_batches import CallCost, length_batches, padding_fraction


@pytest.mark.parametrize("seed", range(5))
def test_every_row_once_within_the_limit_and_less_padding(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(3, 70) for _ in range(rng.randint(1, 150))]
    groups = length_batches(lengths, max_rows=32, call_tokens=48)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert all(0 < len(group) <= 32 for group in groups)
    naive = [list(range(i, min(i + 32, len(lengths)))) for i in range(0, len(lengths), 32)]
    assert padding_fraction(lengths, groups) <= padding_fraction(lengths, naive)


def test_one_call_when_splitting_does_not_pay() -> None:
    assert length_batches([7] * 20, max_rows=64, call_tokens=48) == [list(range(20))]
    assert len(length_batches([5, 40, 6, 41], max_rows=64, call_tokens=10_000)) == 1
    assert length_batches([5, 40, 6, 41], max_rows=64, call_tokens=5) == [[0, 2], [1, 3]]
    assert length_batches([], max_rows=8, call_tokens=48) == []


def test_embeddings_equal_one_text_at_a_time_in_order(text_tower) -> None:  # type: ignore[no-untyped-def]
    texts = embed_texts(48, seed=3)  # 3 to 48 words, as the benchmarks send
    lengths = [len(text_tower.tokenize(t)) for t in texts]
    assert padding_fraction(lengths, text_tower.calls(lengths)) < 0.5 * padding_fraction(lengths, [range(48)])
    batched = text_tower(texts)
    alone = torch.cat([text_tower([t]) for t in texts])
    cosine = (batched * alone).sum(-1)
    assert cosine.min() >= 0.9999, cosine
    assert batched.shape == (48, 384)


def test_the_call_cost_is_fitted_from_timings() -> None:
    cost = CallCost(48)
    for tokens in (64, 256, 512, 1024, 96, 300, 700, 128):
        assert cost.tokens == 48  # until enough calls are seen
        cost.observe(tokens, 0.010 + 0.0002 * tokens)  # 10 ms a call, 0.2 ms a token: 50 tokens a call
    assert cost.tokens == 50
    for _ in range(64):  # a busy machine: every call costs the same, whatever its size
        cost.observe(100, 0.5)
        cost.observe(900, 0.49)
    assert cost.tokens == 4096  # one call per batch from now on
    assert len(length_batches([5, 40, 6, 41], max_rows=64, call_tokens=cost.tokens)) == 1
