"""What a queued image holds is bounded by the model's input size, not by the upload's.

A 40-megapixel photo (JPEG, and a PNG, which cannot be reduced while decoding) is decoded for the built-in
model and for tiny BLIP, CLIP and LLaVA checkpoints as the service does it (`decode_image` with the model's
`input_size`, then `prepare_*` in the decode pool): the decoded image covers at most a few times the
model's size, and the payload that waits in the queue (what crosses to the inference thread) holds the
model's pixels only. Prepared pixels give the same outputs as the processors run inside the batched call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from model.api import MultimodalModel, PreparedImage
from model.hf import load_hf_model
from service.engine import Engine
from service.images import REDUCING_GAP, decode_image
from tests.support.hf_checkpoints import (
    build_blip_captioning,
    build_blip_vqa,
    build_clip,
    build_llava,
    sample_images,
)
from tests.support.photos import PHOTO_SIZE, photo
from tests.support.server import encode_image

MAX_PIXELS = 40_000_000
PAYLOAD_FACTOR = 2  # a queued item may hold at most this many times its model input's float32 pixels


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    image = photo(PHOTO_SIZE)
    return {"JPEG": encode_image(image, "JPEG", quality=90), "PNG": encode_image(image, "PNG", compress_level=1)}


@pytest.fixture(scope="module")
def models(tiny_model: MultimodalModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, MultimodalModel]:
    root = tmp_path_factory.mktemp("image-memory")
    return {
        "builtin": tiny_model,
        "blip": load_hf_model(str(build_blip_captioning(root / "blip"))),
        "clip": load_hf_model(str(build_clip(root / "clip"))),
        "llava": load_hf_model(str(build_llava(root / "llava"))),
    }


def payload_nbytes(payload: Any) -> int:
    """The bytes of pixels a prepared payload holds."""
    if isinstance(payload, PreparedImage):
        return payload.pixels.nbytes
    if isinstance(payload, torch.Tensor):
        return payload.nbytes
    if isinstance(payload, Image.Image):
        return payload.width * payload.height * len(payload.getbands())
    raise TypeError(f"unexpected payload {type(payload).__name__}")


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
@pytest.mark.parametrize("name", ["builtin", "blip", "clip", "llava"])
def test_a_queued_40_megapixel_photo_holds_model_sized_pixels(
    models: dict[str, MultimodalModel], photos: dict[str, bytes], name: str, image_format: str
) -> None:
    model = models[name]
    task = "caption" if name in ("blip", "llava") else "embed_image"
    engine = Engine({task: model})
    size = engine.input_size(task)
    assert size is not None and max(size) < 1000  # the model says what it needs (tiny models: 32 to 64 px)
    decoded = decode_image(photos[image_format], MAX_PIXELS, size)
    # what the decode pool materialises after decoding: the model's size, REDUCING_GAP to twice that over
    assert min(decoded.width / size[0], decoded.height / size[1]) >= REDUCING_GAP
    assert decoded.width * decoded.height <= (2 * REDUCING_GAP) ** 2 * size[0] * size[1] * 1.5  # 3:2 aspect
    if task == "caption":
        payload = engine.prepare_generation(task, decoded).image
    else:
        payload = engine.prepare_image(task, decoded)
    model_bytes = size[0] * size[1] * 3 * 4  # the model's input, float32
    assert payload_nbytes(payload) <= PAYLOAD_FACTOR * model_bytes  # ≪ 7744 × 5164 × 3 = 120 MB


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_reduced_decoding_barely_changes_what_the_model_sees(
    models: dict[str, MultimodalModel], photos: dict[str, bytes], image_format: str
) -> None:
    """The built-in model's pixels from the reduced decode against those from the full-size decode."""
    model = models["builtin"]
    reduced = model.prepare_image(decode_image(photos[image_format], MAX_PIXELS, model.input_size)).pixels
    full = model.prepare_image(decode_image(photos[image_format], MAX_PIXELS)).pixels
    assert reduced.shape == full.shape
    assert (reduced - full).abs().mean() < 2 / 255  # within a couple of levels on average


def test_small_images_are_decoded_unchanged(models: dict[str, MultimodalModel]) -> None:
    image = sample_images(1)[0]
    data = encode_image(image)
    for model in models.values():
        assert np.array_equal(np.asarray(decode_image(data, MAX_PIXELS, model.input_size)), np.asarray(image))


def test_prepared_pixels_give_what_the_processor_gives_in_the_batch(
    models: dict[str, MultimodalModel], tmp_path: Path
) -> None:
    """HF adapters run their image processor in `prepare_image` now; the outputs equal the raw-image path
    (which runs the processor inside the batched call, as before)."""
    images = sample_images(4, seed=5)
    blip, clip = models["blip"], models["clip"]
    assert blip.caption([blip.prepare_image(im) for im in images], [5, 3, 7, 4]) == blip.caption(images, [5, 3, 7, 4])
    prepared = clip.embed_image([clip.prepare_image(im) for im in images])
    assert torch.equal(prepared, clip.embed_image(images))
    vqa = load_hf_model(str(build_blip_vqa(tmp_path / "vqa")))
    questions = ["what is it?", "how many?", "is it raining today?", "what?"]
    assert vqa.answer([vqa.prepare_image(im) for im in images], questions, 5) == vqa.answer(images, questions, 5)


def test_a_rotated_photo_is_reduced_by_its_upright_sides() -> None:
    """EXIF orientation 6 (stored landscape, shown portrait): reduced, then turned upright, covering the size."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode_image(photo((1200, 600)), "JPEG", exif=exif)
    decoded = decode_image(data, MAX_PIXELS, (40, 30))
    assert decoded.width < decoded.height  # upright: portrait
    assert decoded.width >= 40 * REDUCING_GAP and decoded.height >= 30 * REDUCING_GAP
    assert decoded.width * decoded.height < 1200 * 600 / 4  # and reduced
    assert decode_image(data, MAX_PIXELS).size == (600, 1200)


@pytest.mark.parametrize(
    ("mode", "image_format"),
    [
        *[("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("1", "PNG"), ("I;16", "PNG"), ("I;16", "TIFF")],
        *[("I", "TIFF"), ("F", "TIFF"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("L", "JPEG"), ("P", "GIF")],
        ("RGBA", "WEBP"),
    ],
)
def test_every_mode_is_reduced_too(mode: str, image_format: str) -> None:
    """Modes `Image.reduce` does not take (palette, bilevel, 16-bit, CMYK) are converted first, never refused."""
    image = photo((1000, 800)).convert(mode)
    if mode == "RGBA":
        image.putalpha(128)
    decoded = decode_image(encode_image(image, image_format), MAX_PIXELS, (32, 32))
    assert decoded.mode == "RGB" and decoded.size == (80, 64)  # the shorter side at 2 × 32
