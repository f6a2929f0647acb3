"""The endpoints with the real tiny model: answers equal direct model calls, the documented shapes, docs."""

from __future__ import annotations

import asyncio
import base64
import re
from pathlib import Path

import httpx
import pytest
import torch

from model import MultimodalModel
from tests.support.server import encode_image, noise_image, solid_image

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def reference(checkpoint: Path, load_once) -> MultimodalModel:  # type: ignore[no-untyped-def]
    """The served checkpoint, called directly."""
    model: MultimodalModel = load_once(str(checkpoint), "cpu")
    return model


def upload(data: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("image.png", data, "image/png")}


async def test_caption_multipart_and_json(client: httpx.AsyncClient, reference: MultimodalModel) -> None:
    image = noise_image(1)
    data = encode_image(image)
    [expected] = reference.caption([image], 7)
    by_upload = await client.post("/caption", files=upload(data), data={"max_new_tokens": "7"})
    by_json = await client.post("/caption", json={"image": base64.b64encode(data).decode(), "max_new_tokens": 7})
    for response in (by_upload, by_json):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["caption"] == expected
        assert body["model"] == reference.name
        assert set(body["timings"]) == {"queue_ms", "inference_ms", "decode_ms", "total_ms", "batch_size"}
        assert body["timings"]["total_ms"] >= body["timings"]["inference_ms"] > 0


async def test_vqa_multipart_and_json(client: httpx.AsyncClient, reference: MultimodalModel) -> None:
    image = noise_image(2)
    data = encode_image(image)
    [expected] = reference.answer([image], ["what colour is the shape?"])
    by_upload = await client.post("/vqa", files=upload(data), data={"question": "what colour is the shape?"})
    by_json = await client.post(
        "/vqa", json={"image": base64.b64encode(data).decode(), "question": "what colour is the shape?"}
    )
    for response in (by_upload, by_json):
        assert response.status_code == 200, response.text
        assert response.json()["answer"] == expected


async def test_embed_texts_split_across_batches(serve, reference: MultimodalModel) -> None:  # type: ignore[no-untyped-def]
    texts = [f"a {colour} {shape}" for colour in ("red", "green", "blue") for shape in ("circle", "square", "cross")]
    async with serve(embed_text_max_batch_size=4) as client:
        response = await client.post("/embed", json={"input": texts})
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dim"] == reference.dim
    assert [item["index"] for item in body["data"]] == list(range(len(texts)))
    served = torch.tensor([item["embedding"] for item in body["data"]])
    torch.testing.assert_close(served, reference.embed_text(texts), atol=1e-5, rtol=1e-4)
    assert 'mmserve_batch_size_count{task="embed_text"} 3.0' in metrics  # 9 texts in batches of at most 4


async def test_embed_one_text_and_an_image(client: httpx.AsyncClient, reference: MultimodalModel) -> None:
    text = await client.post("/embed", json={"input": "a red circle"})
    assert text.status_code == 200
    assert len(text.json()["data"]) == 1
    torch.testing.assert_close(
        torch.tensor(text.json()["data"][0]["embedding"]),
        reference.embed_text(["a red circle"])[0],
        atol=1e-5,
        rtol=1e-4,
    )
    image = noise_image(3)
    expected = reference.embed_image([image])[0]
    for response in (
        await client.post("/embed", files=upload(encode_image(image))),
        await client.post("/embed", json={"image": base64.b64encode(encode_image(image)).decode()}),
    ):
        assert response.status_code == 200, response.text
        [item] = response.json()["data"]
        assert item["index"] == 0
        torch.testing.assert_close(torch.tensor(item["embedding"]), expected, atol=1e-5, rtol=1e-4)


async def test_concurrent_requests_batch_and_keep_their_answers(
    serve,
    reference: MultimodalModel,  # type: ignore[no-untyped-def]
) -> None:
    images = [noise_image(100 + i) for i in range(12)]
    tokens = [1 + i % 5 for i in range(12)]  # different max_new_tokens share batches
    expected = [reference.caption([image], n)[0] for image, n in zip(images, tokens, strict=True)]
    async with serve(caption_max_wait_ms=200, caption_max_batch_size=8) as client:
        responses = await asyncio.gather(
            *(
                client.post("/caption", files=upload(encode_image(image)), data={"max_new_tokens": str(n)})
                for image, n in zip(images, tokens, strict=True)
            )
        )
    assert [r.json()["caption"] for r in responses] == expected
    assert max(r.json()["timings"]["batch_size"] for r in responses) > 1


async def test_health_when_ready(client: httpx.AsyncClient, reference: MultimodalModel) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model"] == reference.name
    assert body["device"] == "cpu" and body["dtype"] == "float32"
    assert body["tasks"] == ["caption", "embed_image", "embed_text", "vqa"]
    queues = {"caption": 0, "embed_image": 0, "embed_text": 0, "text_to_image": 0, "transcribe": 0, "vqa": 0}
    assert body["queues"] == queues
    assert (await client.get("/health/live")).json() == {"status": "alive"}


async def test_metrics(client: httpx.AsyncClient) -> None:
    await client.post("/caption", files=upload(encode_image(solid_image((5, 5, 5)))))
    await client.post("/caption", content=b"x", headers={"content-type": "text/plain"})
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "mmserve_queue_size",
        "mmserve_batch_size_bucket",
        "mmserve_queue_duration_seconds_bucket",
        "mmserve_inference_duration_seconds_bucket",
        "mmserve_request_duration_seconds_bucket",
    ):
        assert re.search(rf'^{name}{{[^}}]*task="caption"', text, re.MULTILINE), name
    assert 'mmserve_requests_total{status="200",task="caption"}' in text
    assert 'mmserve_requests_total{status="415",task="caption"} 1.0' in text


async def test_openapi_documents_both_body_kinds(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    caption = spec["paths"]["/caption"]["post"]
    assert set(caption["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert caption["requestBody"]["content"]["application/json"]["schema"]["examples"]
    assert {"400", "413", "415", "429", "503", "504"} <= set(caption["responses"])
    assert (await client.get("/docs")).status_code == 200


async def test_a_fixed_shape_decoding_step_serves_the_same_captions_and_answers(
    serve, reference: MultimodalModel  # type: ignore[no-untyped-def]
) -> None:
    """`MMSERVE_FIXED_SHAPE_STEP=true` reaches the built-in model; concurrent captions of mixed lengths and
    answers, decoded together with fixed shapes per bucket, equal each one alone (the default step)."""
    images = [noise_image(seed) for seed in range(6)]
    limits = [3, 30, 9, 17, 1, 24]
    question = "what colour is the shape?"
    async with serve(fixed_shape_step=True) as client:
        model = client.app.state.runtime.ensure_ready().stepwise("caption")
        assert model.decode_options.fixed_shapes and not model.decode_options.cuda_graphs
        captions = [
            client.post("/caption", files=upload(encode_image(image)), data={"max_new_tokens": str(n)})
            for image, n in zip(images, limits, strict=True)
        ]
        answers = [
            client.post("/vqa", files=upload(encode_image(image)), data={"question": question}) for image in images[:3]
        ]
        responses = await asyncio.gather(*captions, *answers)
    assert all(response.status_code == 200 for response in responses)
    assert [r.json()["caption"] for r in responses[:6]] == [
        reference.caption([image], n)[0] for image, n in zip(images, limits, strict=True)
    ]
    expected = [reference.answer([image], [question])[0] for image in images[:3]]
    assert [r.json()["answer"] for r in responses[6:]] == expected
