"""Streamed chat completions end their sequence's decoding: when the client leaves, and at a stop string."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.test_continuous_batching import live_server, slow_steps
from tests.support.server import encode_image, noise_image

__all__ = ["slow_steps"]  # the fixture, used here by name

pytestmark = pytest.mark.anyio


def chat(max_tokens: int, **more: Any) -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(encode_image(noise_image(4))).decode()
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
        "max_tokens": max_tokens,
        "stream": True,
        **more,
    }


async def served_model(client: httpx.AsyncClient) -> str:
    return str((await client.get("/v1/models")).json()["data"][0]["id"])


async def wait_until_dropped(runtime: Any, steps: list[int]) -> int:
    while runtime.batchers["caption"].in_flight():  # the sequence is dropped and its slot freed
        await asyncio.sleep(0.01)
    computed = len(steps)
    await asyncio.sleep(0.2)
    assert len(steps) == computed  # nothing decodes any more
    return computed


async def test_a_client_that_leaves_a_chat_stream_stops_its_decoding(
    checkpoint: Path, slow_steps: Callable[[float], list[int]]
) -> None:
    steps = slow_steps(0.02)
    with live_server(checkpoint) as (url, app):
        steps.clear()  # the warm-up's
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            body = chat(45, model=await served_model(client))
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                contents = 0
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        contents += "content" in json.loads(line[6:])["choices"][0]["delta"]
                    if contents == 4:  # the role chunk and three content deltas
                        break
            assert contents == 4
            computed = await wait_until_dropped(app.state.runtime, steps)
            assert 3 <= computed < 44  # it stopped well before its 45 tokens


async def test_a_stop_string_ends_the_decoding(checkpoint: Path, slow_steps: Callable[[float], list[int]]) -> None:
    steps = slow_steps(0.01)
    with live_server(checkpoint) as (url, app):
        steps.clear()
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            model = await served_model(client)
            whole = await client.post("/v1/chat/completions", json={**chat(30, model=model), "stream": False})
            text = whole.json()["choices"][0]["message"]["content"]
            stop = text.split()[2]  # no end of sequence (slow_steps): 30 tokens, so at least three words
            steps.clear()
            response = await client.post("/v1/chat/completions", json=chat(30, model=model, stop=stop))
            lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]"
            chunks = [json.loads(line[6:]) for line in lines[:-1]]
            streamed = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
            assert streamed == text[: text.index(stop)]
            assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
            computed = await wait_until_dropped(app.state.runtime, steps)
            assert computed < 29  # the stop string ended it before its 30 tokens
