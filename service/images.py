"""Safe image decoding: bytes → one RGB PIL image, with the size limits enforced before pixels exist.

The order matters: the byte limit is checked by the caller while reading; here the header is parsed
(`Image.open` reads no pixel data), the pixel count refused if over the limit, and only then is the
image decoded. Runs in a worker thread, never on the event loop.

Given the model's input size, a large image is reduced while it is decoded, as Pillow's `thumbnail` does:
a JPEG decodes at the smallest DCT scale (1/2, 1/4, 1/8) still at least `REDUCING_GAP` times that size
(`Image.draft`), so its full-size pixels never exist; other formats (PNG cannot draft) decode in full, are
reduced at once (`reduce`, a fast box filter, then one resize) and the full image is dropped. What is
left covers the input size `REDUCING_GAP` times over on its shorter side (relative to the model's), so
the model's own resize still downsamples from at least twice its size: what it sees barely changes.
"""

from __future__ import annotations

import io
import struct

from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidImage, PayloadTooLarge

# Formats we accept; every other Pillow plugin stays out of the parsing path.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_ACCEPTED_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"
# A decoded image keeps at least this many times the model's input size (Pillow's `thumbnail` default).
REDUCING_GAP = 2
EXIF_ORIENTATION = 0x0112
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")  # what `Image.reduce` takes
# What a failing decoder raises: truncated data (OSError), corrupt headers (SyntaxError, ValueError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError)


def decode_image(data: bytes, max_pixels: int, input_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an uploaded image: first frame, EXIF orientation applied, alpha flattened onto white, RGB;
    reduced towards `input_size` (the model's (width, height)) when it is much larger."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    image = _open(data)
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )
    image_format = image.format
    try:
        image.seek(0)  # animated images: the first frame
        enough = None if input_size is None else _stored_size(image, _enough(input_size))
        if enough is not None:
            image.draft(None, enough)  # JPEG only: decode at a reduced scale
        image.load()
        if enough is not None:
            image = _reduced(image, enough)  # before anything else copies the full-size pixels
        ImageOps.exif_transpose(image, in_place=True)  # (not in place, it copies even an upright image)
        return _to_rgb(image)
    except _DECODE_ERRORS as e:
        raise InvalidImage(f"the {image_format} image is truncated or corrupt and cannot be decoded") from e


def _enough(input_size: tuple[int, int]) -> tuple[int, int]:
    """The size an image reduced for a model of `input_size` keeps, at least (on its binding side)."""
    return input_size[0] * REDUCING_GAP, input_size[1] * REDUCING_GAP


def _stored_size(image: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """`size` as the stored (not yet EXIF-rotated) image lies: swapped when its rotation swaps the sides."""
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _reduced(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` scaled down, keeping its aspect, until it just covers `size`; unchanged when it is not larger."""
    width, height = image.size
    scale = max(size[0] / width, size[1] / height)
    if scale >= 1:
        return image
    if image.mode not in _REDUCIBLE_MODES:
        image = _to_rgb(image)  # palette images cannot be filtered as they are
    factor = int(1 / scale)
    if factor >= 2:
        image = image.reduce(factor)  # integer box filter: fast, and the full image can go
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if image.size[0] > target[0] and image.size[1] > target[1]:
        image = image.resize(target, Image.Resampling.BICUBIC)
    return image


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
