"""A whole batch is cut to fit `MMSERVE_MAX_TURN_MS` while sequences decode, from its measured cost per item."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from model import ALL_TASKS, MultimodalModel
from service.engine import Engine
from service.turn_budget import TurnBudget
from tests.service.test_scheduler_properties import Driver
from tests.support.server import noise_image


def test_the_budget_fits_items_by_their_measured_cost() -> None:
    budget = TurnBudget(100)
    assert budget.items("a", 8) == 8  # nothing measured yet
    budget.observe("a", 1.0, 2)  # 500 ms an item
    assert budget.items("a", 8) == 1  # never less than one
    budget.observe("b", 0.01, 10)  # 1 ms an item
    assert budget.items("b", 8) == 8 and budget.items("b", 500) == 100
    budget.observe("a", 0.1, 1)  # a moving average: (500 + 100) / 2 ms
    assert budget.items("a", 8) == 1
    budget.observe("a", 0.0, 1)
    budget.observe("a", 0.0, 1)  # 75 ms an item
    assert budget.items("a", 8) == 1
    budget.observe("a", 0.0, 1)  # 37.5 ms
    assert budget.items("a", 8) == 2
    assert TurnBudget(0).items("a", 8) == 8  # no budget


def test_a_whole_batch_is_cut_while_a_caption_decodes_and_whole_when_none_does(tiny_model: MultimodalModel) -> None:
    engine = Engine({task: tiny_model for task in ALL_TASKS}, continuous=True)
    sizes: list[tuple[int, int]] = []  # (running sequences, batch size) of each embedding batch
    driver = Driver(engine, ("caption", "vqa", "embed_text"), max_batch_size=8)

    def run(task: str, payloads: Sequence[Any], *progress: Any) -> list[Any]:
        sizes.append((driver.thread.running(), len(payloads)))
        return [np.zeros(4, dtype=np.float32) for _ in payloads]

    engine.run = run  # type: ignore[method-assign]
    driver.thread._budget = TurnBudget(100)
    driver.thread._budget.observe("embed_text", 1000.0, 1)  # measured: far beyond the budget per item
    [generation] = set(driver.thread._generations.values())
    generation.state._eos = -1  # type: ignore[attr-defined]  # the caption runs to its limit

    driver.submit("caption", engine.prepare_generation("caption", noise_image(0), max_new_tokens=12))
    driver.turn()  # the caption joins
    for i in range(5):
        driver.submit("embed_text", [i])
    for _ in range(5):
        driver.turn()
    assert sizes == [(1, 1)] * 5  # one item a turn: the caption's stream waits for one item at most
    driver.drain()
    sizes.clear()
    for i in range(5):
        driver.submit("embed_text", [i])
    driver.turn()
    assert sizes == [(0, 5)]  # nothing decodes: the batch is whole
    assert all(r.item.future.done() and not r.item.future.exception() for r in driver.requests)
