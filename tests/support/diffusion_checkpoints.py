"""Tiny random text-to-image folders, built offline: a Stable Diffusion pipeline and a built-in generator.

`build_stable_diffusion` writes what `StableDiffusionPipeline.save_pretrained` writes, from configs in the
spirit of diffusers' own tests (a 2-block UNet with cross-attention, a 2-block AutoencoderKL, a 2-layer CLIP
text encoder) and a CLIP tokenizer whose vocabulary is the printable characters (no merges), so nothing
is downloaded. `build_builtin_generator` writes the built-in generator's format (`model.builtin_generator`):
a tiny pixel UNet conditioned on MiniLM's 384-d token states, flow matching.

    python -m tests.support.diffusion_checkpoints /tmp/tiny-t2i    # builds both under that folder
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    SchedulerMixin,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TOKENS = 32  # the tokenizer's model_max_length: prompts are padded to it


def _clip_tokenizer() -> CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.printable.strip():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKENS)


def _tiny_unet(in_channels: int, sample_size: int, cross_attention_dim: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=4,
    )


def _widen(module: torch.nn.Module, std: float) -> None:
    """Random weights wider than diffusers' zero-initialised output convs: images that depend on the prompt."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, std)


def build_stable_diffusion(out_dir: Path, seed: int = 0, scheduler: SchedulerMixin | None = None) -> Path:
    """A tiny `StableDiffusionPipeline` folder: 16×16 images from 8×8×4 latents (DDIM unless `scheduler`)."""
    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer()
    text_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer.get_vocab()),
        max_position_embeddings=TOKENS,
    )
    unet = _tiny_unet(4, 8, 32)
    _widen(unet, 0.1)
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    )
    scheduler = scheduler or DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out_dir)
    return out_dir


def build_builtin_generator(out_dir: Path, seed: int = 0, default_steps: int = 4) -> Path:
    """A tiny random built-in generator in the format `mmserve train --stage generate` writes: a 16×16 UNet on
    MiniLM token states, denoising 32×32 images folded space-to-depth (2×2: 12 channels), flow matching."""
    torch.manual_seed(seed)
    unet = _tiny_unet(12, 16, 384)
    _widen(unet, 0.1)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir / "unet")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).save_pretrained(out_dir / "scheduler")
    index = {
        "_class_name": "MmserveTextToImage",
        "text_encoder": "builtin-minilm",
        "sample_size": 16,
        "pixel_shuffle": 2,
        "output_size": 32,
        "vae": None,
        "default_steps": default_steps,
        "default_guidance_scale": 3.0,
        "uncond_prompt": "",
        "max_text_tokens": 16,
        "text_attention_mask": True,
        "prediction": "flow",
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    root = Path((argv or sys.argv[1:] or ["/tmp/tiny-t2i"])[0])
    print(build_stable_diffusion(root / "stable-diffusion"), build_builtin_generator(root / "generator"))


if __name__ == "__main__":
    main()
