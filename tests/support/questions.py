"""Questions the built-in model knows (`model.questions`), for tests that ask many distinct ones: a built-in
model refuses any other question with a 422."""

from __future__ import annotations

from itertools import product

from model.scenes import COLOURS, SHAPES

_OBJECTS = [f"{colour} {shape}" for colour, shape in product(COLOURS, SHAPES)]
# Distinct questions of the trained grammar (existence, then position questions), in a fixed order.
KNOWN_QUESTIONS = [f"is there a {o}?" for o in _OBJECTS] + [
    f"is the {a} {side} of the {b}?" for a, b in product(_OBJECTS, SHAPES) for side in ("left", "right")
]


def known_question(index: int) -> str:
    """A known question for each index (they repeat only after len(KNOWN_QUESTIONS))."""
    return KNOWN_QUESTIONS[index % len(KNOWN_QUESTIONS)]
