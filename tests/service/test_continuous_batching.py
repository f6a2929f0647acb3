"""Engine v2 over real TCP (uvicorn in a thread, the app in this process so its model can be slowed):
continuous batching, token streaming, dropping a sequence whose client left, embeddings between decoding
steps, and the encoder cache."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from model import MultimodalModel, load_model
from model.generate import DecodeState
from model.multimodal import BuiltinModel
from service import Settings, create_app
from tests.support.server import encode_image, free_port, noise_image

pytestmark = pytest.mark.anyio


@contextmanager
def live_server(checkpoint: Path, **overrides: Any) -> Iterator[tuple[str, Any]]:
    """A real uvicorn server on a free port, in a thread of this process; yields (url, app)."""
    settings = Settings(
        **{
            "model": str(checkpoint),
            "device": "cpu",
            "torch_threads": 1,
            "decode_threads": 2,
            "exit_on_failure": False,  # in this process: a failure fails the test, it does not end pytest
            **overrides,
        }
    )
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    else:
        raise TimeoutError("the server did not become ready")
    try:
        yield url, app
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture
def slow_steps(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], list[int]]:
    """Make every decoding step of the built-in model take `delay_s` and never end a sequence early.

    Returns a list that records the number of rows of each step, so a test can see what was computed.
    """
    rows: list[int] = []

    def install(delay_s: float) -> list[int]:
        real_new_state = BuiltinModel.new_state

        def new_state(self: BuiltinModel, capacity: int, *args: Any, **kwargs: Any) -> DecodeState:
            state = real_new_state(self, capacity, *args, **kwargs)
            state._eos = -1  # no end of sequence: each runs to its max_new_tokens
            real_step = state.step

            def step() -> Any:
                rows.append(len(state))
                time.sleep(delay_s)
                return real_step()

            state.step = step  # type: ignore[method-assign]
            return state

        monkeypatch.setattr(BuiltinModel, "new_state", new_state)
        return rows

    return install


def upload(seed: int) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("image.png", encode_image(noise_image(seed)), "image/png")}


def parse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def metric(metrics: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def reference(tiny_checkpoint_dir: Path) -> MultimodalModel:
    return load_model(str(tiny_checkpoint_dir), "cpu")


async def test_streamed_caption_and_answer_equal_the_whole_ones(checkpoint: Path, reference: MultimodalModel) -> None:
    with live_server(checkpoint) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for seed, n in ((1, 9), (2, 30)):
                whole = (await client.post("/caption", files=upload(seed), data={"max_new_tokens": str(n)})).json()
                response = await client.post(
                    "/caption", files=upload(seed), data={"max_new_tokens": str(n), "stream": "true"}
                )
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                events = parse_events(response.text)
                kinds = [kind for kind, _ in events]
                assert kinds[-1] == "done" and set(kinds[:-1]) <= {"token"}
                tokens = [data for kind, data in events if kind == "token"]
                assert [t["index"] for t in tokens] == list(range(len(tokens)))
                done = events[-1][1]
                assert "".join(t["text"] for t in tokens) == done["caption"] == whole["caption"]
                assert done["caption"] == reference.caption([noise_image(seed)], n)[0]
                assert set(done) == {"caption", "model", "timings"}
            question = "what colour is the square?"
            response = await client.post(
                "/vqa", json={"image": _b64(noise_image(3)), "question": question, "stream": True}
            )
            events = parse_events(response.text)
            assert events[-1][0] == "done"
            answer = events[-1][1]["answer"]
            assert answer == reference.answer([noise_image(3)], [question])[0]
            assert "".join(data["text"] for kind, data in events if kind == "token") == answer


async def test_a_client_that_leaves_mid_stream_stops_its_decoding(
    checkpoint: Path, slow_steps: Callable[[float], list[int]]
) -> None:
    steps = slow_steps(0.02)
    with live_server(checkpoint) as (url, app):
        steps.clear()  # the warm-up's
        runtime = app.state.runtime
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            request = client.build_request(
                "POST", "/caption", files=upload(4), data={"max_new_tokens": "45", "stream": "true"}
            )
            response = await client.send(request, stream=True)
            received = 0
            async for line in response.aiter_lines():
                received += line.startswith("event: token")
                if received == 3:
                    break
            assert received == 3
            await response.aclose()  # the client leaves after three tokens
            while runtime.batchers["caption"].in_flight():  # the sequence is dropped and its slot freed
                await asyncio.sleep(0.01)
            computed = len(steps)
            await asyncio.sleep(0.2)
            assert len(steps) == computed  # nothing decodes any more
            assert 3 <= computed < 44  # it stopped well before its 45 tokens
            metrics = (await client.get("/metrics")).text
            assert metric(metrics, "mmserve_running_sequences") == 0


async def test_sequences_join_the_running_batch_and_embeddings_run_between_steps(
    checkpoint: Path, reference: MultimodalModel, slow_steps: Callable[[float], list[int]]
) -> None:
    steps = slow_steps(0.03)
    with live_server(checkpoint) as (url, _):
        steps.clear()  # the warm-up's
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            first = asyncio.create_task(client.post("/caption", files=upload(5), data={"max_new_tokens": "40"}))
            while not steps:  # the first caption is decoding ...
                await asyncio.sleep(0.005)
            second = asyncio.create_task(client.post("/caption", files=upload(6), data={"max_new_tokens": "5"}))
            embedding = await client.post("/embed", json={"input": "a red circle"})  # ... and this runs meanwhile
            assert embedding.status_code == 200
            assert not first.done()  # it did not wait for the caption to finish
            short, long = (await second), (await first)
    assert short.json()["caption"] == reference.caption([noise_image(6)], 5)[0]
    assert long.json()["caption"] == reference.caption([noise_image(5)], 40)[0]
    assert short.json()["timings"]["batch_size"] == 2  # it joined the running caption
    assert max(steps) == 2 and steps[-1] == 1  # decoded together, then the long one alone
    # the short one answered as soon as it was done, not with the long one
    assert short.json()["timings"]["total_ms"] < long.json()["timings"]["total_ms"]


async def test_mixed_lengths_with_cancellations_under_load(checkpoint: Path, reference: MultimodalModel) -> None:
    limits = [1 + (7 * i) % 40 for i in range(24)]
    expected = [reference.caption([noise_image(100 + i)], n)[0] for i, n in enumerate(limits)]
    with live_server(checkpoint, caption_max_batch_size=6) as (url, app):
        runtime = app.state.runtime
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)) as client:
            tasks = [
                asyncio.create_task(client.post("/caption", files=upload(100 + i), data={"max_new_tokens": str(n)}))
                for i, n in enumerate(limits)
            ]
            await asyncio.sleep(0.05)
            for i in range(0, 24, 5):  # some clients give up
                tasks[i].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for i, result in enumerate(results):
                if isinstance(result, asyncio.CancelledError):
                    continue
                assert isinstance(result, httpx.Response) and result.status_code == 200, result
                assert result.json()["caption"] == expected[i], i
            while runtime.batchers["caption"].in_flight():
                await asyncio.sleep(0.01)
            metrics = (await client.get("/metrics")).text
    assert metric(metrics, "mmserve_running_sequences") == 0


async def test_the_encoder_cache_serves_repeated_images(checkpoint: Path, reference: MultimodalModel) -> None:
    questions = [
        "what colour is the circle?",
        "how many shapes are there?",
        "is there a red square?",
        "what shape is on the left?",
        "what is the biggest shape?",
    ]
    image = noise_image(7)
    for cache_bytes, hits in ((64 * 1024 * 1024, 4), (0, 0)):
        with live_server(checkpoint, encoder_cache_bytes=cache_bytes) as (url, _):
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                answers = [
                    (await client.post("/vqa", files=upload(7), data={"question": q})).json()["answer"]
                    for q in questions
                ]
                metrics = (await client.get("/metrics")).text
        assert answers == reference.answer([image] * 5, questions)
        assert metric(metrics, 'mmserve_encoder_cache_lookups_total{result="hit"}') == hits
        assert metric(metrics, 'mmserve_encoder_cache_lookups_total{result="miss"}') == 5 - hits


def _b64(image: Any) -> str:
    import base64

    return base64.b64encode(encode_image(image)).decode()
