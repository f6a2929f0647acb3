"""A real server's life: 503 before ready, 429 under a flood, dropped disconnects, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.server import ServerProcess, encode_image, error_of, noise_image

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


def upload(seed: int) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("image.png", encode_image(noise_image(seed)), "image/png")}


@pytest.fixture(scope="module")
def slow_start(base_settings: dict[str, str]) -> Iterator[ServerProcess]:
    """`mmserve serve --model ... --device cpu`, a tiny queue, long waits, and a 3 s loading delay
    (tests/support/slow_loading_server.py).

    Started, not waited for: the first test watches it become ready.
    """
    flags = ("serve", "--model", base_settings["MMSERVE_MODEL"], "--device", "cpu", "--log-level", "warning")
    settings = {
        "MMSERVE_TORCH_THREADS": "1",
        "SLOW_LOADING_S": "3",
        "MMSERVE_QUEUE_CAPACITY": "4",
        "MMSERVE_MAX_EMBED_INPUTS": "4",
        "MMSERVE_CAPTION_MAX_WAIT_MS": "1000",  # admitted requests hold the queue for a second
        "MMSERVE_VQA_MAX_WAIT_MS": "3000",
    }
    server = ServerProcess(settings, args=flags, module="tests.support.slow_loading_server").start()
    try:
        yield server
    finally:
        assert server.stop() in (0, -15)


def test_503_before_ready(slow_start: ServerProcess) -> None:
    slow_start.wait_until("loading")
    health = httpx.get(f"{slow_start.url}/health")
    assert (health.status_code, health.json()["status"]) == (503, "loading")
    response = httpx.post(f"{slow_start.url}/caption", files=upload(0))
    assert response.status_code == 503
    assert error_of(response)["type"] == "not_ready"
    slow_start.wait_until("ok")
    assert httpx.post(f"{slow_start.url}/caption", files=upload(0)).status_code == 200


async def test_flood_gets_429(slow_start: ServerProcess) -> None:
    slow_start.wait_until("ok")
    async with httpx.AsyncClient(base_url=slow_start.url, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/caption", files=upload(i)) for i in range(40)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) >= 4
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert error_of(refused)["type"] == "queue_full"


async def test_a_disconnected_request_is_never_computed(slow_start: ServerProcess) -> None:
    slow_start.wait_until("ok")
    async with httpx.AsyncClient(base_url=slow_start.url, timeout=60) as client:
        # The client gives up after 1 s, before its batch is due (3 s): its item is dropped.
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/vqa", files=upload(99), data={"question": "what?"}, timeout=1.0)
        await asyncio.sleep(3.0)
        metrics = (await client.get("/metrics")).text
    assert 'mmserve_requests_total{status="499",task="vqa"} 1.0' in metrics
    assert 'mmserve_batch_size_count{task="vqa"}' not in metrics


async def test_sigterm_loses_no_accepted_request(base_settings: dict[str, str]) -> None:
    settings = {
        **base_settings,
        "MMSERVE_CAPTION_MAX_WAIT_MS": "30000",  # they wait in the queue until SIGTERM flushes it
        "MMSERVE_CAPTION_MAX_BATCH_SIZE": "64",
    }
    server = ServerProcess(settings).start()
    try:
        server.wait_until("ok")
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            in_flight = [asyncio.create_task(client.post("/caption", files=upload(i))) for i in range(16)]
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:  # all 16 accepted and queued
                queued = re.search(
                    r'^mmserve_queue_size\{task="caption"\} (\S+)', (await client.get("/metrics")).text, re.M
                )
                if queued and float(queued.group(1)) == 16:
                    break
                await asyncio.sleep(0.02)
            stopping = asyncio.get_running_loop().run_in_executor(None, server.stop)
            responses = await asyncio.gather(*in_flight)
            assert [r.status_code for r in responses] == [200] * 16
            assert all(r.json()["caption"] is not None for r in responses)
            assert await stopping in (0, -15)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health")
    finally:
        server.stop()
