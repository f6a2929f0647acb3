"""Hugging Face checkpoints behind mmserve's model contract.

`load_hf_model` takes a local folder or a hub id, reads what the checkpoint is from its own files and
returns the adapter for its family; no list of model names is kept here:

- a sentence-transformers folder (`modules.json`) → `SentenceEmbedder`: embed_text;
- architecture `BlipForConditionalGeneration` → `BlipCaptioner`: caption;
- architecture `BlipForQuestionAnswering` → `BlipQuestionAnswerer`: vqa;
- a model type transformers lists for zero-shot image classification (CLIP, SigLIP, …) → `DualEncoder`:
  embed_text, embed_image;
- a model type `AutoModelForImageTextToText` knows (LLaVA and newer VLMs) → `ImageTextToText`: caption, vqa;
- model type `whisper` (`WhisperForConditionalGeneration`) → `WhisperTranscriber`: transcribe.
"""

from __future__ import annotations

import logging

import torch
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES,
)

from model.api import ModelLoadError, MultimodalModel
from model.devices import default_dtype, resolve_device
from model.hf.base import HFAdapter
from model.hf.blip import load_blip
from model.hf.dual_encoder import load_dual_encoder
from model.hf.loading import load_config, read_json
from model.hf.sentence import load_sentence_transformer
from model.hf.vlm import load_image_text_to_text
from model.hf.whisper import load_whisper

__all__ = ["HFAdapter", "ModelLoadError", "load_hf_model"]

logger = logging.getLogger(__name__)

BLIP_ARCHITECTURES = frozenset({"BlipForConditionalGeneration", "BlipForQuestionAnswering"})


def load_hf_model(
    name: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    caption_prompt: str | None = None,
    max_text_tokens: int | None = None,
) -> MultimodalModel:
    """The adapter for the Hugging Face checkpoint `name` (a folder or a hub id), loaded onto `device`.

    `dtype=None` picks bf16 on CUDA (fp16 without bf16 support) and fp32 elsewhere. `caption_prompt` is,
    for BLIP, the words every caption starts with ("a picture of"), and for chat VLMs the instruction
    ("Describe this image in one sentence." by default). `max_text_tokens` caps texts and questions
    below the model's own limit. Raises `ModelLoadError`, naming the model, when it cannot be loaded.
    """
    torch_device = resolve_device(device)
    torch_dtype = dtype or default_dtype(torch_device)
    adapter = _load(name, torch_device, torch_dtype, caption_prompt, max_text_tokens)
    logger.info("loaded %r on %s in %s", adapter, torch_device, torch_dtype)
    return adapter


def _load(
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    caption_prompt: str | None,
    max_text_tokens: int | None,
) -> HFAdapter:
    modules = _sentence_transformer_modules(name)
    if modules is not None:
        return load_sentence_transformer(name, modules, device, dtype, max_text_tokens)
    config = load_config(name)
    architectures = set(getattr(config, "architectures", None) or ())
    blip = architectures & BLIP_ARCHITECTURES
    if config.model_type == "blip" and blip:
        return load_blip(name, blip.pop(), device, dtype, caption_prompt, max_text_tokens)
    if config.model_type in MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return load_dual_encoder(name, device, dtype, max_text_tokens)
    if config.model_type == "whisper" and architectures <= {"WhisperForConditionalGeneration"}:
        return load_whisper(name, device, dtype)
    if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return load_image_text_to_text(name, device, dtype, caption_prompt, max_text_tokens)
    raise ModelLoadError(
        f"model {name!r} (model_type {config.model_type!r}, architectures {sorted(architectures)}) is not a "
        "family mmserve can serve: BLIP captioning or VQA, a CLIP-style dual encoder, "
        "a sentence-transformers folder, an image-text-to-text model, or Whisper (WhisperForConditionalGeneration)"
    )


def _sentence_transformer_modules(name: str) -> list[dict[str, str]] | None:
    """The modules.json of a sentence-transformers folder, or None for any other checkpoint."""
    try:
        modules = read_json(name, "modules.json")
    except (OSError, ValueError) as e:  # not a folder nor a resolvable hub id: load_config says so clearly
        logger.debug("model %s: no modules.json (%s)", name, e)
        return None
    return modules if isinstance(modules, list) and modules else None
