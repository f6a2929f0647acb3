"""The batch-shape checks every model shares."""

import pytest

from model.inputs import check_pairs, row_limits


def test_one_question_per_image() -> None:
    check_pairs(["image"] * 2, ["q1", "q2"])
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        check_pairs(["image"] * 2, ["q1"])


def test_one_limit_for_all_or_one_per_row() -> None:
    assert row_limits(3, 2) == [3, 3] and row_limits([1, 4], 2) == [1, 4]
    with pytest.raises(ValueError, match="1 max_new_tokens values for 2 inputs"):
        row_limits([1], 2)
    with pytest.raises(ValueError, match=">= 0"):
        row_limits([-1], 1)
