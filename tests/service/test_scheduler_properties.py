"""Invariants of the batchers and the step loop under random schedules (Hypothesis).

The loop's turns are driven from the test, one at a time, between random submits, cancels (a client that
leaves), deadlines that pass, failing and out-of-memory inputs, and drains, so each schedule is exact and
replayable. After every schedule: every admitted item was answered exactly once, with the output of its
own payload (or the error its history explains), every batcher's in-flight count is back to zero, and
nothing was computed for a request after it had gone. First with a stand-in engine whose outputs are
derived from the payloads, then with the real tiny model's continuous generation (and its streams).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from model import ALL_TASKS, MultimodalModel
from model.api import Update
from model.generate import DecodeState
from service.batching import Batcher, Item
from service.engine import Engine, Generated
from service.errors import ClientDisconnected, OutOfMemory, Timeout
from service.metrics import Metrics
from service.scheduler import InferenceThread
from tests.support.server import noise_image

KINDS = ("ok", "bad", "tight", "huge")  # bad: always fails; tight: out of memory unless alone; huge: always


@dataclass(frozen=True)
class Payload:
    request: int
    value: int
    kind: str = "ok"


class StandInEngine:
    """Two batch tasks; each output names its request and doubles its value; records what it computed."""

    tasks: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.computed: list[tuple[int, int]] = []  # (turn, request) of every payload in every attempt
        self.turn = 0

    def stepwise(self, task: str) -> None:
        return None

    def run(self, task: str, payloads: Sequence[Payload], progress: Any = None) -> list[Any]:
        self.computed += [(self.turn, p.request) for p in payloads]
        kinds = {p.kind for p in payloads}
        if "bad" in kinds:
            raise ValueError("a bad input")
        if "huge" in kinds or ("tight" in kinds and len(payloads) > 1):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return [(task, p.request, 2 * p.value) for p in payloads]


@dataclass
class Request:
    item: Item[Any, Any]
    task: str
    payload: Any
    kind: str = "ok"
    about: Any = None  # what the test knows of the payload
    answers: int = 0  # done-callbacks seen
    gone_at: int | None = None  # the turn before which it was abandoned or its deadline passed
    abandoned: bool = False
    expired: bool = False
    updates: list[Update] = field(default_factory=list)


class Driver:
    """The step loop of an `InferenceThread`, turned by hand (its thread is never started)."""

    def __init__(self, engine: Any, tasks: Sequence[str], max_batch_size: int, capacity: int = 1000) -> None:
        self.lock = threading.Condition()
        self.batchers: dict[str, Batcher[Any, Any]] = {
            task: Batcher(task, max_batch_size, 0, capacity, self.lock) for task in tasks
        }
        self.engine = engine
        self.thread = InferenceThread(lambda: engine, self.batchers, self.lock, Metrics(), print, print)  # type: ignore[arg-type]
        self.thread._build_generations(engine)
        self.requests: list[Request] = []
        self.turns = 0
        self.after_turn: Any = lambda turn: None

    def submit(
        self, task: str, payload: Any, kind: str = "ok", expired: bool = False, stream: bool = False, about: Any = None
    ) -> None:
        request = Request(None, task, payload, kind, about, expired=expired)  # type: ignore[arg-type]
        with self.batchers[task].reserve(1) as slots:
            deadline = -1.0 if expired else float("inf")
            request.item = slots.submit(payload, deadline, on_update=request.updates.append if stream else None)
        if expired:
            request.gone_at = self.turns
        request.item.future.add_done_callback(lambda _: setattr(request, "answers", request.answers + 1))
        self.requests.append(request)

    def abandon(self, index: int) -> None:
        request = self.requests[-1 - index % len(self.requests)]  # counted from the latest
        if not request.item.future.done():
            request.item.abandon()
            request.abandoned = True
            request.gone_at = self.turns if request.gone_at is None else request.gone_at

    def expire(self, index: int) -> None:
        request = self.requests[-1 - index % len(self.requests)]  # counted from the latest
        if not request.item.future.done():
            request.item.deadline = -1.0
            request.expired = True
            request.gone_at = self.turns if request.gone_at is None else request.gone_at

    def has_work(self) -> bool:
        return any(len(g) for g in self.thread._generations.values()) or bool(self.thread._due())

    def turn(self) -> None:
        self.turns += 1
        self.engine.turn = self.turns
        if self.has_work():
            self.thread._turn(self.engine)
            self.thread._taken = []
            self.after_turn(self.turns)

    def drain(self) -> None:
        self.thread.flush()
        while self.has_work():
            self.turn()

    def play(self, ops: Sequence[tuple[Any, ...]], other: Any) -> None:
        """Run a schedule: abandon, expire, turn and drain here, any other operation by `other(op)`; then drain."""
        for op in ops:
            if op[0] in ("abandon", "expire"):
                if self.requests:
                    getattr(self, op[0])(op[1])
            elif op[0] in ("turn", "drain"):
                getattr(self, op[0])()
            else:
                other(op)
        self.drain()

    def check(self, matches: Any) -> None:
        """The invariants, once everything has been drained."""
        for request in self.requests:
            future: Future[Any] = request.item.future
            assert future.done() and request.answers == 1
            event(_outcome(future))
            try:
                result = future.result()
            except CancelledError:
                assert request.abandoned
                continue
            except ClientDisconnected:
                assert request.abandoned
                continue
            except Timeout:
                assert request.expired
                continue
            except ValueError:
                assert request.kind == "bad"
                continue
            except OutOfMemory:
                assert request.kind == "huge"
                continue
            assert matches(request, result)  # its own payload's output, nobody else's
        for request in self.requests:  # what a request that went nowhere may not have missed
            if not (request.abandoned or request.expired) and request.kind in ("ok", "tight"):
                assert not request.item.future.exception()
        assert all(b.in_flight() == 0 and b.pending() == 0 for b in self.batchers.values())
        assert not any(len(g) for g in self.thread._generations.values())


def _outcome(future: Future[Any]) -> str:
    if future.cancelled():
        return "cancelled"
    error = future.exception()
    return type(error).__name__ if error else "answered"


def operations(kinds: Sequence[str], tasks: Sequence[str]) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    submit = st.tuples(
        st.just("submit"),
        st.sampled_from(tasks),
        st.integers(0, 5),
        st.sampled_from(kinds),
        st.sampled_from((False, False, False, True)),  # submitted already past its deadline
    )
    return st.lists(
        st.one_of(
            submit,
            st.tuples(st.just("abandon"), st.integers(0, 8)),
            st.tuples(st.just("expire"), st.integers(0, 8)),
            st.tuples(st.just("turn")),
            st.tuples(st.just("drain")),
        ),
        max_size=40,
    )


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations(KINDS, ("a", "b")), max_batch_size=st.integers(1, 5))
def test_batch_tasks_under_random_schedules(ops: list[tuple[Any, ...]], max_batch_size: int) -> None:
    engine = StandInEngine()
    driver = Driver(engine, ("a", "b"), max_batch_size)

    def submit(op: tuple[Any, ...]) -> None:
        _, task, value, kind, expired = op
        driver.submit(task, Payload(len(driver.requests), value, kind), kind, expired=expired)

    driver.play(ops, submit)
    driver.check(lambda r, result: result == (r.task, r.payload.request, 2 * r.payload.value))
    gone = {i: r.gone_at for i, r in enumerate(driver.requests) if r.gone_at is not None}
    for turn, request in engine.computed:  # never started after its request had gone
        assert request not in gone or turn <= gone[request]


# The real tiny model's continuous generation.
SEEDS, LIMITS = range(3), (1, 4, 9)


@pytest.fixture(scope="module")
def generating(tiny_model: MultimodalModel) -> tuple[Engine, dict[tuple[int, int], str]]:
    """An engine decoding step by step, and each (image seed, max_new_tokens)'s caption generated alone."""
    engine = Engine({task: tiny_model for task in ALL_TASKS}, continuous=True)
    alone = {(seed, n): tiny_model.caption([noise_image(seed)], n)[0] for seed in SEEDS for n in LIMITS}
    return engine, alone


