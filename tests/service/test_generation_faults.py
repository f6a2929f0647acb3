"""Rows carry their requests: an exception at any point of join, prefill, step, filter and answer (Hypothesis).

The step loop of the real tiny model that hears (`tiny+audio`: captions and transcripts are rows of one
decoding state) is turned by hand between random submits, clients that leave, and faults armed at random
points: the encoders (join; an audio's block by block), the state's `prefill`, `step` and `filter` (each
before or after the real work, so that a state may have changed when it raises; and a real out-of-memory
before a prefill or a step: retried in halves, or the newest preempted and resumed), making a new state, and
answering a request. After every turn the rows and the state agree and no row holds an answered request;
at the end every request was answered exactly once, with its own output or the injected error (or its
client's leaving, or 507 for one out of memory alone), nothing is left in flight, and the loop still
generates correctly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import service.generation
from model import ALL_TASKS
from model.api import Update
from model.checkpoint import load_builtin
from model.multimodal import BuiltinModel
from service.engine import Engine, Generated
from service.errors import ClientDisconnected, OutOfMemory, Timeout
from service.generation import Generation
from tests.service.test_scheduler_properties import Driver, Request
from tests.support.audio import tone
from tests.support.server import noise_image

POINTS = (
    "encode",
    "encode_step",
    "prefill_oom",
    "prefill_before",
    "prefill_after",
    "step_oom",
    "step_before",
    "step_after",
    "filter_before",
    "filter_after",
    "new_state",
    "answer",
)
SEEDS, LIMITS, SECONDS = range(2), (2, 7), (0.6, 1.3)


class InjectedFault(RuntimeError):
    """The exception every fault point raises."""


class Faults:
    """Points armed to raise once, at their next occurrence."""

    def __init__(self) -> None:
        self.armed: set[str] = set()

    def hit(self, point: str) -> None:
        if point in self.armed:
            self.armed.discard(point)
            event(f"fault: {point}")
            if point.endswith("_oom"):  # a real allocation failure (out of memory: retried, or preempted)
                torch.empty(1 << 60, dtype=torch.uint8)
            raise InjectedFault(f"injected at {point}")


class FaultyState:
    """A `DecodeState` whose prefill, step and filter raise on cue, before or after the real work."""

    def __init__(self, state: Any, faults: Faults) -> None:
        self._state, self._faults = state, faults
        self.capacity = state.capacity

    def __len__(self) -> int:
        return len(self._state)

    @property
    def free(self) -> int:
        return int(self._state.free)

    def prefill(self, specs: Sequence[Any], images: Sequence[Any]) -> list[Update]:
        self._faults.hit("prefill_oom")
        self._faults.hit("prefill_before")
        updates: list[Update] = self._state.prefill(specs, images)
        self._faults.hit("prefill_after")  # the state holds the new rows; their updates are lost
        return updates

    def step(self) -> list[Update]:
        self._faults.hit("step_oom")
        self._faults.hit("step_before")
        updates: list[Update] = self._state.step()
        self._faults.hit("step_after")  # every row has advanced; its token is lost
        return updates

    def filter(self, keep: Sequence[int]) -> None:
        self._faults.hit("filter_before")
        self._state.filter(keep)
        self._faults.hit("filter_after")  # the rows have moved

    def resumable(self, index: int) -> Any:
        return self._state.resumable(index)


class FaultyEncoding:
    """An audio encoding run a block at a time, whose next block raises on cue."""

    def __init__(self, encoding: Any, faults: Faults) -> None:
        self._encoding, self._faults = encoding, faults

    def advance(self) -> Any:
        self._faults.hit("encode_step")
        return self._encoding.advance()


class FaultyModel:
    """The built-in model, its encoders and `new_state` raising on cue; everything else its own."""

    def __init__(self, model: BuiltinModel, faults: Faults) -> None:
        self._model, self._faults = model, faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def encode_images(self, images: Sequence[Any]) -> list[Any]:
        self._faults.hit("encode")
        return self._model.encode_images(images)

    def encode_audios(self, audios: Sequence[Any]) -> list[Any]:
        self._faults.hit("encode")
        return self._model.encode_audios(audios)

    def start_audio_encoding(self, audios: Sequence[Any]) -> FaultyEncoding:
        self._faults.hit("encode")
        return FaultyEncoding(self._model.start_audio_encoding(audios), self._faults)

    def new_state(self, capacity: int) -> FaultyState:
        self._faults.hit("new_state")
        return FaultyState(self._model.new_state(capacity), self._faults)


@pytest.fixture(scope="module")
def hearing(tiny_audio_checkpoint_dir: Path, text_tower: Any) -> BuiltinModel:
    torch.set_num_threads(1)  # (as the service tests do: tiny steps, and the machine's cores are shared)
    return load_builtin(tiny_audio_checkpoint_dir, "cpu", text_tower=text_tower)


@pytest.fixture(scope="module")
def expected(hearing: BuiltinModel) -> dict[tuple[str, Any], str]:
    """What each caption (image seed, limit) and each transcript (audio length) gives alone."""
    alone: dict[tuple[str, Any], str] = {}
    for seed in SEEDS:
        for n in LIMITS:
            alone["caption", (seed, n)] = hearing.caption([noise_image(seed)], n)[0]
    for seconds in SECONDS:
        alone["transcribe", seconds] = hearing.transcribe([_audio(seconds)])[0]
    return alone


def _audio(seconds: float) -> np.ndarray:
    return tone(seconds, frequency=220 + 300 * seconds)


def _submit(driver: Driver, engine: Engine, what: tuple[Any, ...]) -> None:
    if what[0] == "caption":
        _, seed, n, stream = what
        payload = engine.prepare_generation("caption", noise_image(seed), max_new_tokens=n)
        driver.submit("caption", payload, stream=stream, about=("caption", (seed, n)))
    else:
        _, seconds, stream = what
        payload = engine.prepare_transcription("transcribe", _audio(seconds), None)
        driver.submit("transcribe", payload, stream=stream, about=("transcribe", seconds))


def _rows_agree(generation: Generation) -> None:
    """No orphan rows: one state row per row object, and every row's request still unanswered."""
    state = generation._state
    assert len(generation.rows) == (0 if state is None else len(state))
    assert not any(row.item.future.done() for row in generation.rows)
    assert not {id(r) for r in generation.rows} & {id(r) for r in generation.rejoining}


