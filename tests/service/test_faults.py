"""Faults of the model and the device, injected on cue into the real tiny model's service: out of memory
(a real allocation failure of the CPU allocator), a broken device (a sticky CUDA-like error), a stuck device
(a step that waits on an event) and an inference thread that dies. Each asserts the states and the answers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

import service.faults
import service.runtime
from model import MultimodalModel
from model.generate import DecodeState, SequenceSpec
from service.engine import Engine
from service.faults import GROW_AFTER_S, BatchCap
from service.generation import Generation
from tests.service.test_continuous_batching import parse_events
from tests.support.server import encode_image, error_of, noise_image

pytestmark = pytest.mark.anyio

BROKEN = "CUDA error: device-side assert triggered"


@pytest.fixture(scope="module")
def reference(checkpoint: Path, load_once) -> MultimodalModel:  # type: ignore[no-untyped-def]
    model: MultimodalModel = load_once(str(checkpoint), "cpu")
    return model


def run_out_of_memory() -> None:
    """A real allocation failure: the CPU allocator's "can't allocate memory" (CUDA's would be
    `torch.OutOfMemoryError`; both are treated alike)."""
    torch.empty(1 << 60, dtype=torch.uint8)


def patch_engine_run(monkeypatch: pytest.MonkeyPatch, before: Callable[[str, Sequence[Any]], None]) -> list[int]:
    """`Engine.run`, calling `before(task, payloads)` first; returns the sizes of the batches it was given."""
    real_run = Engine.run
    sizes: list[int] = []

    def run(self: Engine, task: str, payloads: Sequence[Any], progress: Any = None) -> list[Any]:
        if task.startswith("embed"):
            sizes.append(len(payloads))
            before(task, payloads)
        return real_run(self, task, payloads, progress)

    monkeypatch.setattr(Engine, "run", run)
    return sizes


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def metrics_of(client: httpx.AsyncClient) -> str:
    return (await client.get("/metrics")).text


def upload(seed: int, **fields: str) -> dict[str, Any]:
    return {"files": {"image": ("i.png", encode_image(noise_image(seed)), "image/png")}, "data": fields}


# Out of memory.
def test_the_batch_cap_halves_and_doubles_back_after_a_while_without_out_of_memory() -> None:
    seen: list[int] = []
    now = [0.0]
    cap = BatchCap(64, seen.append, clock=lambda: now[0])
    cap.out_of_memory(40)
    assert cap.limit == 20
    cap.out_of_memory(40)  # never raised by a batch larger than the cap
    assert cap.limit == 20
    for _ in range(1000):  # fitting batches alone do not grow it
        cap.fitted()
    now[0] = GROW_AFTER_S - 0.5
    cap.fitted()
    assert cap.limit == 20
    now[0] = GROW_AFTER_S
    cap.fitted()
    assert cap.limit == 40
    now[0] = 1.5 * GROW_AFTER_S
    cap.out_of_memory(40)  # a failure restarts the wait
    now[0] = 2.4 * GROW_AFTER_S
    cap.fitted()
    assert cap.limit == 20
    now[0] = 2.5 * GROW_AFTER_S
    cap.fitted()
    now[0] = 3.5 * GROW_AFTER_S
    cap.fitted()
    assert cap.limit == 64  # doubled, and never past the maximum
    cap.out_of_memory(1)
    assert cap.limit == 1  # never below one
    assert seen == [64, 20, 20, 40, 20, 40, 64, 1]


async def test_an_embedding_batch_out_of_memory_is_split_in_halves_and_capped(
    serve, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    texts = [f"text number {i}" for i in range(8)]
    async with serve() as client:
        alone = [(await client.post("/embed", json={"input": text})).json()["data"][0]["embedding"] for text in texts]

        def more_than_two_do_not_fit(task: str, payloads: Sequence[Any]) -> None:
            if len(payloads) > 2:
                run_out_of_memory()

        sizes = patch_engine_run(monkeypatch, more_than_two_do_not_fit)
        response = await client.post("/embed", json={"input": texts})
        assert response.status_code == 200, response.text
        got = [row["embedding"] for row in response.json()["data"]]
        np.testing.assert_allclose(got, alone, atol=1e-5)  # each text got its own embedding, in order
        assert sizes == [8, 4, 2, 2, 4, 2, 2]
        metrics = await metrics_of(client)
        assert metric(metrics, "mmserve_oom_total", task="embed_text") == 3
        assert metric(metrics, "mmserve_batch_cap", task="embed_text") == 2
        sizes.clear()
        response = await client.post("/embed", json={"input": texts})  # capped now: no new failure
        assert response.status_code == 200
        assert sizes == [2, 2, 2, 2]
        assert metric(await metrics_of(client), "mmserve_oom_total", task="embed_text") == 3


async def test_an_input_that_does_not_fit_alone_gets_507_and_the_others_their_answers(
    serve, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    async with serve(embed_text_max_wait_ms=60_000, embed_text_max_batch_size=3) as client:
        huge = client.app.state.runtime.ensure_ready().prepare_text("embed_text", "huge")  # type: ignore[attr-defined]

        def huge_never_fits(task: str, payloads: Sequence[Any]) -> None:
            if huge in payloads:
                run_out_of_memory()

        sizes = patch_engine_run(monkeypatch, huge_never_fits)
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        requests = []
        for i, text in enumerate(("a", "huge", "b")):  # queued in this order (the batch waits for all three)
            requests.append(asyncio.ensure_future(client.post("/embed", json={"input": text})))
            while i < 2 and runtime.batchers["embed_text"].pending() <= i:
                await asyncio.sleep(0.005)
        responses = await asyncio.gather(*requests)
        assert [r.status_code for r in responses] == [200, 507, 200]
        assert error_of(responses[1]) == {
            "type": "out_of_memory",
            "message": "the embed_text input does not fit in the device's memory, even alone",
        }
        assert sizes == [3, 1, 2, 1, 1]  # [a, huge, b] → [a] + [huge, b] → [huge] (507) + [b]
        metrics = await metrics_of(client)
        assert metric(metrics, "mmserve_oom_total", task="embed_text") == 3
        assert metric(metrics, "mmserve_batch_cap", task="embed_text") == 1
        assert (await client.get("/health")).status_code == 200  # out of memory is not a broken device


def patch_decode_state(
    monkeypatch: pytest.MonkeyPatch, method: str, before: Callable[[DecodeState, Sequence[Any]], None]
) -> list[int]:
    """`DecodeState.<method>`, calling `before(state, args)` first; returns the rows it ran with each time."""
    real = getattr(DecodeState, method)
    rows: list[int] = []

    def patched(self: DecodeState, *args: Any) -> Any:
        rows.append(len(args[0]) if args else len(self))
        before(self, args)
        return real(self, *args)

    monkeypatch.setattr(DecodeState, method, patched)
    return rows


async def test_a_prefill_out_of_memory_is_retried_in_halves(
    serve, monkeypatch: pytest.MonkeyPatch, reference: MultimodalModel
) -> None:  # type: ignore[no-untyped-def]
    expected = [reference.caption([noise_image(s)], 6)[0] for s in range(4)]  # (before the patch)
    cached: list[tuple[int, int]] = []  # the encoder cache's entries before and after each failure
    real_free = Generation._free_cache

    def free(self: Generation) -> None:
        size = len(self.cache)
        real_free(self)
        cached.append((size, len(self.cache)))

    monkeypatch.setattr(Generation, "_free_cache", free)
    async with serve(caption_max_wait_ms=60_000, caption_max_batch_size=4) as client:
        joined = patch_decode_state(
            monkeypatch, "prefill", lambda state, args: run_out_of_memory() if len(args[0]) > 1 else None
        )
        responses = await asyncio.gather(
            *(client.post("/caption", **upload(seed, max_new_tokens="6")) for seed in range(4))
        )
        assert [r.status_code for r in responses] == [200] * 4
        assert [r.json()["caption"] for r in responses] == expected
        assert joined == [4, 2, 1, 1, 2, 1, 1]
        assert len(cached) == 3 and all(before > 0 and after == 0 for before, after in cached)  # emptied each time
        metrics = await metrics_of(client)
        assert metric(metrics, "mmserve_oom_total", task="caption") == 3
        assert metric(metrics, "mmserve_batch_cap", task="decode_step") == 1  # (0 running + 2 joining) // 2


async def test_a_decoding_step_out_of_memory_preempts_the_newest(
    serve, monkeypatch: pytest.MonkeyPatch, reference: MultimodalModel
) -> None:  # type: ignore[no-untyped-def]
    """Four running, one step out of memory: the cap halves to two, the two latest to arrive leave with
    their tokens and are prefilled again with them (once the others have finished), the two oldest keep
    their keys and values and are never prefilled again; the encoder cache is emptied; every stream gets
    each token once and its text equals the model's alone."""
    failed = threading.Event()

    def fail_once_with_four(state: DecodeState, args: Sequence[Any]) -> None:
        if len(state) == 4 and not failed.is_set():
            failed.set()
            run_out_of_memory()

    prefilled: list[SequenceSpec] = []
    preempted: list[tuple[list[float], list[float]]] = []  # (arrivals of those who stayed, of those who left)
    cached: list[tuple[int, int]] = []  # the encoder cache's entries before and after the failure
    real_preempt, real_free = Generation._preempt_newest, Generation._free_cache

    def preempt(self: Generation) -> None:
        before = list(self.rows)
        real_preempt(self)
        stayed = [row.item.enqueued_at for row in self.rows]
        left = [row.item.enqueued_at for row in before if row not in self.rows]
        assert all(row.resume is not None for row in self.rejoining)
        preempted.append((stayed, left))

    def free(self: Generation) -> None:
        size = len(self.cache)
        real_free(self)
        cached.append((size, len(self.cache)))

    expected = [reference.caption([noise_image(s)], 12)[0] for s in range(4)]  # (before the patch)
    monkeypatch.setattr(service.faults, "GROW_AFTER_S", 1e9)  # the cap stays where the failure put it
    monkeypatch.setattr(Generation, "_preempt_newest", preempt)
    monkeypatch.setattr(Generation, "_free_cache", free)
    async with serve(caption_max_wait_ms=60_000, caption_max_batch_size=4) as client:
        steps = patch_decode_state(monkeypatch, "step", fail_once_with_four)
        joined = patch_decode_state(monkeypatch, "prefill", lambda state, args: prefilled.extend(args[0]))
        requests = [client.post("/caption", **upload(seed, max_new_tokens="12", stream="true")) for seed in range(4)]
        responses = await asyncio.gather(*requests)
        assert failed.is_set() and steps[0] == 4
        for response, caption in zip(responses, expected, strict=True):
            events = parse_events(response.text)
            tokens = [data for kind, data in events if kind == "token"]
            assert [t["index"] for t in tokens] == list(range(len(tokens)))  # nothing sent twice or skipped
            assert "".join(t["text"] for t in tokens) == events[-1][1]["caption"] == caption
        [(stayed, left)] = preempted
        assert len(stayed) == len(left) == 2 and max(stayed) < min(left)  # the newest left
        assert joined == [4, 2]  # only those two were prefilled again, with the tokens they had
        assert not any(spec.generated for spec in prefilled[:4])
        assert all(len(spec.generated) >= 1 for spec in prefilled[4:])
        assert max(steps[1:]) == 2
        assert cached == [(4, 0)]
        metrics = await metrics_of(client)
        assert metric(metrics, "mmserve_oom_total", task="decode_step") == 1
        assert metric(metrics, "mmserve_batch_cap", task="decode_step") == 2