def run_out_of_memory() -> None:
    torch.empty(1 << 60, dtype=torch.uint8)  # the CPU allocator's real "can't allocate memory"


class Faults:
    """Out of memory on cue in a generation state: the next prefill or step of more than one sequence."""

    def __init__(self) -> None:
        self.prefill = self.step = False

    def install(self, state: DecodeState) -> None:
        real_prefill, real_step = state.prefill, state.step

        def prefill(specs: Sequence[Any], images: Sequence[Any]) -> list[Update]:
            if self.prefill and len(specs) > 1:
                self.prefill = False
                event("a prefill ran out of memory")
                run_out_of_memory()
            return real_prefill(specs, images)

        def step() -> list[Update]:
            if self.step and len(state) > 1:
                self.step = False
                event("a step ran out of memory")
                run_out_of_memory()
            return real_step()

        state.prefill, state.step = prefill, step  # type: ignore[method-assign]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("submit"), st.sampled_from(SEEDS), st.sampled_from(LIMITS), st.booleans()),
            st.tuples(st.just("turn")),
            st.tuples(st.just("submit"), st.sampled_from(SEEDS), st.sampled_from(LIMITS), st.booleans()),
            st.tuples(st.just("turn")),
            st.tuples(st.sampled_from(("abandon", "expire")), st.integers(0, 8)),
            st.tuples(st.sampled_from(("oom_prefill", "oom_step", "drain"))),
        ),
        min_size=6,
        max_size=30,
    ),
    max_running=st.integers(1, 4),
)
def test_continuous_generation_under_random_schedules(
    generating: tuple[Engine, dict[tuple[int, int], str]], ops: list[tuple[Any, ...]], max_running: int
) -> None:
    engine, alone = generating
    driver = Driver(engine, ("caption", "vqa"), max_running)
    [generation] = set(driver.thread._generations.values())
    faults = Faults()
    faults.install(generation.state)  # type: ignore[arg-type]

    def nothing_computed_for_the_gone(turn: int) -> None:
        for item in generation.items:  # the sequences that were prefilled or stepped this turn
            [request] = [r for r in driver.requests if r.item is item]
            assert request.gone_at is None or request.gone_at >= turn

    driver.after_turn = nothing_computed_for_the_gone
    for op in ops:
        if op[0] == "submit":
            _, seed, n, stream = op
            payload = engine.prepare_generation("caption", noise_image(seed), max_new_tokens=n)
            driver.submit("caption", payload, stream=stream, about=(seed, n))
        elif op[0] in ("abandon", "expire") and driver.requests:
            getattr(driver, op[0])(op[1])
        elif op[0] == "turn":
            driver.turn()
        elif op[0] == "drain":
            driver.drain()
        elif op[0] == "oom_prefill":
            faults.prefill = True
        elif op[0] == "oom_step":
            faults.step = True
    driver.drain()

    def matches(request: Request, result: Generated) -> bool:
        seed, n = request.about
        if request.updates:  # a stream: every update once, in order, adding up to the whole
            assert [u.finished for u in request.updates] == [False] * (len(request.updates) - 1) + [True]
            assert [u.tokens for u in request.updates[:-1]] == list(range(1, len(request.updates)))
            assert "".join(u.delta for u in request.updates) == result.text
        return result.text == alone[(seed, n)]

    driver.check(matches)
