"""A text-to-image model behind the `ImageGenerator` contract, whichever family its parts come from.

Both families (the built-in generator, `model.builtin_generator`, and Stable Diffusion folders,
`model.hf.diffusers_adapter`) become a `DiffusionGenerator`: their parts (`DiffusionParts`), the sizes they
make and their defaults. It validates a request into an `ImageSpec`, keeps the unconditional prompt's text
states (computed once, on the inference thread), and makes the `DenoiseState` the service steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from model.api import ImageSpec, ModelLoadError, UnsupportedImageSize
from model.diffusion import DenoiseState, DiffusionParts, generate_all


class DiffusionGenerator:
    """Images from prompts, a denoising step at a time; one instance per loaded model."""

    def __init__(
        self,
        name: str,
        parts: DiffusionParts,
        sizes: Sequence[tuple[int, int]],
        default_steps: int,
        default_guidance_scale: float,
    ) -> None:
        parameter = next(parts.unet.parameters())
        self.name = name
        self.parts = parts
        self.device: torch.device = parameter.device
        self.dtype: torch.dtype = parameter.dtype
        self.sizes = tuple(sizes)  # (width, height); the first is the default
        self.default_steps = default_steps
        self.default_guidance_scale = default_guidance_scale
        self._uncond: tuple[torch.Tensor, Any] | None = None

    def __repr__(self) -> str:
        return f"DiffusionGenerator({self.name!r}, sizes={self.sizes}, steps={self.default_steps})"

    def image_spec(
        self,
        prompt: str,
        seed: int,
        steps: int | None = None,
        guidance_scale: float | None = None,
        size: tuple[int, int] | None = None,
        preview_every: int = 0,
    ) -> ImageSpec:
        """One image's spec with the model's defaults filled in (thread-safe)."""
        width, height = size or self.sizes[0]
        if (width, height) not in self.sizes:
            raise UnsupportedImageSize(width, height, self.sizes)
        steps = self.default_steps if steps is None else steps
        guidance = self.default_guidance_scale if guidance_scale is None else guidance_scale
        if steps < 1 or preview_every < 0 or guidance < 0:  # the service's request schemas refuse these first
            raise ValueError(f"steps ({steps}) must be >= 1, guidance_scale ({guidance}) and preview_every >= 0")
        return ImageSpec(prompt, seed, steps, guidance, width, height, preview_every)

    def unconditional(self) -> tuple[torch.Tensor, Any]:
        """The unconditional prompt's text states and mask, computed at first use (inference thread)."""
        if self._uncond is None:
            with torch.inference_mode():
                self._uncond = self.parts.encode_text([self.parts.uncond_prompt])
        return self._uncond

    def new_state(self, capacity: int) -> DenoiseState:
        return DenoiseState(self.parts, capacity, self.unconditional)

    def generate(self, specs: Sequence[ImageSpec]) -> list[Image.Image]:
        """Whole images, run together to the end (whole-request batching)."""
        return generate_all(self.new_state(max(1, len(specs))), specs)


def load_image_generator(
    path_or_name: str | Path, device: torch.device, dtype: torch.dtype | None, **options: Any
) -> DiffusionGenerator:
    """The built-in generator (`"builtin"`: `model/weights/generator/`, or a folder of its format) or a
    diffusers Stable Diffusion folder, loaded onto `device`. Raises `ModelLoadError` naming it and why."""
    from model.builtin_generator import is_builtin_generator, load_builtin_generator
    from model.text_to_image import GENERATOR_DIR

    path = GENERATOR_DIR if str(path_or_name) == "builtin" else Path(path_or_name)
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"{path_or_name}: not a text-to-image model folder (no model_index.json in {path})")
    if is_builtin_generator(path):
        return load_builtin_generator(path, device, dtype, **options)
    from model.hf.diffusers_adapter import load_stable_diffusion

    return load_stable_diffusion(path, device, dtype)