async def test_a_sequence_whose_step_does_not_fit_alone_gets_507(serve, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    async with serve() as client:
        patch_decode_state(monkeypatch, "step", lambda state, args: run_out_of_memory())
        response = await client.post("/caption", **upload(1, max_new_tokens="12"))
        assert response.status_code == 507, response.text
        assert error_of(response)["type"] == "out_of_memory"
        assert (await client.get("/health")).status_code == 200
        monkeypatch.undo()
        assert (await client.post("/caption", **upload(1, max_new_tokens="12"))).status_code == 200


# A broken device.
async def test_a_sticky_device_error_turns_unhealthy_at_once_without_retrying(
    serve, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    def broken(task: str, payloads: Sequence[Any]) -> None:
        raise torch.AcceleratorError(BROKEN) if hasattr(torch, "AcceleratorError") else RuntimeError(BROKEN)

    async with serve() as client:
        sizes = patch_engine_run(monkeypatch, broken)
        response = await client.post("/embed", json={"input": ["a", "b", "c"]})
        assert response.status_code == 503
        assert error_of(response)["message"] == "the device failed; the server is unhealthy"
        assert sizes == [3]  # not retried item by item
        health = await client.get("/health")
        assert (health.status_code, health.json()["status"]) == (503, "unhealthy")
        assert (await client.get("/health/live")).status_code == 503
        assert (await client.post("/caption", **upload(1))).status_code == 503


async def test_the_health_device_check_marks_a_broken_device_unhealthy(serve, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(service.runtime, "DEVICE_CHECK_INTERVAL_S", 3600.0)
    monkeypatch.setattr(service.runtime, "DEVICE_CHECK_WAIT_S", 120.0)  # (a loaded machine is not a broken one)
    checks: list[str] = []
    async with serve() as client:
        assert (await client.get("/health")).status_code == 200  # (the first check passed)

        def check_device(self: Engine) -> None:
            checks.append("checked")
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        monkeypatch.setattr(Engine, "check_device", check_device)
        assert (await client.get("/health")).status_code == 200  # cached: no check within the interval
        assert checks == []
        client.app.state.runtime._device_checked_at = -float("inf")  # type: ignore[attr-defined]  # the interval is up
        health = await client.get("/health")
        assert (health.status_code, health.json()["status"]) == (503, "unhealthy")
        assert checks == ["checked"]
        assert (await client.get("/health/live")).status_code == 503
        assert (await client.post("/embed", json={"input": "a"})).status_code == 503


# A stuck device.
async def test_a_stuck_step_turns_unhealthy_and_answers_everyone_503(serve, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    release, stuck = threading.Event(), threading.Event()

    def hang(task: str, payloads: Sequence[Any]) -> None:
        stuck.set()
        release.wait(120)

    async with serve(step_timeout_s=0.5, exit_on_stuck=False) as client:
        patch_engine_run(monkeypatch, hang)
        try:
            hanging = asyncio.ensure_future(client.post("/embed", json={"input": "a"}))
            await asyncio.to_thread(stuck.wait, 30)
            waiting = asyncio.ensure_future(client.post("/caption", **upload(1)))  # queued behind the stuck step
            responses = await asyncio.gather(hanging, waiting)
            assert [r.status_code for r in responses] == [503, 503]
            assert error_of(responses[0])["message"].startswith("the device is stuck (a step has run for")
            health = await client.get("/health")
            assert (health.status_code, health.json()["status"]) == (503, "unhealthy")
            assert (await client.get("/health/live")).status_code == 503
            assert (await client.post("/embed", json={"input": "b"})).status_code == 503
            runtime = client.app.state.runtime  # type: ignore[attr-defined]
            assert runtime._in_flight() == 0
        finally:
            release.set()


# The inference thread dies.
class LoopBug(BaseException):
    """Not an Exception: nothing in the loop catches it, as with a bug in the loop itself."""


async def test_when_the_inference_thread_dies_every_admitted_request_gets_503(
    serve, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    async with serve(caption_max_wait_ms=60_000, caption_max_batch_size=8) as client:
        started = threading.Event()
        release = threading.Event()

        def die(task: str, payloads: Sequence[Any]) -> None:
            started.set()
            release.wait(60)
            raise LoopBug("a bug in the loop")

        patch_engine_run(monkeypatch, die)
        running = asyncio.ensure_future(client.post("/embed", json={"input": ["a", "b"]}))
        await asyncio.to_thread(started.wait, 30)
        queued = [asyncio.ensure_future(client.post("/caption", **upload(s))) for s in range(3)]
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        while runtime.batchers["caption"].pending() < 3:
            await asyncio.sleep(0.01)
        release.set()
        responses = await asyncio.gather(running, *queued)
        assert [r.status_code for r in responses] == [503] * 4  # not 504: nobody waited for its timeout
        assert {error_of(r)["message"] for r in responses} == {"the inference thread stopped; the server is unhealthy"}
        for _ in range(1000):  # a failed item's slot is released by its future's callback, which may run just after
            if runtime._in_flight() == 0:
                break
            await asyncio.sleep(0.01)
        assert runtime._in_flight() == 0
        assert (await client.get("/health/live")).status_code == 503
