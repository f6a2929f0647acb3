"""Text to image in the soak: `/generate` (JSON, and the PNG itself with `Accept: image/png`) and OpenAI's
`/v1/images/generations` (b64_json), with valid scene prompts and invalid fields (each its 4xx).

Every valid `/generate` answer is checked pixel by pixel against the image that the reference sampling
loop (`model.text_to_image.TextToImage` on the same generator folder) makes in this process, before the
soak, for the same prompt, seed, steps and guidance. The server's step loop batches images that join and
leave between denoising steps, which equals the reference up to float rounding, so a served image matches
when every 8-bit value is within 1 of the expected one (as tests/model/test_builtin_generator_parity.py
asserts). OpenAI's route takes no seed (each image's is random), so its images are checked for their
count, size and PNG-ness only. Step counts stay small (4-12) to keep the soak's share of CPU modest.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.soak_case import Case
from model.builtin_generator import is_builtin_generator
from model.scenes import make_scene
from model.text_to_image import GENERATOR_DIR, TextToImage
from service.image_schemas import MAX_IMAGES
from service.settings import Settings

STEP_MIX = (4, 6, 8, 12)
GUIDANCE_SCALE = 4.0  # the shipped generator's default, sent explicitly
OPENAI_CASES = 2  # OpenAI's route always takes the model's default steps (20): few of them
MAX_PIXEL_DIFFERENCE = 1  # out of 255: batched denoising equals the reference loop within this


def generator_folder(spec: str) -> Path | None:
    """The built-in-format generator folder that `MMSERVE_GENERATE_MODEL=spec` serves, or None (no such)."""
    folder = GENERATOR_DIR if spec == "builtin" else Path(spec)
    return folder if is_builtin_generator(folder) else None


def image_cases(folder: Path, prompts: int, seed: int) -> list[Case]:
    """Valid and invalid text-to-image cases; the valid `/generate` ones' pixels from the reference loop."""
    reference = TextToImage.from_pretrained(folder)
    side = reference.index.output_size
    max_steps = Settings.model_fields["text_to_image_max_steps"].default
    cases: list[Case] = []
    captions: list[str] = []
    for i in range(prompts):
        image_seed = 40_000_000 + seed * 1000 + i
        prompt = make_scene(image_seed).caption
        captions.append(prompt)
        steps = STEP_MIX[i % len(STEP_MIX)]
        image = reference.generate([prompt], [image_seed], steps, GUIDANCE_SCALE)[0]
        body = {"prompt": prompt, "n": 1, "seed": image_seed, "steps": steps, "guidance_scale": GUIDANCE_SCALE}
        expected = pixels(image)
        cases += [
            Case("generate-json", "/generate", {"json": body}, 200, expected),
            Case("generate-png", "/generate", {"json": body, "headers": {"accept": "image/png"}}, 200, expected),
        ]
    for prompt in captions[:OPENAI_CASES]:
        body = {"prompt": prompt, "n": 1, "response_format": "b64_json"}
        cases.append(Case("images-openai", "/v1/images/generations", {"json": body}, 200, (side, side)))
    prompt = captions[0]
    cases += [
        Case("bad-generate-empty-prompt", "/generate", {"json": {"prompt": ""}}, 422),
        Case("bad-generate-n", "/generate", {"json": {"prompt": prompt, "n": MAX_IMAGES + 1}}, 422),
        Case("bad-generate-n", "/generate", {"json": {"prompt": prompt, "n": 0}}, 422),
        Case("bad-generate-steps", "/generate", {"json": {"prompt": prompt, "steps": 0}}, 422),
        Case("bad-generate-steps", "/generate", {"json": {"prompt": prompt, "steps": max_steps + 1}}, 422),
        Case("bad-images-url", "/v1/images/generations", {"json": {"prompt": prompt, "response_format": "url"}}, 400),
        Case("bad-images-n", "/v1/images/generations", {"json": {"prompt": prompt, "n": MAX_IMAGES + 1}}, 422),
    ]
    return cases


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def decoded(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        if image.format != "PNG":
            raise ValueError(f"a {image.format} image, not a PNG")
        return pixels(image)


def image_mismatch(case: Case, response: httpx.Response, differences: Counter[int] | None = None) -> str | None:
    """Why a 200 from a text-to-image route is not the expected answer; None when it is. `differences`
    counts each compared image's largest difference from the expected one (in 8-bit levels)."""
    try:
        if case.route == "/v1/images/generations":
            return _openai_mismatch(case, response)
        asked = case.kwargs["json"]
        if "headers" in case.kwargs:  # Accept: image/png
            if response.headers.get("content-type") != "image/png":
                return f"content-type {response.headers.get('content-type')}, not image/png"
            if response.headers.get("x-seed") != str(asked["seed"]):
                return f"X-Seed {response.headers.get('x-seed')}, not {asked['seed']}"
            got = decoded(response.content)
        else:
            body = response.json()
            if body["seeds"] != [asked["seed"]] or body["steps"] != asked["steps"] or len(body["images"]) != 1:
                return f"seeds {body['seeds']}, steps {body['steps']}, {len(body['images'])} images"
            got = decoded(base64.b64decode(body["images"][0]["png"]))
    except (ValueError, KeyError, TypeError, OSError) as e:
        return f"unreadable answer: {type(e).__name__}: {e}"
    expected: np.ndarray = case.answer
    if got.shape != expected.shape:
        return f"shape {got.shape}, not {expected.shape}"
    difference = np.abs(got - expected)
    if differences is not None:
        differences[int(difference.max())] += 1
    if difference.max() > MAX_PIXEL_DIFFERENCE:
        over = int((difference > MAX_PIXEL_DIFFERENCE).sum())
        return f"pixels differ by up to {int(difference.max())}/255 ({over} values by more than {MAX_PIXEL_DIFFERENCE})"
    return None


def _openai_mismatch(case: Case, response: httpx.Response) -> str | None:
    side, _ = case.answer
    body = response.json()
    if len(body["data"]) != 1 or body["size"] != f"{side}x{side}":
        return f"{len(body['data'])} images of size {body['size']}"
    got = decoded(base64.b64decode(body["data"][0]["b64_json"]))
    return None if got.shape == (side, side, 3) else f"an image of shape {got.shape}"
