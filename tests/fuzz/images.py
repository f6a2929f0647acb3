"""Hostile image files, built with Pillow: bombs of frames and pages, and headers that lie about their size."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from tests.support.server import encode_image, noise_image, solid_image

# One small real file per accepted format, to cut and corrupt.
REAL_IMAGES = {
    fmt: encode_image(noise_image(7, (24, 16)), fmt) for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
}


def frames(count: int, size: tuple[int, int] = (8, 8)) -> list[Image.Image]:
    """Distinct frames: the first is red, the rest cycle through other colours."""
    return [solid_image((255, 0, 0) if i == 0 else (0, (40 * i) % 256, 255), size) for i in range(count)]


def animated(fmt: str, count: int) -> bytes:
    """A GIF, WebP or multi-page TIFF of `count` frames (many frames, few bytes)."""
    first, *rest = frames(count)
    buffer = io.BytesIO()
    lossless = {"lossless": True} if fmt == "WEBP" else {}  # so that the first frame's colour is exact
    first.save(buffer, format=fmt, save_all=True, append_images=rest, **lossless)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height (the CRC fixed, so only the size lies)."""
    data = bytearray(encode_image(solid_image((1, 2, 3), (2, 2))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A tiny GIF whose logical screen and first frame claim width × height."""
    data = bytearray(encode_image(solid_image((1, 2, 3), (2, 2)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    descriptor = data.index(b"\x2c")  # the image descriptor: ',' then x, y, w, h
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode_image(solid_image((1, 2, 3), (2, 2)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def ico(size: int = 64) -> bytes:
    """An ICO file: a format we do not accept, whose Pillow plugin decodes pixels as soon as it opens."""
    return encode_image(solid_image((9, 9, 9), (size, size)), "ICO", sizes=[(size, size)])
