"""The built-in text-to-image generator's folder format, and its loader.

A diffusers-style folder (`model/weights/generator/`, written by `mmserve train --stage generate`; its
reference sampling loop is `model.text_to_image`):
- `model_index.json`: `"_class_name": "MmserveTextToImage"`, `"text_encoder": "builtin-minilm"` (the frozen
  all-MiniLM-L6-v2 of `model.text`: its last hidden states, 384-d, condition the UNet's cross-attention;
  prompts keep their first `"max_text_tokens"`, [CLS] and [SEP] included, and with
  `"text_attention_mask"` their mask goes to the cross-attention as `encoder_attention_mask`; the names
  `"text_max_tokens"` and `"encoder_attention_mask"` are read too), `"sample_size"` (the UNet's side),
  `"pixel_shuffle"` (the image is denoised folded space-to-depth by this factor: 3·f² channels),
  `"output_size"` (the image's side), `"vae"` (null: pixels in [-1, 1]; "vae": a latent model with a
  `vae/` AutoencoderKL), `"default_steps"`, `"default_guidance_scale"`, `"uncond_prompt"` ("");
- `unet/` (an `UNet2DConditionModel`, `cross_attention_dim` 384) and `scheduler/` (any diffusers scheduler;
  flow matching for ours), each loadable with `from_pretrained(folder, subfolder=...)`; `vae/` when named.
Guidance is v_uncond + g·(v_cond - v_uncond) for every g but 1 (so g < 1 leans towards the unconditional).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor

from model.api import ModelLoadError
from model.devices import default_dtype
from model.diffusion import DiffusionParts
from model.image_generator import DiffusionGenerator
from model.text import TextTower
from model.text_to_image import CLASS_NAME, GENERATOR_DIR

TEXT_ENCODER = "builtin-minilm"
DEFAULT_MAX_TEXT_TOKENS = 64


def is_builtin_generator(path: str | os.PathLike[str]) -> bool:
    try:
        index = json.loads((Path(path) / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and index.get("_class_name") == CLASS_NAME


def load_builtin_generator(
    path: Path, device: torch.device, dtype: torch.dtype | None, text_tower: TextTower | None = None
) -> DiffusionGenerator:
    """The generator folder at `path` on `device`; `text_tower`: a MiniLM tower already loaded, to share."""
    index: dict[str, Any] = json.loads((path / "model_index.json").read_text())
    if index.get("text_encoder", TEXT_ENCODER) != TEXT_ENCODER:
        raise ModelLoadError(f"{path}: text encoder {index.get('text_encoder')!r}; only {TEXT_ENCODER!r} is known")
    dtype = dtype or default_dtype(device)
    try:
        unet = UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", dtype=dtype)
        scheduler_class = json.loads((path / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        scheduler = getattr(diffusers, scheduler_class).from_pretrained(str(path), subfolder="scheduler")
        vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae", dtype=dtype) if index.get("vae") else None
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise ModelLoadError(f"{path}: the generator could not be loaded: {e}") from e
    unet.to(device).eval()
    if vae is not None:
        vae.to(device).eval()
    tower = text_tower or TextTower()
    tower.to(device)
    max_tokens = int(_either(index, "max_text_tokens", "text_max_tokens", DEFAULT_MAX_TEXT_TOKENS))
    masked = bool(_either(index, "text_attention_mask", "encoder_attention_mask", True))

    def encode_text(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return minilm_token_states(tower, prompts, max_tokens, dtype, masked)

    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    fold = int(index.get("pixel_shuffle", 1))
    output = int(index["sample_size"]) * vae_scale * fold
    if int(index.get("output_size", output)) != output:
        raise ModelLoadError(f"{path}: output_size {index['output_size']} is not sample_size·pixel_shuffle, {output}")
    parts = DiffusionParts(
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        encode_text=encode_text,
        uncond_prompt=str(index.get("uncond_prompt", "")),
        image_processor=VaeImageProcessor(vae_scale_factor=vae_scale),
        pixel_shuffle=fold,
        guide_below_one=True,
        prediction="sample" if index.get("prediction") == "sample" else "model",
    )
    steps, guidance = int(index["default_steps"]), float(index["default_guidance_scale"])
    name = "builtin-generator" if path.resolve() == GENERATOR_DIR.resolve() else path.name
    return DiffusionGenerator(name, parts, [(output, output)], steps, guidance)


def minilm_token_states(
    tower: TextTower, prompts: list[str], max_tokens: int, dtype: torch.dtype, masked: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts → MiniLM's last hidden states (n, T, 384), right-padded to the longest, and their (n, T) mask
    (without the mask, padded to `max_tokens`: every prompt the same length, padding included)."""
    device = next(tower.encoder.parameters()).device
    rows = [tower.tokenizer(prompt, truncation=True, max_length=max_tokens)["input_ids"] for prompt in prompts]
    width = max(len(row) for row in rows) if masked else max_tokens
    ids = torch.full((len(rows), width), tower.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    ids, mask = ids.to(device), mask.to(device)
    states = tower.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (n, T, 384)
    return states.to(dtype), (mask if masked else None)


def _either(index: dict[str, Any], key: str, older: str, default: Any) -> Any:
    """A field of `model_index.json` under its name, or the name early generator folders gave it."""
    return index.get(key, index.get(older, default))