def _answered_rightly(request: Request, alone: dict[tuple[str, Any], str]) -> None:
    assert request.answers == 1
    error = None if request.item.future.cancelled() else request.item.future.exception()
    if request.item.future.cancelled() or isinstance(error, ClientDisconnected):
        assert request.abandoned
    elif isinstance(error, Timeout):
        assert request.expired
    elif error is not None:
        assert isinstance(error, InjectedFault | OutOfMemory), repr(error)  # (507: out of memory even alone)
    else:
        result: Generated = request.item.future.result()
        assert result.text == alone[request.about]
        if request.updates:  # a stream: every update once, in order, adding up to the whole
            assert request.updates[-1].finished and not any(u.finished for u in request.updates[:-1])
            assert "".join(u.delta for u in request.updates) == result.text


submits = st.one_of(
    st.tuples(st.just("caption"), st.sampled_from(SEEDS), st.sampled_from(LIMITS), st.booleans()),
    st.tuples(st.just("transcribe"), st.sampled_from(SECONDS), st.booleans()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.sampled_from(POINTS),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("submit"), submits),
            st.tuples(st.just("submit"), submits),
            st.tuples(st.just("turn")),
            st.tuples(st.just("turn")),
            st.tuples(st.just("fault"), st.sampled_from(POINTS)),
            st.tuples(st.sampled_from(("abandon", "expire")), st.integers(0, 8)),
            st.tuples(st.just("drain")),
        ),
        min_size=4,
        max_size=20,
    ),
    max_running=st.integers(1, 3),
)
def test_a_fault_anywhere_answers_everyone_once_and_the_loop_lives_on(
    hearing: BuiltinModel,
    expected: dict[tuple[str, Any], str],
    first: str,
    ops: list[tuple[Any, ...]],
    max_running: int,
) -> None:
    faults = Faults()
    model = FaultyModel(hearing, faults)
    engine = Engine({task: model for task in ALL_TASKS}, continuous=True)  # type: ignore[misc]
    driver = Driver(engine, ("caption", "vqa", "transcribe"), max_running)
    [generation] = set(driver.thread._generations.values())
    assert set(driver.thread._generations) == {"caption", "vqa", "transcribe"}  # one state for all three
    driver.after_turn = lambda turn: _rows_agree(generation)
    real_generated = Generated
    faults.armed.add(first)  # (the state is made: a fault in making the next one)

    def answering(*args: Any) -> Generated:
        faults.hit("answer")
        return real_generated(*args)

    with mock.patch.object(service.generation, "Generated", answering):
        driver.play(ops, lambda op: _submit(driver, engine, op[1]) if op[0] == "submit" else faults.armed.add(op[1]))
        for request in driver.requests:
            _answered_rightly(request, expected)
        assert all(b.in_flight() == 0 and b.pending() == 0 for b in driver.batchers.values())
        assert not generation.rows and not generation.rejoining
        # The loop lives on: with nothing armed, a caption and a transcript decode together, rightly.
        faults.armed.clear()
        before = len(driver.requests)
        _submit(driver, engine, ("caption", 1, 7, True))
        _submit(driver, engine, ("transcribe", 1.3, True))
        driver.drain()
    for request in driver.requests[before:]:
        assert request.item.future.exception() is None
        _answered_rightly(request, expected)


def test_a_streams_timings_are_set_before_it_hears_of_the_end(hearing: BuiltinModel) -> None:
    """The sink is called on the inference thread; what it reads of the request's timings when the last
    update comes (a stream's `done` event, its access log) is final: never a finish before the start."""
    engine = Engine({task: hearing for task in ALL_TASKS}, continuous=True)
    driver = Driver(engine, ("caption", "vqa", "transcribe"), 4)
    seen: list[tuple[bool, float]] = []  # (finished, inference seconds) at each update
    _submit(driver, engine, ("caption", 0, 7, True))
    _submit(driver, engine, ("transcribe", 0.6, True))
    for request in driver.requests:
        item = request.item
        item.on_update = lambda update, item=item: seen.append((update.finished, item.inference_s))  # type: ignore[misc]
    driver.drain()
    finals = [inference_s for finished, inference_s in seen if finished]
    assert len(finals) == 2 and all(s >= 0 for s in finals)
