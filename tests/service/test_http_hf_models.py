"""Hugging Face checkpoints behind the HTTP API, one model per task, equal to the reference libraries.

One app serves BLIP captions, BLIP VQA answers and the real all-MiniLM-L6-v2 embeddings at once
(`MMSERVE_CAPTION_MODEL`, `MMSERVE_VQA_MODEL`, `MMSERVE_EMBED_MODEL`); every answer over HTTP, under
concurrent load (so in shared batches), equals what transformers / sentence-transformers compute alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoProcessor, BlipForConditionalGeneration, BlipForQuestionAnswering

from model.text import minilm_path
from tests.support.hf_checkpoints import build_blip_captioning, build_blip_vqa, sample_images
from tests.support.server import encode_image

pytestmark = pytest.mark.anyio

IMAGES = sample_images(8, seed=11)
QUESTIONS = ["what is this?", "how many?", "is it raining?", "what colour is the sky on the left?"] * 2
VQA_MAX_NEW_TOKENS = 10
TEXTS = [
    "A man is eating food.",
    "The cat sits outside.",
    "a red circle",
    "Quantum entanglement.",
    "Où est la gare?",
] * 3


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-http")
    return {"caption": build_blip_captioning(root / "caption"), "vqa": build_blip_vqa(root / "vqa")}


@pytest.fixture(scope="module")
async def client(serve, checkpoints: dict[str, Path]):  # type: ignore[no-untyped-def]
    async with serve(
        model=str(checkpoints["caption"]),
        vqa_model=str(checkpoints["vqa"]),
        embed_model=str(minilm_path()),
        caption_max_batch_size=8,
        vqa_max_batch_size=8,
        caption_max_wait_ms=50,
        vqa_max_wait_ms=50,
        vqa_max_new_tokens=VQA_MAX_NEW_TOKENS,
    ) as client:
        yield client


@torch.inference_mode()
def _reference_captions(folder: Path, max_new_tokens: int) -> list[str]:
    processor = AutoProcessor.from_pretrained(folder)
    model = BlipForConditionalGeneration.from_pretrained(folder).eval()
    out = []
    for image in IMAGES:
        ids = model.generate(
            **processor(images=image, return_tensors="pt"), max_new_tokens=max_new_tokens, do_sample=False
        )
        out.append(processor.decode(ids[0], skip_special_tokens=True).strip())
    return out


@torch.inference_mode()
def _reference_answers(folder: Path, max_new_tokens: int) -> list[str]:
    processor = AutoProcessor.from_pretrained(folder)
    model = BlipForQuestionAnswering.from_pretrained(folder).eval()
    out = []
    for image, question in zip(IMAGES, QUESTIONS, strict=True):
        inputs = processor(images=image, text=question, return_tensors="pt")
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(processor.decode(ids[0], skip_special_tokens=True).strip())
    return out


async def test_health_names_each_tasks_model(client: httpx.AsyncClient, checkpoints: dict[str, Path]) -> None:
    body = (await client.get("/health")).json()
    assert body["status"] == "ok"
    assert set(body["tasks"]) >= {"caption", "vqa", "embed_text"}


async def test_concurrent_captions_equal_transformers(client: httpx.AsyncClient, checkpoints) -> None:  # type: ignore[no-untyped-def]
    responses = await asyncio.gather(
        *(
            client.post("/caption", files={"image": ("i.png", encode_image(im))}, data={"max_new_tokens": "12"})
            for im in IMAGES
        )
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    got = [r.json()["caption"] for r in responses]
    assert got == _reference_captions(checkpoints["caption"], 12)
    assert len(set(got)) > 1  # the tiny model's output depends on the image
    assert max(r.json()["timings"]["batch_size"] for r in responses) > 1


async def test_concurrent_answers_equal_transformers(client: httpx.AsyncClient, checkpoints) -> None:  # type: ignore[no-untyped-def]
    responses = await asyncio.gather(
        *(
            client.post("/vqa", files={"image": ("i.png", encode_image(im))}, data={"question": q})
            for im, q in zip(IMAGES, QUESTIONS, strict=True)
        )
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert [r.json()["answer"] for r in responses] == _reference_answers(checkpoints["vqa"], VQA_MAX_NEW_TOKENS)


async def test_minilm_embeddings_equal_sentence_transformers(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(*(client.post("/embed", json={"input": TEXTS[i::4]}) for i in range(4)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    reference = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    for i, response in enumerate(responses):
        body = response.json()
        assert body["dim"] == 384
        got = torch.tensor([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])])
        expected = reference.encode(TEXTS[i::4], convert_to_tensor=True).float()
        assert (got * expected).sum(-1).min() >= 0.9999


async def test_a_task_the_model_cannot_do_is_501(client: httpx.AsyncClient) -> None:
    response = await client.post("/embed", files={"image": ("i.png", encode_image(IMAGES[0]))})
    assert response.status_code == 501, response.text
    assert "image" in response.json()["error"]["message"].lower()
