"""Token counts for usage reports: equal to what the embedders tokenise, and safe beside the inference thread."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from model.tokens import TokenCounter


def test_text_tower_counts_its_own_tokens(text_tower: Any) -> None:
    texts = ["a red circle", "a large orange circle and a small yellow square", "x " * 600]
    expected = [len(ids) for ids in text_tower.tokenizer(texts, truncation=True, max_length=256)["input_ids"]]
    assert text_tower.count_tokens(texts) == expected
    assert expected[0] == 5  # [CLS] a red circle [SEP]
    assert expected[2] == 256  # truncated as embedded
    assert text_tower.count_tokens([]) == []


def test_counting_beside_the_inference_thread_never_fails(text_tower: Any) -> None:
    texts = [f"text number {i} " * (i % 7 + 1) for i in range(64)]
    with ThreadPoolExecutor(4) as pool:
        embeds = [pool.submit(text_tower, texts[:8]) for _ in range(4)]
        counts = [pool.submit(text_tower.count_tokens, texts) for _ in range(16)]
        assert all(c.result() == counts[0].result() for c in counts)
        assert all(e.result().shape == (8, text_tower.dim) for e in embeds)


def test_a_prepared_text_is_counted_as_embedded(text_tower: Any) -> None:
    counter = TokenCounter(text_tower.tokenizer, 256, prepare=lambda text: "query: " + text)
    assert counter(["a red circle"]) == [len(text_tower.tokenizer("query: a red circle")["input_ids"])]
