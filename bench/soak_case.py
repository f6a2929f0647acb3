"""A soak request and what must come back (`Case`), and the pool the clients draw them from (`Pool`).

`bench/soak.py` sends them; `bench/soak_images.py` makes the text-to-image ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

TASK_OF_ROUTE = {
    "/caption": "caption",
    "/vqa": "vqa",
    "/embed": "embed",
    "/transcribe": "transcribe",
    "/generate": "text_to_image",
    "/v1/images/generations": "text_to_image",
}


@dataclass(frozen=True)
class Case:
    """One request and what must come back: a status, and for a 200 the answer (text, vectors or pixels)."""

    name: str
    route: str
    kwargs: dict[str, Any]
    status: int
    answer: Any = None
    heard: str | None = None  # a spoken question: what the response must say was heard

    @property
    def task(self) -> str:
        """What the soak reports it under (an invalid request counts under its route's task)."""
        return TASK_OF_ROUTE[self.route]


@dataclass(frozen=True)
class Pool:
    """What the clients send: a text-to-image case with probability `image_share`, else any other case."""

    cases: list[Case]
    image_cases: list[Case]
    image_share: float

    def pick(self, rng: random.Random) -> Case:
        if self.image_cases and (not self.cases or rng.random() < self.image_share):
            return rng.choice(self.image_cases)
        return rng.choice(self.cases)
