"""service.images: each kind of bad upload gets its own clear error; good ones come out RGB and upright."""

from __future__ import annotations

import struct
import zlib

import pytest
from PIL import Image

from service.errors import InvalidImage, PayloadTooLarge
from service.images import decode_image
from tests.support.server import encode_image, solid_image

LIMIT = 40_000_000


def png_claiming_size(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose header claims `width`×`height` (its pixel data is for 1×1)."""
    data = bytearray(encode_image(solid_image((0, 0, 0), (1, 1))))
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC
    return bytes(data)


def test_zero_bytes() -> None:
    with pytest.raises(InvalidImage, match=r"empty \(0 bytes\)"):
        decode_image(b"", LIMIT)


def test_text_file() -> None:
    with pytest.raises(InvalidImage, match="not an image; send JPEG, PNG"):
        decode_image(b"just some text, saved as photo.jpg\n", LIMIT)


def test_truncated_png() -> None:
    data = encode_image(solid_image((10, 200, 30), (64, 64)))
    with pytest.raises(InvalidImage, match="PNG image is truncated or corrupt"):
        decode_image(data[: len(data) // 2], LIMIT)


def test_truncated_jpeg() -> None:
    data = encode_image(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(InvalidImage, match="JPEG image is truncated or corrupt"):
        decode_image(data[: len(data) // 2], LIMIT)


def test_unsupported_format() -> None:
    with pytest.raises(InvalidImage, match="unsupported image format PPM"):
        decode_image(encode_image(solid_image((1, 2, 3)), "PPM"), LIMIT)


def test_decompression_bomb_refused_from_the_header() -> None:
    bomb = png_claiming_size(30_000, 30_000)
    assert len(bomb) < 200
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_image(bomb, LIMIT)


def test_pixel_limit_checked_before_decoding() -> None:
    # 8000×8000 is under Pillow's own guard but over ours; decoding the bogus pixel data would fail
    # with a 400, so a 413 proves the refusal came from the header.
    with pytest.raises(PayloadTooLarge, match="8000x8000 = 64000000 pixels; the limit is 40000000"):
        decode_image(png_claiming_size(8000, 8000), LIMIT)


def test_exif_orientation_applied() -> None:
    image = solid_image((0, 0, 255), (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    decoded = decode_image(encode_image(image, "JPEG", exif=exif), LIMIT)
    assert decoded.size == (20, 40)


def test_alpha_flattened_onto_white() -> None:
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((0, 0), (255, 0, 0, 255))
    decoded = decode_image(encode_image(image), LIMIT)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((4, 4)) == (255, 255, 255)
    assert decoded.getpixel((0, 0)) == (255, 0, 0)


def test_palette_transparency_flattened_onto_white() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 255, 0] * 256)
    decoded = decode_image(encode_image(image, transparency=0), LIMIT)
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_first_frame() -> None:
    frames = [solid_image((255, 0, 0)), solid_image((0, 0, 255))]
    data = encode_image(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    decoded = decode_image(data, LIMIT)
    assert decoded.mode == "RGB"
    red, _, blue = decoded.getpixel((0, 0))  # type: ignore[misc]
    assert red > 200 and blue < 50


@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_accepted_formats(format: str) -> None:
    decoded = decode_image(encode_image(solid_image((0, 128, 255)), format), LIMIT)
    assert decoded.mode == "RGB" and decoded.size == (32, 24)


def test_grayscale_becomes_rgb() -> None:
    decoded = decode_image(encode_image(Image.new("L", (5, 5), 77)), LIMIT)
    assert decoded.getpixel((0, 0)) == (77, 77, 77)
