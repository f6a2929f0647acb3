"""Nothing heavy on the event loop: large JSON bodies are parsed (and their base64 decoded) in the decode pool,
/v1/embeddings decodes its images in parallel there, and counts usage from the ids its preparation made."""

from __future__ import annotations

import base64
import threading
from typing import Any

import pytest

import service.images
import service.serving.serving
import service.uploads
from tests.service.conftest import Serve
from tests.support.server import encode_image, noise_image

pytestmark = pytest.mark.anyio


async def test_a_large_json_body_is_parsed_in_the_decode_pool(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real_parse = service.uploads.parse_json

    def parse_json(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_parse(*args)

    monkeypatch.setattr(service.uploads, "parse_json", parse_json)
    small = base64.b64encode(encode_image(noise_image(1))).decode()
    large = base64.b64encode(encode_image(noise_image(2, (256, 256)))).decode()  # ~260 KB in base64
    assert len(small) < service.uploads.JSON_ON_LOOP_BYTES < len(large)
    async with serve() as client:
        for image in (small, large):
            response = await client.post("/caption", json={"image": image, "max_new_tokens": 2})
            assert response.status_code == 200, response.text
    assert threads[0] == threading.current_thread().name  # small: on the loop, cheaper than a hop
    assert threads[1].startswith("mmserve-decode")


async def test_embeddings_decode_images_in_parallel_and_count_tokens_from_the_ids(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    both_decoding = threading.Barrier(2, timeout=30)  # passes only if two images decode at the same time
    real_decode = service.images.decode_image

    def decode_image(data: bytes, max_pixels: int, input_size: Any = None) -> Any:
        both_decoding.wait()
        return real_decode(data, max_pixels, input_size)

    monkeypatch.setattr(service.serving.serving, "decode_image", decode_image)
    images = [base64.b64encode(encode_image(noise_image(seed))).decode() for seed in (3, 4)]
    urls = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}} for image in images]
    texts = ["a red circle", "two blue squares"]
    async with serve(decode_threads=2) as client:
        engine = client.app.state.runtime.engine  # type: ignore[attr-defined]
        expected = sum(engine.count_tokens(texts))

        def no_second_tokenisation(texts: Any) -> list[int]:
            raise AssertionError("the texts were tokenised again to count them")

        monkeypatch.setattr(engine, "count_tokens", no_second_tokenisation)
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        response = await client.post(
            "/v1/embeddings", json={"model": model, "input": [texts[0], *urls, texts[1]], "encoding_format": "float"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert [item["index"] for item in body["data"]] == [0, 1, 2, 3]
        assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
