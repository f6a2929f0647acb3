"""CLIP-style dual encoders (CLIP, SigLIP and their kin): text and image embeddings in one space.

Any checkpoint whose model type transformers lists for zero-shot image classification is a pair of
towers with `get_text_features` / `get_image_features`; we call those, take the projected vector,
and L2-normalise it in float32. SigLIP was trained on texts padded to a fixed length and pools the
last position without a mask, so its texts are padded to `max_text_tokens`; CLIP pools at [EOS] and
pads to the longest text in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import AutoModel, PreTrainedModel, ProcessorMixin

from model.hf.base import HFAdapter, empty_embedding, normalized_cpu, pixel_batch, to_device
from model.hf.loading import load_pretrained, load_processor, text_position_limit
from model.tokens import TokenCounter

# model types whose text tower expects every text padded to the same fixed length
FIXED_LENGTH_TEXT = frozenset({"siglip", "siglip2"})


def projected(features: Any) -> torch.Tensor:
    """The projected embedding from `get_*_features`: a tensor in transformers 4, `.pooler_output` in 5."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


class DualEncoder(HFAdapter):
    """Text and image embeddings from a CLIP-style checkpoint."""

    def __init__(
        self, name: str, model: PreTrainedModel, processor: ProcessorMixin, max_text_tokens: int
    ) -> None:
        super().__init__(
            name, model.device, model.dtype, frozenset({"embed_text", "embed_image"}), max_text_tokens
        )
        # any CLIP-style class: transformers declares get_text_features / get_image_features on each one,
        # not on a common base, so the checker cannot see them on PreTrainedModel
        self.model: Any = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self._prepare_pixels_with(processor.image_processor)
        self.padding: bool | str = "max_length" if model.config.model_type in FIXED_LENGTH_TEXT else True
        # only what the text tower reads: BERT-style tokenizers also return token_type_ids
        self.text_inputs = [
            k for k in ("input_ids", "attention_mask") if k in self.tokenizer.model_input_names
        ]
        self.dim = int(self.embed_text(["a"]).shape[1])
        self._counter = TokenCounter(self.tokenizer, max_text_tokens)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, truncated as embedded, padding not counted (any thread)."""
        return self._counter(texts)

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, dim] float32 CPU tensor, L2-normalised."""
        if not texts:
            return empty_embedding(self.dim)
        tokens = self.tokenizer(
            list(texts),
            padding=self.padding,
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        inputs = to_device({k: tokens[k] for k in self.text_inputs}, self.device, self.dtype)
        return normalized_cpu(projected(self.model.get_text_features(**inputs)))

    @torch.inference_mode()
    def embed_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[n, dim] float32 CPU tensor, L2-normalised, in the same space as embed_text."""
        if not images:
            return empty_embedding(self.dim)
        pixels = pixel_batch(self.processor.image_processor, images).to(self.device, self.dtype)
        return normalized_cpu(projected(self.model.get_image_features(pixel_values=pixels)))


def load_dual_encoder(
    name: str, device: torch.device, dtype: torch.dtype, max_text_tokens: int | None
) -> DualEncoder:
    processor = load_processor(name)
    model = load_pretrained(AutoModel, name, device, dtype)
    limit = min(max_text_tokens or 10**9, text_position_limit(model.config, default=77))
    return DualEncoder(name, model, processor, limit)
