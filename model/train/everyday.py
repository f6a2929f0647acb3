"""Everyday English that is not a scene sentence: random words, for the out-of-domain clips and other talkers."""

from __future__ import annotations

import random
from functools import cache

from model.scenes import COLOURS, NUMBERS, SHAPES, SIZES

SCENE_WORDS = (*SHAPES, *COLOURS, *SIZES, *NUMBERS, "left", "right", "colour", "shape", "how", "many", "yes", "no")


@cache
def everyday_words() -> tuple[str, ...]:
    """Words of English from the shipped MiniLM vocabulary (whole words of 3-10 letters, no scene words)."""
    from model.text import minilm_path

    words = (minilm_path() / "vocab.txt").read_text().split()
    scene = set(SCENE_WORDS)
    return tuple(w for w in words if w.isascii() and w.isalpha() and 3 <= len(w) <= 10 and w not in scene)


def everyday_text(rng: random.Random) -> str:
    """3-12 random English words, and a scene word or two among them a quarter of the time."""
    words = rng.choices(everyday_words(), k=rng.randint(3, 12))
    if rng.random() < 0.25:
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(SCENE_WORDS))
    return " ".join(words)
