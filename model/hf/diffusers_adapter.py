"""Stable Diffusion folders (diffusers' layout) behind the `ImageGenerator` contract.

A local folder saved by `StableDiffusionPipeline.save_pretrained` (SD 1.x / 2.x: `UNet2DConditionModel`,
`AutoencoderKL`, a CLIP text encoder and tokenizer, and whatever scheduler the folder names) is loaded
through the pipeline class itself, so the parts, the scheduler config fixes and the prompt encoding are
exactly the pipeline's: the pipeline stays the reference our served images are tested against. We own
the loop (`model.diffusion`); the safety checker is not loaded (no images are blanked).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging

from model.api import ModelLoadError
from model.devices import default_dtype
from model.diffusion import DiffusionParts
from model.image_generator import DiffusionGenerator

PIPELINES = frozenset({"StableDiffusionPipeline"})
DEFAULT_STEPS = 50  # the pipeline's defaults
DEFAULT_GUIDANCE_SCALE = 7.5


def load_stable_diffusion(path: Path, device: torch.device, dtype: torch.dtype | None) -> DiffusionGenerator:
    """The Stable Diffusion folder at `path` on `device` (fp32 on CPU; bf16/fp16 on CUDA when `dtype` is None)."""
    index = json.loads((path / "model_index.json").read_text())
    pipeline_class = index.get("_class_name")
    if pipeline_class not in PIPELINES:
        raise ModelLoadError(
            f"{path}: a {pipeline_class} folder; text-to-image serves {', '.join(sorted(PIPELINES))} folders "
            "and the built-in generator"
        )
    diffusers_logging.disable_progress_bar()
    try:
        pipeline = StableDiffusionPipeline.from_pretrained(
            str(path),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=True,
            dtype=dtype or default_dtype(device),
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: the Stable Diffusion folder could not be loaded: {e}") from e
    pipeline.to(device)
    if pipeline.unet.config.time_cond_proj_dim is not None:
        raise ModelLoadError(f"{path}: guidance-embedded UNets (LCM) are not served")

    def encode_text(prompts: list[str]) -> tuple[torch.Tensor, None]:
        states, _ = pipeline.encode_prompt(prompts, device, 1, False)  # the pipeline's own prompt encoding
        return states, None

    parts = DiffusionParts(
        unet=pipeline.unet,
        scheduler=pipeline.scheduler,
        vae=pipeline.vae,
        encode_text=encode_text,
        uncond_prompt="",
        image_processor=pipeline.image_processor,
    )
    native = pipeline.unet.config.sample_size * parts.vae_scale
    return DiffusionGenerator(path.name, parts, [(native, native)], DEFAULT_STEPS, DEFAULT_GUIDANCE_SCALE)
