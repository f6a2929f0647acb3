"""Safe image decoding: bytes → one RGB PIL image, with the size limits enforced before pixels exist.

The order matters: the byte limit is checked by the caller while reading; here the header is parsed
(`Image.open` reads no pixel data), the pixel count refused if over the limit, and only then is the
image decoded. Runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import io
import struct

from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidImage, PayloadTooLarge

# Formats we accept; every other Pillow plugin stays out of the parsing path.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_ACCEPTED_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"
# What a failing decoder raises: truncated data (OSError), corrupt headers (SyntaxError, ValueError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an uploaded image: first frame, EXIF orientation applied, alpha flattened onto white, RGB."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    image = _open(data)
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )
    try:
        image.seek(0)  # animated images: the first frame
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except _DECODE_ERRORS as e:
        raise InvalidImage(f"the {image.format} image is truncated or corrupt and cannot be decoded") from e


def _open(data: bytes) -> Image.Image:
    """Parse the header only (lazy); name the format when it is an image we do not accept."""
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"the image has too many pixels ({e})") from e
    except UnidentifiedImageError:
        pass
    except _DECODE_ERRORS as e:
        raise InvalidImage("the image header is corrupt and cannot be decoded") from e
    found = other_format(data)
    if found:
        raise InvalidImage(f"unsupported image format {found}; send {_ACCEPTED_TEXT}")
    raise InvalidImage(f"the upload is not an image; send {_ACCEPTED_TEXT}")


def other_format(data: bytes) -> str | None:
    """The format of an image we do not accept, from its first bytes only, to name it in the message.

    Asks each Pillow plugin's signature check (`accept`), and never opens the image: some plugins decode
    pixels as soon as they open a file (ICO does), which a probe for a message must never do.
    """
    Image.init()
    prefix = data[:16]
    for format_id in Image.ID:
        accept = Image.OPEN[format_id][1]
        if format_id in ACCEPTED_FORMATS or accept is None:
            continue
        try:
            if accept(prefix):
                return format_id
        except (struct.error, IndexError, TypeError, ValueError):  # a prefix too short for its check
            continue
    return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (a transparent pixel's colour is arbitrary)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")
