"""Streams over a real uvicorn server (TCP): clients that leave at any moment cost no 5xx, no ERROR log line
and no further decoding; a stream is counted when it ends, with its real outcome.

50 streaming requests on /caption, /vqa and /v1/chat/completions leave while queued (one sequence per task
at a time, so they wait), right after their response starts, or mid-stream, among requests that stay and
must be answered exactly as if alone. Decoding steps are slowed (and never end early) so that "queued" and
"mid-stream" are real states, not races.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.test_continuous_batching import live_server, parse_events, slow_steps
from tests.support.server import encode_image, noise_image

__all__ = ["slow_steps"]  # the fixture, used here by name

pytestmark = pytest.mark.anyio

TOKENS = 40
SETTINGS = {"caption_max_batch_size": 1, "vqa_max_batch_size": 1, "vqa_max_new_tokens": TOKENS}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def server_log() -> Iterator[Records]:
    """Every warning and error the server logs (uvicorn's own loggers do not propagate to the root)."""
    records = Records()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn"), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(records)


def b64(seed: int) -> str:
    return base64.b64encode(encode_image(noise_image(seed))).decode()


def request(
    client: httpx.AsyncClient, route: str, seed: int, stream: bool = True, tokens: int = TOKENS
) -> httpx.Request:
    """A /caption (multipart), /vqa (JSON) or chat request about image `seed`, asking for `tokens` tokens."""
    if route == "/caption":
        data = {"max_new_tokens": str(tokens), "stream": str(stream).lower()}
        files = {"image": ("i.png", encode_image(noise_image(seed)), "image/png")}
        return client.build_request("POST", route, files=files, data=data)
    if route == "/vqa":
        return client.build_request("POST", route, json={"image": b64(seed), "question": "what?", "stream": stream})
    url = "data:image/png;base64," + b64(seed)
    content = [{"type": "image_url", "image_url": {"url": url}}]
    model = client.headers.get("X-Test-Model", "")
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": TOKENS, "stream": stream}
    return client.build_request("POST", route, json=body)


async def leave(client: httpx.AsyncClient, route: str, seed: int, when: str) -> int | None:
    """One client that leaves: while queued (no response yet), right after the response starts, or after three
    pieces of text. Returns the status it saw, if any."""
    sending = asyncio.ensure_future(client.send(request(client, route, seed), stream=True))
    if when == "queued":
        await asyncio.sleep(random.uniform(0.05, 0.3))
        if not sending.done():
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            return None
    response = await sending
    try:
        if when == "mid":
            pieces = 0
            async for line in response.aiter_lines():
                pieces += line.startswith(("event: token", 'data: {"id"'))
                if pieces == 4:
                    break
        return response.status_code
    finally:
        await response.aclose()


async def stays(client: httpx.AsyncClient, route: str, seed: int, stream: bool) -> str:
    """One client that reads its whole answer; returns its text."""
    response = await client.send(request(client, route, seed, stream), stream=True)
    await response.aread()
    assert response.status_code == 200, response.text
    if not stream:
        body = response.json()
        return str(body.get("caption") or body.get("answer") or body["choices"][0]["message"]["content"])
    if route.startswith("/v1/"):
        chunks = [line[6:] for line in response.text.splitlines() if line.startswith('data: {"id"')]
        deltas = [httpx.Response(200, content=chunk).json()["choices"][0]["delta"] for chunk in chunks]
        return "".join(delta.get("content", "") for delta in deltas)
    events = parse_events(response.text)
    assert events[-1][0] == "done", events[-1]
    return "".join(data["text"] for kind, data in events if kind == "token")


def statuses(metrics: str) -> dict[str, float]:
    return {
        f"{task} {status}": float(value)
        for status, task, value in re.findall(
            r'^mmserve_requests_total\{status="(\d+)",task="(\w+)"\} (\S+)$', metrics, re.M
        )
    }


async def settled(client: httpx.AsyncClient, app: Any) -> str:
    """The metrics once nothing is admitted and no sequence runs any more."""
    runtime = app.state.runtime
    while True:
        metrics = (await client.get("/metrics")).text
        running = re.search(r"^mmserve_running_sequences (\S+)$", metrics, re.M)
        busy = any(b.in_flight() for b in runtime.batchers.values())
        if not busy and running is not None and float(running.group(1)) == 0:
            return metrics
        await asyncio.sleep(0.02)


async def test_fifty_clients_that_leave_cost_no_5xx_no_error_and_no_decoding(
    checkpoint: Path, slow_steps: Callable[[float], list[int]]
) -> None:
    steps = slow_steps(0.005)
    random.seed(0)
    routes = ["/caption", "/vqa", "/v1/chat/completions"]
    moments = ["queued", "started", "mid"]
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    with server_log() as log, live_server(checkpoint, **SETTINGS) as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            client.headers["X-Test-Model"] = (await client.get("/v1/models")).json()["data"][0]["id"]
            leavers = [leave(client, routes[i % 3], 10 + i, moments[(i // 3) % 3]) for i in range(50)]
            staying = [stays(client, route, 100 + i, stream=i % 2 == 0) for i, route in enumerate(routes * 2)]
            results = await asyncio.gather(*leavers, *staying)
            seen, texts = results[:50], results[50:]
            assert all(status in (None, 200) for status in seen), seen
            assert seen.count(None) >= 5  # some did leave while queued
            metrics = await settled(client, app)
            computed = len(steps)
            await asyncio.sleep(0.1)
            assert len(steps) == computed  # nothing decodes any more
            for i, route in enumerate(routes * 2):  # those that stayed got what they get alone
                assert texts[i] == await stays(client, route, 100 + i, stream=False)
            counted = statuses(metrics)
            assert not [key for key in counted if key.split()[1].startswith("5")], counted
            # every request the server saw is counted (a client may leave before its request reached a handler);
            # those that left are 499, not 200 (short answers may have ended before their client left)
            assert sum(counted.values()) >= 50 - seen.count(None) + 6
            assert counted.get("caption 499", 0) + counted.get("vqa 499", 0) >= 30, counted
    errors = [r for r in log.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_a_streams_duration_covers_it_and_an_error_event_is_not_200(
    checkpoint: Path, slow_steps: Callable[[float], list[int]]
) -> None:
    slow_steps(0.05)  # a caption of 8 tokens takes 0.4 s; one of 100 (the tiny model stops at ~48) over 2 s
    with live_server(checkpoint, request_timeout_s=1.0) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            loop = asyncio.get_running_loop()
            response = await client.send(request(client, "/caption", 1, tokens=8), stream=True)
            first = last = 0.0
            async for _ in response.aiter_lines():
                last = loop.time()
                first = first or last
            metrics = (await client.get("/metrics")).text
            total = re.search(r'^mmserve_request_duration_seconds_sum\{task="caption"\} (\S+)$', metrics, re.M)
            assert total is not None
            assert float(total[1]) >= last - first > 0.2  # recorded when the stream ended, not when it started
            # the long caption outlives the 1 s deadline: its stream ends in an `error` event
            response = await client.post("/caption", files={"image": ("i.png", encode_image(noise_image(2)))},
                                         data={"max_new_tokens": "100", "stream": "true"})  # fmt: skip
            events = parse_events(response.text)
            assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "timeout", events[-1]
            counted = statuses((await client.get("/metrics")).text)
            assert counted == {"caption 200": 1, "caption 504": 1}, counted
