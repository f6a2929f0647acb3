"""The checks every model makes on a batch's shape, so that all of them refuse the same things the same way."""

from __future__ import annotations

from collections.abc import Sequence


def row_limits(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
    """One new-token limit per row, from one limit for all or one per row."""
    limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else [int(m) for m in max_new_tokens]
    if len(limits) != n:
        raise ValueError(f"got {len(limits)} max_new_tokens values for {n} inputs")
    if any(m < 0 for m in limits):
        raise ValueError(f"max_new_tokens must be >= 0, got {limits}")
    return limits


def check_pairs(images: Sequence[object], questions: Sequence[str]) -> None:
    """VQA takes one question per image: `ValueError` otherwise."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
