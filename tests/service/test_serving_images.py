"""Serving's text to image, in-process (no HTTP): `images` and `images_stream` on a runtime with the tiny
random generator. The PNGs are the model's images; a stream's progress covers every step of every image
and ends with the same images; the request is counted once, when it ends; a stream closed early drops
its rows; a size the model cannot make fails before anything is queued.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.errors import UnsupportedSize
from service.serving import given
from service.serving.images import ImageAsk, ImageProgress
from tests.service.test_serving import requests, running, sample, stays

pytestmark = pytest.mark.anyio


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


async def test_whole_and_streamed_images_are_the_same(tiny_checkpoint_dir: Path, tiny_generator_dir: Path) -> None:
    async with running(tiny_checkpoint_dir, generate_model=str(tiny_generator_dir)) as serving:
        ask = ImageAsk("a large red circle", n=2, seed=40, steps=4, guidance_scale=2.0, preview_every=2)
        whole = await serving.images(given(ask), stays)
        assert whole.seeds == [40, 41] and (whole.steps, whole.size) == (4, (32, 32))
        assert requests(serving, "text_to_image", 200) == 1
        stream = await serving.images_stream(given(ask), stays)
        updates: list[ImageProgress] = [update async for update in stream]
        assert requests(serving, "text_to_image", 200) == 2  # counted when the stream ended
        progress = sorted((u.index, u.step) for u in updates[:-1])
        assert progress == [(i, s) for i in (0, 1) for s in range(1, 5)]
        assert sorted((u.index, u.step) for u in updates[:-1] if u.preview) == [(0, 2), (1, 2)]
        done = updates[-1].done
        assert done is not None and done.seeds == whole.seeds
        for a, b in zip(whole.pngs, done.pngs, strict=True):
            assert np.array_equal(pixels(a), pixels(b))
        assert not np.array_equal(pixels(whole.pngs[0]), pixels(whole.pngs[1]))


async def test_a_stream_closed_early_drops_its_rows(tiny_checkpoint_dir: Path, tiny_generator_dir: Path) -> None:
    async with running(tiny_checkpoint_dir, generate_model=str(tiny_generator_dir)) as serving:
        stream = await serving.images_stream(given(ImageAsk("a blue square", n=2, seed=1, steps=100)), stays)
        first = await stream.__anext__()
        assert first.steps == 100 and first.done is None
        stream.close()
        assert requests(serving, "text_to_image", 499) == 1
        for _ in range(500):  # the rows go at the next step
            if sample(serving, "mmserve_running_images") == 0:
                break
            await asyncio.sleep(0.01)
        assert sample(serving, "mmserve_running_images") == 0
        assert sample(serving, "mmserve_images_generated_total") == 0


async def test_an_unsupported_size_is_refused_before_queueing(
    tiny_checkpoint_dir: Path, tiny_generator_dir: Path
) -> None:
    async with running(tiny_checkpoint_dir, generate_model=str(tiny_generator_dir)) as serving:
        with pytest.raises(UnsupportedSize) as refused:
            await serving.images(given(ImageAsk("a circle", size=(64, 64))), stays)
        assert "32x32" in refused.value.message
        assert requests(serving, "text_to_image", 400) == 1
        assert sample(serving, "mmserve_denoise_steps_total") == 0
