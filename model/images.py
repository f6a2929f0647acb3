"""Image preprocessing for the built-in model: any PIL image → a float tensor batch.

Any mode is accepted: palette and grey images become RGB, transparency is flattened onto white,
animated images use the frame they are on (the first, once opened). Any size is resized (anti-aliased)
to the model's square input; aspect ratio is not kept, as the scenes are square.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image`, alpha composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """(B, 3, size, size) float32 in [0, 1]."""
    arrays = [
        np.asarray(to_rgb(image).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) for image in images
    ]
    batch = torch.from_numpy(np.stack(arrays)) / 255.0  # (B, H, W, 3)
    return batch.permute(0, 3, 1, 2).contiguous()
