"""A large synthetic photo for the memory tests and bench/image_memory.py."""

from __future__ import annotations

from PIL import Image, ImageDraw

PHOTO_SIZE = (7744, 5164)  # 39.99 MP, a 3:2 camera sensor (the default limit is 40 MP)


def photo(size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
    """A photo-like RGB image: smooth gradients with sharp-edged shapes (so a reduction has edges to get wrong)."""
    width, height = size
    across = Image.linear_gradient("L").rotate(90).resize(size)
    down = Image.linear_gradient("L").resize(size)
    image = Image.merge("RGB", (across, down, across.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    draw = ImageDraw.Draw(image)
    for i in range(12):
        box = (i * width // 13, (i % 3) * height // 4, (i + 1) * width // 13, (i % 3 + 1) * height // 4)
        draw.ellipse(box, fill=((i * 80) % 256, (i * 40) % 256, (i * 120) % 256))
    return image
