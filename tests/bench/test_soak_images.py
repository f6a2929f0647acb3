"""How the soak judges a text-to-image answer (no server, no model): pixels within 1/255 of the expected
image match, anything further, a wrong seed or a wrong content type does not; and how it picks requests."""

from __future__ import annotations

import base64
import io
import random
from collections import Counter

import httpx
import numpy as np
from PIL import Image

from bench.soak_case import Case, Pool
from bench.soak_images import image_mismatch

BODY = {"prompt": "a large red circle", "n": 1, "seed": 7, "steps": 4, "guidance_scale": 4.0}
EXPECTED = np.random.default_rng(0).integers(2, 254, (64, 64, 3)).astype(np.int16)


def png(values: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(values.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def as_png(values: np.ndarray, seed: int = 7, content_type: str = "image/png") -> httpx.Response:
    return httpx.Response(200, content=png(values), headers={"content-type": content_type, "x-seed": str(seed)})


def as_json(values: np.ndarray, seed: int = 7) -> httpx.Response:
    image = {"index": 0, "seed": seed, "png": base64.b64encode(png(values)).decode()}
    return httpx.Response(200, json={"images": [image], "seeds": [seed], "steps": 4, "size": "64x64"})


PNG_CASE = Case("generate-png", "/generate", {"json": BODY, "headers": {"accept": "image/png"}}, 200, EXPECTED)
JSON_CASE = Case("generate-json", "/generate", {"json": BODY}, 200, EXPECTED)


def test_an_image_within_one_level_matches_and_two_levels_do_not() -> None:
    nudged = EXPECTED.copy()
    nudged[5, 9, 1] += 1
    nudged[60, 3, 2] -= 1
    differences: Counter[int] = Counter()
    assert image_mismatch(PNG_CASE, as_png(EXPECTED), differences) is None
    assert image_mismatch(PNG_CASE, as_png(nudged), differences) is None
    assert image_mismatch(JSON_CASE, as_json(nudged)) is None
    nudged[30, 30, 0] += 2
    assert "2/255" in str(image_mismatch(PNG_CASE, as_png(nudged), differences))
    assert differences == Counter({0: 1, 1: 1, 2: 1})
    assert "2/255" in str(image_mismatch(JSON_CASE, as_json(nudged)))


def test_a_wrong_seed_content_type_or_size_is_a_mismatch() -> None:
    assert "X-Seed" in str(image_mismatch(PNG_CASE, as_png(EXPECTED, seed=8)))
    assert "content-type" in str(image_mismatch(PNG_CASE, as_png(EXPECTED, content_type="application/json")))
    assert "seeds" in str(image_mismatch(JSON_CASE, as_json(EXPECTED, seed=8)))
    assert "shape" in str(image_mismatch(PNG_CASE, as_png(EXPECTED[:32, :32])))
    garbage = httpx.Response(200, content=b"not a png", headers={"content-type": "image/png", "x-seed": "7"})
    assert "unreadable" in str(image_mismatch(PNG_CASE, garbage))


def test_openai_answers_are_checked_for_count_and_size() -> None:
    case = Case("images-openai", "/v1/images/generations", {"json": {"prompt": "x"}}, 200, (64, 64))
    data = [{"b64_json": base64.b64encode(png(EXPECTED)).decode()}]
    assert image_mismatch(case, httpx.Response(200, json={"data": data, "size": "64x64"})) is None
    assert image_mismatch(case, httpx.Response(200, json={"data": data * 2, "size": "64x64"})) is not None
    small = [{"b64_json": base64.b64encode(png(EXPECTED[:32, :32])).decode()}]
    assert image_mismatch(case, httpx.Response(200, json={"data": small, "size": "64x64"})) is not None


def test_the_pool_sends_about_the_asked_share_of_text_to_image() -> None:
    other = Case("embed-text", "/embed", {"json": {"input": ["a"]}}, 200)
    pool = Pool([other], [JSON_CASE], image_share=0.1)
    rng = random.Random(0)
    picks = [pool.pick(rng).task for _ in range(10_000)]
    assert 800 < picks.count("text_to_image") < 1200
    assert {Pool([other], [], 0.5).pick(rng).task for _ in range(100)} == {"embed"}
