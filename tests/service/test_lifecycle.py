"""Readiness, draining, failure, back-pressure, deadlines and errors, in-process with the tiny model."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

import service.engine
from model import MultimodalModel, load_model
from model.api import PreparedImage
from service.errors import ClientDisconnected
from service.serving import GenerationAsk, Serving, given
from tests.service.conftest import wait_for_status
from tests.support.server import encode_image, error_of, noise_image, solid_image

pytestmark = pytest.mark.anyio

PNG = encode_image(solid_image((20, 120, 220)))


def upload(data: bytes = PNG) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("image.png", data, "image/png")}


async def test_503_while_loading(serve, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    loading = threading.Event()
    real_load_model = service.engine.load_model

    def slow_load_model(*args: Any, **kwargs: Any) -> Any:
        loading.wait(30)  # held until the test has seen the loading state
        return real_load_model(*args, **kwargs)

    monkeypatch.setattr(service.engine, "load_model", slow_load_model)
    async with serve(wait_ready=False) as client:
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "loading"
        assert (await client.get("/health/live")).status_code == 200
        response = await client.post("/caption", files=upload())
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert error_of(response) == {
            "type": "not_ready",
            "message": "the model is still loading; retry shortly",
        }
        loading.set()
        assert (await wait_for_status(client, "ok")).status_code == 200
        assert (await client.post("/caption", files=upload())).status_code == 200


async def test_draining_refuses_new_work_and_flushes_the_queue(serve) -> None:  # type: ignore[no-untyped-def]
    async with serve(caption_max_wait_ms=60_000) as client:
        accepted = asyncio.create_task(client.post("/caption", files=upload()))
        while (await client.get("/health")).json()["queues"]["caption"] == 0:
            await asyncio.sleep(0.005)
        client.app.state.runtime.begin_drain()
        health = await client.get("/health")
        assert (health.status_code, health.json()["status"]) == (503, "draining")
        response = await client.post("/embed", json={"input": "hello"})
        assert response.status_code == 503
        assert error_of(response)["message"] == "the server is shutting down"
        # The accepted request does not wait out its 60 s batching window.
        assert (await asyncio.wait_for(accepted, 30)).status_code == 200


async def test_unhealthy_when_loading_fails(
    serve,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    def broken(spec: str, device: Any, dtype: Any, **options: Any) -> Any:
        raise FileNotFoundError(spec)

    monkeypatch.setattr(service.engine, "load_model", broken)
    async with serve(wait_ready=False, model="/nonexistent/checkpoint") as client:
        health = await wait_for_status(client, "unhealthy")
        assert (health.status_code, health.json()["status"]) == (503, "unhealthy")
        assert (await client.get("/health/live")).status_code == 503
        response = await client.post("/caption", files=upload())
        assert (response.status_code, error_of(response)["message"]) == (503, "the server is unhealthy")
    assert "loading the model failed" in caplog.text


async def test_429_when_the_queue_is_full_before_reading_the_body(serve) -> None:  # type: ignore[no-untyped-def]
    async with serve(queue_capacity=1, max_embed_inputs=1, caption_max_wait_ms=500) as client:
        first = asyncio.create_task(client.post("/caption", files=upload()))
        while (await client.get("/health")).json()["queues"]["caption"] == 0:
            await asyncio.sleep(0.005)
        # Not an image at all: a 429 rather than a 400 shows the body was never read.
        refused = await client.post("/caption", files=upload(b"not an image"))
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert error_of(refused) == {
            "type": "queue_full",
            "message": "the caption queue is full (1 requests); retry shortly",
        }
        assert (await first).status_code == 200
        assert (await client.post("/embed", json={"input": ["a", "b"]})).status_code == 422  # over the input limit
        metrics = (await client.get("/metrics")).text
        assert 'mmserve_requests_total{status="429",task="caption"} 1.0' in metrics


async def test_504_and_the_expired_item_is_never_computed(serve) -> None:  # type: ignore[no-untyped-def]
    async with serve(request_timeout_s=0.3, caption_max_wait_ms=2000) as client:
        response = await client.post("/caption", files=upload())
        assert response.status_code == 504
        assert error_of(response) == {
            "type": "timeout",
            "message": "the request did not complete within 0.3 s",
        }
        await asyncio.sleep(0.1)
        assert 'mmserve_batch_size_count{task="caption"}' not in (await client.get("/metrics")).text


async def test_disconnected_client_item_is_dropped(serve) -> None:  # type: ignore[no-untyped-def]
    async with serve(caption_max_wait_ms=1000) as client:
        runtime = client.app.state.runtime
        serving = Serving(runtime)

        async def gone() -> None:
            return None

        ask = GenerationAsk("caption", encode_image(noise_image(0)), max_new_tokens=3)
        with pytest.raises(ClientDisconnected):
            await serving.generate(given(ask), gone, "caption")
        assert runtime.batchers["caption"].in_flight() == 0  # its item was cancelled in the queue


async def test_a_failing_item_fails_alone_with_500_logged_once(
    serve,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    poison = (13, 13, 13)
    async with serve(caption_max_wait_ms=300) as client:
        model = client.app.state.runtime.engine._models["caption"]
        real_encode = model.encode_images

        def encode_images(images: Sequence[PreparedImage]) -> list[Any]:
            # the prepared pixels are scaled to [0, 1]: the poisoned colour is 13/255 in every channel
            if any(abs(float(image.pixels[0, 0, 0]) - 13 / 255) < 1e-6 for image in images):
                raise RuntimeError("a poisoned pixel")
            return real_encode(images)

        monkeypatch.setattr(model, "encode_images", encode_images)
        good_a, bad, good_b = await asyncio.gather(
            client.post("/caption", files=upload(encode_image(noise_image(5)))),
            client.post("/caption", files=upload(encode_image(solid_image(poison))), headers={"x-request-id": "r-42"}),
            client.post("/caption", files=upload(encode_image(noise_image(6)))),
        )
    assert (good_a.status_code, good_b.status_code) == (200, 200)
    # prefilled together, that failed, retried one by one: the two good ones then decoded together
    assert good_a.json()["timings"]["batch_size"] == 2
    assert bad.status_code == 500
    assert error_of(bad) == {"type": "internal_error", "message": "internal server error (request id r-42)"}
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and "r-42" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


class TextOnly:
    """The tiny model, limited to text embeddings (like a sentence-transformers adapter)."""

    def __init__(self, inner: MultimodalModel) -> None:
        self._inner = inner
        self.name, self.device, self.dtype, self.dim = "text-only", inner.device, inner.dtype, inner.dim
        self.max_text_tokens = inner.max_text_tokens
        self.tasks = frozenset({"embed_text"})

    def embed_text(self, texts: Sequence[str]) -> Any:
        return self._inner.embed_text(texts)

    def prepare_text(self, text: str) -> Any:
        return self._inner.prepare_text(text)


async def test_per_task_models_and_501(serve, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    loads: list[str] = []

    def fake_registry(spec: str, device: Any, dtype: Any, **options: Any) -> Any:
        loads.append(spec)
        if spec == "text-only":
            return TextOnly(load_model(str(checkpoint), device, dtype, **options))
        return load_model(spec, device, dtype, **options)

    monkeypatch.setattr(service.engine, "load_model", fake_registry)
    async with serve(model="text-only", vqa_model=str(checkpoint)) as client:
        assert sorted(loads) == sorted(["text-only", str(checkpoint)])  # each distinct model loaded once
        health = (await client.get("/health")).json()
        assert health["tasks"] == ["embed_text", "vqa"]
        assert health["models"]["vqa"] != "text-only" and health["models"]["embed_text"] == "text-only"
        caption = await client.post("/caption", files=upload())
        assert caption.status_code == 501
        assert error_of(caption)["type"] == "not_implemented"
        assert "the model serving caption (text-only) does not support it" in error_of(caption)["message"]
        image_embedding = await client.post("/embed", files=upload())
        assert image_embedding.status_code == 501
        assert (await client.post("/embed", json={"input": "hi"})).json()["model"] == "text-only"
        assert (await client.post("/vqa", files=upload(), data={"question": "what?"})).status_code == 200


async def test_disconnect_while_sending_the_body(client: httpx.AsyncClient) -> None:
    app = client.app  # type: ignore[attr-defined]
    messages = iter(
        [{"type": "http.request", "body": b'{"input": "hal', "more_body": True}, {"type": "http.disconnect"}]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/embed",
        "raw_path": b"/embed",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"mmserve")],
        "client": ("127.0.0.1", 1),
        "server": ("mmserve", 80),
        "state": {},
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 499
    metrics = (await client.get("/metrics")).text
    assert 'mmserve_requests_total{status="499",task="embed_text"} 1.0' in metrics
