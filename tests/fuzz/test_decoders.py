"""Hypothesis over the image decoder: whatever the bytes, a typed 400 or 413, never another exception.

Bounded time is a property of the inputs (frame and pixel bombs never decode more than one frame, nor
any pixel past the limit); there is no wall-clock assertion, only Hypothesis's own deadline as a hang guard.
"""

from __future__ import annotations

import base64
import io
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import IcoImagePlugin, Image

from service.errors import InvalidImage, PayloadTooLarge
from service.images import decode_image
from tests.fuzz.images import REAL_IMAGES, animated, bmp_claiming, gif_claiming, ico, png_claiming

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on corrupt files

MAX_PIXELS = 40_000_000
FUZZ = settings(max_examples=200, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])


def decode_or_refuse(data: bytes) -> Image.Image | None:
    """The decoded image, or None when refused with a typed client error (anything else fails the test).
    Also decoded for a tiny model (input 2×2), so that the reducing path (JPEG draft, reduce, resize) meets
    the same bytes: it too gives an RGB image or a typed refusal."""
    try:
        image = decode_image(data, MAX_PIXELS)
    except (InvalidImage, PayloadTooLarge):
        image = None
    try:
        reduced = decode_image(data, MAX_PIXELS, (2, 2))
    except (InvalidImage, PayloadTooLarge):
        reduced = None
    assert reduced is None or (reduced.mode == "RGB" and min(reduced.size) >= 1)
    return image


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    image = decode_or_refuse(data)
    assert image is None or (image.mode == "RGB" and image.width * image.height <= MAX_PIXELS)


@FUZZ
@given(st.sampled_from(sorted(REAL_IMAGES)), st.data())
def test_truncated_and_corrupted_real_images(fmt: str, data: st.DataObject) -> None:
    original = REAL_IMAGES[fmt]
    cut = data.draw(st.integers(0, len(original) - 1), label="cut")
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), max_size=8))
    corrupted = bytearray(original)
    for position, value in flips:
        corrupted[position] = value
    for sample in (original[:cut], bytes(corrupted)):
        image = decode_or_refuse(sample)
        assert image is None or image.mode == "RGB"


@pytest.mark.parametrize("claiming", [png_claiming, gif_claiming, bmp_claiming], ids=["png", "gif", "bmp"])
@pytest.mark.parametrize("size", [(30_000, 30_000), (65_535, 65_535), (40_001, 1_000)], ids=str)
def test_huge_dimensions_in_a_tiny_file(claiming, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    data = claiming(*size)
    assert len(data) < 200
    with pytest.raises(PayloadTooLarge, match="pixels"):  # from the header, before any pixel is decoded
        decode_image(data, MAX_PIXELS)


@pytest.mark.parametrize(("fmt", "count"), [("GIF", 3000), ("TIFF", 500), ("WEBP", 200)])
def test_frame_bombs_decode_only_the_first_frame(fmt: str, count: int) -> None:
    data = animated(fmt, count)
    if getattr(Image.open(io.BytesIO(data)), "n_frames", 1) < 2:
        pytest.skip(f"this Pillow writes no animated {fmt}")
    image = decode_image(data, MAX_PIXELS)
    assert image.size == (8, 8)
    assert image.getpixel((0, 0)) == (255, 0, 0)  # the first frame, not a later one


def test_unsupported_format_is_named_without_decoding_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """ICO's plugin decodes pixels when it opens a file: the probe that names a format must not open it."""
    loads: list[object] = []
    monkeypatch.setattr(IcoImagePlugin.IcoImageFile, "load", lambda self: loads.append(self))
    with pytest.raises(InvalidImage, match="unsupported image format ICO"):
        decode_image(ico(), MAX_PIXELS)
    assert loads == []


# The JSON image field: base64 with every kind of wrong padding and alphabet.
@FUZZ
@given(st.binary(min_size=1, max_size=64), st.sampled_from(["", "=", "==", "===", "====", "\n", " ", "-_", "!"]))
def test_base64_padding(raw: bytes, suffix: str) -> None:
    from pydantic import ValidationError

    from service.schemas import CaptionJSON

    encoded = base64.b64encode(raw).decode().rstrip("=") + suffix
    try:
        body = CaptionJSON.model_validate({"image": encoded})
    except ValidationError as e:
        assert "image is not valid base64" in str(e)
    else:
        assert body.image == raw  # accepted only when it decodes to exactly these bytes
