"""BLIP: image captioning (`BlipForConditionalGeneration`) and VQA (`BlipForQuestionAnswering`).

Captioning may start from a text prompt (BLIP's "a picture of" style): the caption continues the prompt
and includes it, as BLIP's own decoding does. Every row shares the prompt, so a batch needs no padding.

VQA encodes the question against the image, then decodes an answer from [DEC] with cross-attention
to the question. That cross-attention sees the question's padding: `BlipForQuestionAnswering.generate`
passes an all-ones mask, and in transformers 5 BLIP's cross-attention drops any mask it is given. A
padded batch would therefore answer differently from single calls, so a batch is generated in groups
of questions with the same token length, which need no padding.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import torch
from PIL import Image
from transformers import (
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
    PreTrainedModel,
    ProcessorMixin,
)

from model.api import Progress
from model.hf.base import HFAdapter, cut_rows, eos_token_ids, generate, pixel_batch, to_device
from model.hf.loading import load_pretrained, load_processor, text_position_limit
from model.inputs import check_pairs, row_limits

logger = logging.getLogger(__name__)


def blip_tokens(processor: ProcessorMixin, texts: Sequence[str], max_tokens: int) -> dict[str, torch.Tensor]:
    """The ids and mask BLIP's processor makes of `texts` (unpadded: all of one length, or one text each)."""
    tokens = processor.tokenizer(list(texts), truncation=True, max_length=max_tokens, return_tensors="pt")
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


class BlipCaptioner(HFAdapter):
    """Captions with a `BlipForConditionalGeneration` checkpoint, optionally continuing `prompt`."""

    def __init__(
        self,
        name: str,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        prompt: str | None,
        max_text_tokens: int,
    ) -> None:
        super().__init__(name, model.device, model.dtype, frozenset({"caption"}), max_text_tokens)
        self.model = model
        self.processor = processor
        self.prompt = prompt or None
        self._prepare_pixels_with(processor.image_processor)
        self.eos_ids = eos_token_ids(model.config.text_config.sep_token_id)  # BLIP's decoder stops at [SEP]

    @torch.inference_mode()
    def caption(
        self,
        images: Sequence[Image.Image],
        max_new_tokens: int | Sequence[int] = 32,
        progress: Progress | None = None,
    ) -> list[str]:
        """One caption per image (starting with the prompt when one is set)."""
        if not images:
            return []
        limits = row_limits(max_new_tokens, len(images))
        inputs = {"pixel_values": pixel_batch(self.processor.image_processor, images)}
        if self.prompt:
            inputs |= blip_tokens(self.processor, [self.prompt] * len(images), self.max_text_tokens)
        inputs = to_device(inputs, self.device, self.dtype)
        # BLIP replaces [CLS] with [DEC] and drops the final [SEP]: the decoder's prompt is [DEC] + prompt.
        prompt_len = inputs["input_ids"].shape[1] - 1 if self.prompt else 1
        out = generate(
            self.model, progress, **inputs, max_new_tokens=max(1, *limits), do_sample=False, num_beams=1
        )
        rows = cut_rows(out[:, prompt_len:], limits, self.eos_ids)
        prefix = out[0, :prompt_len].tolist()
        return [self.processor.decode(prefix + row, skip_special_tokens=True).strip() for row in rows]


class BlipQuestionAnswerer(HFAdapter):
    """Answers questions about images with a `BlipForQuestionAnswering` checkpoint."""

    def __init__(
        self, name: str, model: PreTrainedModel, processor: ProcessorMixin, max_text_tokens: int
    ) -> None:
        super().__init__(name, model.device, model.dtype, frozenset({"vqa"}), max_text_tokens)
        self.model = model
        self.processor = processor
        self._prepare_pixels_with(processor.image_processor)
        self.eos_ids = eos_token_ids(model.config.text_config.sep_token_id)

    @torch.inference_mode()
    def answer(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        max_new_tokens: int = 16,
        progress: Progress | None = None,
    ) -> list[str]:
        """One answer per (image, question) pair."""
        check_pairs(images, questions)
        if not images:
            return []
        # Questions of one token length at a time: no padding, so a batch answers as single calls do.
        lengths = self.processor.tokenizer(list(questions), truncation=True, max_length=self.max_text_tokens)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, ids in enumerate(lengths["input_ids"]):
            groups[len(ids)].append(i)
        answers = [""] * len(images)
        for rows in groups.values():
            group = self._answer_unpadded(
                [images[i] for i in rows], [questions[i] for i in rows], max_new_tokens, progress
            )
            for i, text in zip(rows, group, strict=True):
                answers[i] = text
        return answers

    def _answer_unpadded(
        self, images: list[Image.Image], questions: list[str], max_new_tokens: int, progress: Progress | None
    ) -> list[str]:
        pixels = pixel_batch(self.processor.image_processor, images)
        inputs = {"pixel_values": pixels, **blip_tokens(self.processor, questions, self.max_text_tokens)}
        inputs = to_device(inputs, self.device, self.dtype)
        limit = max(1, max_new_tokens)
        out = generate(self.model, progress, **inputs, max_new_tokens=limit, do_sample=False, num_beams=1)
        rows = cut_rows(out[:, 1:], [max_new_tokens] * len(images), self.eos_ids)  # after the [DEC] start
        return [self.processor.decode(row, skip_special_tokens=True).strip() for row in rows]


def load_blip(
    name: str,
    architecture: str,
    device: torch.device,
    dtype: torch.dtype,
    caption_prompt: str | None,
    max_text_tokens: int | None,
) -> HFAdapter:
    """The BLIP adapter for `architecture` (captioning or VQA)."""
    processor = load_processor(name)
    if architecture == "BlipForQuestionAnswering":
        vqa = load_pretrained(BlipForQuestionAnswering, name, device, dtype)
        return BlipQuestionAnswerer(name, vqa, processor, max_text_tokens or text_position_limit(vqa.config))
    captioner = load_pretrained(BlipForConditionalGeneration, name, device, dtype)
    limit = max_text_tokens or text_position_limit(captioner.config)
    return BlipCaptioner(name, captioner, processor, caption_prompt, limit)
