"""A real server over TCP: many concurrent distinct requests, each answered with its own result."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest
import torch

from model import MultimodalModel
from tests.support.server import ServerProcess, encode_image, noise_image

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CONCURRENCY = 64


@pytest.fixture(scope="module")
def server(base_settings: dict[str, str]) -> Iterator[ServerProcess]:
    settings = {
        **base_settings,
        "MMSERVE_CAPTION_MAX_WAIT_MS": "25",
        "MMSERVE_VQA_MAX_WAIT_MS": "25",
        "MMSERVE_EMBED_TEXT_MAX_WAIT_MS": "25",
        "MMSERVE_EMBED_IMAGE_MAX_WAIT_MS": "25",
    }
    with ServerProcess(settings) as server:
        yield server


def upload(data: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("image.png", data, "image/png")}


def client_for(server: ServerProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=CONCURRENCY * 2))


def batch_sizes(metrics: str, task: str) -> tuple[float, float]:
    """(sum, count) of the batch-size histogram of `task`."""
    found = {
        kind: float(value)
        for kind, value in re.findall(rf'^mmserve_batch_size_(sum|count){{task="{task}"}} (\S+)$', metrics, re.M)
    }
    return found.get("sum", 0.0), found.get("count", 0.0)


async def test_captions(server: ServerProcess, reference: MultimodalModel) -> None:
    images = [noise_image(1000 + i) for i in range(CONCURRENCY)]
    tokens = [1 + i % 9 for i in range(CONCURRENCY)]
    expected = [reference.caption([image], n)[0] for image, n in zip(images, tokens, strict=True)]
    async with client_for(server) as client:
        responses = await asyncio.gather(
            *(
                client.post("/caption", files=upload(encode_image(image)), data={"max_new_tokens": str(n)})
                for image, n in zip(images, tokens, strict=True)
            )
        )
    assert [r.status_code for r in responses] == [200] * CONCURRENCY
    assert [r.json()["caption"] for r in responses] == expected
    assert len(set(expected)) > CONCURRENCY // 4  # distinct enough that a mix-up would show


async def test_answers(server: ServerProcess, reference: MultimodalModel) -> None:
    images = [noise_image(2000 + i) for i in range(CONCURRENCY)]
    questions = [f"what is in square number {i}?" for i in range(CONCURRENCY)]
    expected = [reference.answer([image], [q])[0] for image, q in zip(images, questions, strict=True)]
    async with client_for(server) as client:
        responses = await asyncio.gather(
            *(
                client.post("/vqa", files=upload(encode_image(image)), data={"question": q})
                for image, q in zip(images, questions, strict=True)
            )
        )
    assert [r.status_code for r in responses] == [200] * CONCURRENCY
    assert [r.json()["answer"] for r in responses] == expected


async def test_text_embeddings(server: ServerProcess, reference: MultimodalModel) -> None:
    texts = [f"text number {i}: a {['red', 'green', 'blue'][i % 3]} shape" for i in range(CONCURRENCY)]
    async with client_for(server) as client:
        responses = await asyncio.gather(*(client.post("/embed", json={"input": text}) for text in texts))
    assert [r.status_code for r in responses] == [200] * CONCURRENCY
    served = torch.tensor([r.json()["data"][0]["embedding"] for r in responses])
    expected = torch.cat([reference.embed_text([text]) for text in texts])
    torch.testing.assert_close(served, expected, atol=1e-4, rtol=1e-3)


async def test_image_embeddings(server: ServerProcess, reference: MultimodalModel) -> None:
    images = [noise_image(3000 + i) for i in range(CONCURRENCY)]
    async with client_for(server) as client:
        responses = await asyncio.gather(
            *(client.post("/embed", files=upload(encode_image(image))) for image in images)
        )
    assert [r.status_code for r in responses] == [200] * CONCURRENCY
    served = torch.tensor([r.json()["data"][0]["embedding"] for r in responses])
    expected = torch.cat([reference.embed_image([image]) for image in images])
    torch.testing.assert_close(served, expected, atol=1e-4, rtol=1e-3)


async def test_batching_shows_in_metrics(server: ServerProcess) -> None:
    async with client_for(server) as client:
        metrics = (await client.get("/metrics")).text
    for task in ("caption", "vqa", "embed_text", "embed_image"):
        total, batches = batch_sizes(metrics, task)
        assert total >= CONCURRENCY, task
        assert total / batches > 1, f"{task}: every batch held one item"
    assert re.search(r'^mmserve_requests_total\{status="200",task="caption"\} (\d+)', metrics, re.M)
