"""Text-to-image over HTTP, against real servers on a tiny random generator (`MMSERVE_GENERATE_MODEL`):
POST /generate (JSON, a PNG, server-sent progress) and POST /v1/images/generations (through the `openai`
package), their limits, and what happens to an image whose client leaves or whose deadline passes.

An image served equals the same request computed in-process (the generator's own whole-batch call), and
two requests denoising together (different step counts) get the same images as each alone.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from model.image_generator import DiffusionGenerator, load_image_generator
from tests.service.test_continuous_batching import parse_events
from tests.support.server import ServerProcess, error_of

pytestmark = pytest.mark.anyio

PROMPT = "a large red circle"


@pytest.fixture(scope="module")
def server(base_settings: dict[str, str], tiny_generator_dir: Path) -> Iterator[ServerProcess]:
    settings = {**base_settings, "MMSERVE_GENERATE_MODEL": str(tiny_generator_dir)}
    with ServerProcess(settings) as server:
        yield server


@pytest.fixture(scope="module")
def slow_server(base_settings: dict[str, str], tiny_generator_dir: Path) -> Iterator[ServerProcess]:
    """Every denoising step takes 50 ms more; requests time out after 2 s."""
    settings = {
        **base_settings,
        "MMSERVE_GENERATE_MODEL": str(tiny_generator_dir),
        "MMSERVE_REQUEST_TIMEOUT_S": "2",
        "MMSERVE_TEST_STEP_S": "0.05",
    }
    with ServerProcess(settings, module="tests.support.slow_denoise_server") as server:
        yield server


@pytest.fixture(scope="module")
def generator(tiny_generator_dir: Path, text_tower: Any) -> DiffusionGenerator:
    torch.set_num_threads(1)
    return load_image_generator(tiny_generator_dir, torch.device("cpu"), None, text_tower=text_tower)


def pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB")).astype(np.int16)


def in_process(generator: DiffusionGenerator, seed: int, steps: int, guidance_scale: float = 3.0) -> np.ndarray:
    spec = generator.image_spec(PROMPT, seed, steps, guidance_scale)
    return np.asarray(generator.generate([spec])[0].convert("RGB")).astype(np.int16)


def pngs_of(response: httpx.Response) -> list[bytes]:
    assert response.status_code == 200, response.text
    return [base64.b64decode(image["png"]) for image in response.json()["images"]]


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_health_and_models_list_the_generator(server: ServerProcess) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert "text_to_image" in health["tasks"]
    generator_name = health["models"]["text_to_image"]
    assert generator_name in [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]


def test_generate_json_equals_in_process(server: ServerProcess, generator: DiffusionGenerator) -> None:
    body = {"prompt": PROMPT, "n": 2, "seed": 5, "steps": 3, "guidance_scale": 3.0}
    response = httpx.post(f"{server.url}/generate", json=body, timeout=60)
    answer = response.json()
    assert answer["seeds"] == [5, 6] and [i["seed"] for i in answer["images"]] == [5, 6]
    assert (answer["steps"], answer["guidance_scale"], answer["size"]) == (3, 3.0, "32x32")
    assert answer["model"] == httpx.get(f"{server.url}/health").json()["models"]["text_to_image"]
    assert answer["timings"]["total_ms"] > 0 and answer["timings"]["batch_size"] >= 1
    for png, seed in zip(pngs_of(response), (5, 6), strict=True):
        assert np.abs(pixels(png) - in_process(generator, seed, 3)).max() <= 1
    assert not np.array_equal(*(pixels(p) for p in pngs_of(response)))  # two seeds, two images


def test_accept_png_answers_the_file(server: ServerProcess) -> None:
    body = {"prompt": PROMPT, "seed": 9, "steps": 2}
    response = httpx.post(f"{server.url}/generate", json=body, headers={"Accept": "image/png"}, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png" and response.headers["x-seed"] == "9"
    [same] = pngs_of(httpx.post(f"{server.url}/generate", json=body, timeout=60))
    assert np.array_equal(pixels(response.content), pixels(same))
    # n > 1 cannot be one file: JSON
    many = httpx.post(f"{server.url}/generate", json={**body, "n": 2}, headers={"Accept": "image/png"}, timeout=60)
    assert many.headers["content-type"] == "application/json" and len(pngs_of(many)) == 2


def test_a_random_seed_is_reported_and_reproduces(server: ServerProcess) -> None:
    first = httpx.post(f"{server.url}/generate", json={"prompt": PROMPT, "steps": 2}, timeout=60)
    seed = first.json()["seeds"][0]
    again = httpx.post(f"{server.url}/generate", json={"prompt": PROMPT, "steps": 2, "seed": seed}, timeout=60)
    assert np.array_equal(pixels(pngs_of(first)[0]), pixels(pngs_of(again)[0]))


async def test_alone_equals_batched(slow_server: ServerProcess) -> None:
    """Two requests with different steps denoise in the same UNet calls (each step is slowed, so the second
    joins while the first runs) and get the images each gets alone."""
    asks = [{"prompt": PROMPT, "seed": 21, "steps": 12}, {"prompt": "a small blue square", "seed": 22, "steps": 3}]
    async with httpx.AsyncClient(base_url=slow_server.url, timeout=60) as client:
        alone = [pngs_of(await client.post("/generate", json=ask)) for ask in asks]
        together = await asyncio.gather(*(client.post("/generate", json=ask) for ask in asks))
    assert [r.json()["timings"]["batch_size"] for r in together] == [2, 2]
    for one, both in zip(alone, together, strict=True):
        assert np.array_equal(pixels(one[0]), pixels(pngs_of(both)[0]))


def test_stream_gives_progress_previews_then_done(server: ServerProcess) -> None:
    body = {"prompt": PROMPT, "seed": 4, "steps": 6, "stream": True, "preview_every": 2}
    response = httpx.post(f"{server.url}/generate", json=body, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    progress = [data for kind, data in events if kind == "progress"]
    assert [(p["index"], p["step"], p["steps"]) for p in progress] == [(0, s, 6) for s in range(1, 7)]
    assert [p["step"] for p in progress if "preview" in p] == [2, 4]
    for p in progress:
        if "preview" in p:
            assert pixels(base64.b64decode(p["preview"])).shape == (32, 32, 3)
    kind, done = events[-1]
    assert kind == "done" and done["seeds"] == [4]
    whole = httpx.post(f"{server.url}/generate", json={**body, "stream": False}, timeout=60)
    assert np.array_equal(pixels(base64.b64decode(done["images"][0]["png"])), pixels(pngs_of(whole)[0]))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": PROMPT, "n": 0}, "n"),
        ({"prompt": PROMPT, "n": 5}, "n"),
        ({"prompt": PROMPT, "steps": 0}, "steps"),
        ({"prompt": PROMPT, "steps": 101}, "steps"),
        ({"prompt": PROMPT, "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": PROMPT, "guidance_scale": 31}, "guidance_scale"),
        ({"prompt": PROMPT, "seed": -1}, "seed"),
        ({"prompt": PROMPT, "size": "big"}, "size"),
        ({"prompt": PROMPT, "stream": "yes"}, "stream"),
        ({"steps": 4}, "prompt"),
    ],
)
def test_bad_fields_are_422_naming_the_field(server: ServerProcess, body: dict[str, Any], field: str) -> None:
    response = httpx.post(f"{server.url}/generate", json=body, timeout=30)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", field]]


def test_unsupported_size_is_400_listing_sizes(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/generate", json={"prompt": PROMPT, "size": "64x48"}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "unsupported_size" and "32x32" in error["message"]


def test_a_body_that_is_not_json_is_415(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/generate", data={"prompt": PROMPT}, timeout=30)
    assert response.status_code == 415


def test_openai_client_generates_the_same_images(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    name = httpx.get(f"{server.url}/health").json()["models"]["text_to_image"]
    result = client.images.generate(prompt=PROMPT, model=name, n=2, size="32x32", response_format="b64_json")
    assert result.size == "32x32" and len(result.data or []) == 2
    images = [pixels(base64.b64decode(image.b64_json or "")) for image in result.data or []]
    assert all(image.shape == (32, 32, 3) for image in images)


def test_openai_stream_sends_partial_images_then_completed(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    events = list(client.images.generate(prompt=PROMPT, stream=True, partial_images=2))
    kinds = [event.type for event in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:-1]] == [0, 1]  # type: ignore[union-attr]
    assert pixels(base64.b64decode(events[-1].b64_json)).shape == (32, 32, 3)
    only = list(client.images.generate(prompt=PROMPT, stream=True))
    assert [event.type for event in only] == ["image_generation.completed"]


def test_openai_refusals(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt=PROMPT, response_format="url")
    assert refused.value.body["param"] == "response_format" and "stored" in refused.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.images.generate(prompt=PROMPT, model="dall-e-3")
    with pytest.raises(openai.BadRequestError) as size:
        client.images.generate(prompt=PROMPT, size="1024x1024")
    assert "32x32" in size.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError):
        client.images.generate(prompt=PROMPT, n=5)


def test_429_when_the_queue_has_no_room(base_settings: dict[str, str], tiny_generator_dir: Path) -> None:
    settings = {**base_settings, "MMSERVE_GENERATE_MODEL": str(tiny_generator_dir), "MMSERVE_QUEUE_CAPACITY": "2"}
    settings["MMSERVE_MAX_EMBED_INPUTS"] = "2"
    with ServerProcess(settings) as server:
        response = httpx.post(f"{server.url}/generate", json={"prompt": PROMPT, "n": 3}, timeout=30)
        assert response.status_code == 429 and response.headers["retry-after"]
        assert error_of(response)["type"] == "queue_full"
        assert httpx.post(f"{server.url}/generate", json={"prompt": PROMPT, "n": 2, "steps": 2}).status_code == 200


async def test_a_client_that_leaves_mid_denoise_drops_its_row(slow_server: ServerProcess) -> None:
    body = {"prompt": PROMPT, "steps": 30, "stream": True}  # 30 steps: 1.5 s at least
    async with httpx.AsyncClient(base_url=slow_server.url, timeout=30) as client:
        metrics = (await client.get("/metrics")).text
        before = metric(metrics, "mmserve_denoise_steps_total")
        made = metric(metrics, "mmserve_images_generated_total")
        async with client.stream("POST", "/generate", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    break  # the first step is done: leave
        deadline = time.monotonic() + 20
        while True:
            metrics = (await client.get("/metrics")).text
            left = 'mmserve_requests_total{status="499",task="text_to_image"} 1.0' in metrics
            if (left and metric(metrics, "mmserve_running_images") == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert 'mmserve_requests_total{status="499",task="text_to_image"} 1.0' in metrics
    assert metric(metrics, "mmserve_running_images") == 0
    assert not re.search(r'status="5\d\d",task="text_to_image"', metrics)
    assert metric(metrics, "mmserve_denoise_steps_total") - before < 30  # dropped, not run to the end
    assert metric(metrics, "mmserve_images_generated_total") == made


async def test_past_the_deadline_is_504(slow_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=slow_server.url, timeout=30) as client:
        response = await client.post("/generate", json={"prompt": PROMPT, "steps": 80})  # 4 s > 2 s
        assert response.status_code == 504
        assert error_of(response)["type"] == "timeout"
        deadline = time.monotonic() + 20
        while metric((await client.get("/metrics")).text, "mmserve_running_images") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert metric((await client.get("/metrics")).text, "mmserve_running_images") == 0
        # the server still makes images
        quick = await client.post("/generate", json={"prompt": PROMPT, "steps": 2})
        assert quick.status_code == 200


def test_whole_request_batching_makes_the_same_images(
    base_settings: dict[str, str], tiny_generator_dir: Path, server: ServerProcess
) -> None:
    """`MMSERVE_SCHEDULER=static`: images run to their end together, no step updates: a stream has only `done`."""
    settings = {**base_settings, "MMSERVE_GENERATE_MODEL": str(tiny_generator_dir), "MMSERVE_SCHEDULER": "static"}
    body = {"prompt": PROMPT, "seed": 31, "steps": 5, "n": 2}
    with ServerProcess(settings) as static:
        whole = httpx.post(f"{static.url}/generate", json=body, timeout=60)
        streamed = httpx.post(f"{static.url}/generate", json={**body, "stream": True, "preview_every": 1}, timeout=60)
    events = parse_events(streamed.text)
    assert [kind for kind, _ in events] == ["done"]
    continuous = pngs_of(httpx.post(f"{server.url}/generate", json=body, timeout=60))
    for a, b, c in zip(pngs_of(whole), continuous, events[0][1]["images"], strict=True):
        assert np.array_equal(pixels(a), pixels(b))
        assert np.array_equal(pixels(a), pixels(base64.b64decode(c["png"])))
