"""Generic image-text-to-text models (LLaVA-style and newer VLMs) through their chat template.

Each request becomes one user turn, the image then the text, rendered and tokenised by the processor's
own chat template (which also places the image tokens); captioning sends a fixed instruction, VQA the
question. Decoder-only models generate from the right end, so prompts are left-padded with an attention
mask: a batch of mixed prompt lengths gives what one-by-one calls give. Decoding is always greedy.

User text never carries control tokens: any special-token string in a question (e.g. "<image>", which
would ask for an image that is not there and fail the batch) is removed before templating.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, PreTrainedModel, ProcessorMixin

from model.api import ModelLoadError, Progress
from model.hf.base import HFAdapter, cut_rows, eos_token_ids, generate, processor_input_size, to_device
from model.hf.loading import load_pretrained, load_processor, text_position_limit
from model.inputs import check_pairs, row_limits

logger = logging.getLogger(__name__)

DEFAULT_CAPTION_INSTRUCTION = "Describe this image in one sentence."
DEFAULT_MAX_QUESTION_TOKENS = 256  # questions are short; the rest of the context is the image and the answer


class ImageTextToText(HFAdapter):
    """Captions and answers with an `AutoModelForImageTextToText` checkpoint and its chat template."""

    def __init__(
        self,
        name: str,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        caption_instruction: str,
        max_text_tokens: int,
    ) -> None:
        super().__init__(name, model.device, model.dtype, frozenset({"caption", "vqa"}), max_text_tokens)
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # generation continues every row from its last real token
        if self.tokenizer.pad_token is None:  # some chat tokenizers have none; any id works under the mask
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.caption_instruction = caption_instruction
        self.eos_ids = eos_token_ids(model.generation_config.eos_token_id or self.tokenizer.eos_token_id)
        self.pad_id = self.tokenizer.pad_token_id
        self.control_tokens = sorted(set(self.tokenizer.all_special_tokens), key=len, reverse=True)
        self.encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        # the processor expands the image's tokens in the text from the image itself, so it runs in the batched
        # call; `prepare_image` resizes and crops as it would (when it sizes every image alike)
        self.input_size = processor_input_size(getattr(processor, "image_processor", None))

    def prepare_image(self, image: Image.Image) -> Image.Image:
        """The image resized and cropped as the processor would (so its own resize and crop, in the batched call,
        change nothing): model-sized. Unchanged when the processor sizes images by their own resolution."""
        if self.input_size is None:
            return image
        resized = self.processor.image_processor(
            images=[image], do_rescale=False, do_normalize=False, return_tensors="np"
        )["pixel_values"]
        if resized.ndim != 4 or resized.shape[:2] != (1, 3):  # tiles, or not an image per row: leave it whole
            return image
        return Image.fromarray(np.clip(np.rint(resized[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8))

    def caption(
        self,
        images: Sequence[Image.Image],
        max_new_tokens: int | Sequence[int] = 32,
        progress: Progress | None = None,
    ) -> list[str]:
        """One caption per image: the model's answer to the caption instruction."""
        limits = row_limits(max_new_tokens, len(images))
        return self._generate(images, [self.caption_instruction] * len(images), limits, progress)

    def answer(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        max_new_tokens: int = 16,
        progress: Progress | None = None,
    ) -> list[str]:
        """One answer per (image, question) pair."""
        check_pairs(images, questions)
        texts = [self._user_text(q) for q in questions]
        return self._generate(images, texts, row_limits(max_new_tokens, len(images)), progress)

    def _user_text(self, text: str) -> str:
        """`text` without control tokens, cut to `max_text_tokens` tokens."""
        for token in self.control_tokens:
            text = text.replace(token, " ")
        limit = self.max_text_tokens
        try:
            encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:  # a tokenizer without offsets (Python backends): cut by decoding
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return text if len(ids) <= limit else self.tokenizer.decode(ids[:limit])
        if len(encoding["input_ids"]) > limit:
            text = text[: encoding["offset_mapping"][limit - 1][1]]  # cut the string after token `limit`
        return text

    @torch.inference_mode()
    def _generate(
        self, images: Sequence[Image.Image], texts: Sequence[str], limits: list[int], progress: Progress | None
    ) -> list[str]:
        if not images:
            return []
        conversations: list[list[dict[str, Any]]] = [
            [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
            for image, text in zip(images, texts, strict=True)
        ]
        inputs: Any = self.processor.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        )
        inputs = to_device(inputs, self.device, self.dtype)
        limit = max(1, *limits)
        out = generate(
            self.model, progress, **inputs, max_new_tokens=limit, do_sample=False, num_beams=1, pad_token_id=self.pad_id
        )
        # the generated tokens follow the decoder's start token, or the whole (left-padded) prompt
        start = 1 if self.encoder_decoder else inputs["input_ids"].shape[1]
        rows = cut_rows(out[:, start:], limits, self.eos_ids)
        return [text.strip() for text in self.processor.batch_decode(rows, skip_special_tokens=True)]


def load_image_text_to_text(
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    caption_prompt: str | None,
    max_text_tokens: int | None,
) -> ImageTextToText:
    processor = load_processor(name)
    if getattr(processor, "chat_template", None) is None:
        raise ModelLoadError(
            f"model {name!r}: its processor has no chat template, which mmserve needs to prompt it"
        )
    model = load_pretrained(AutoModelForImageTextToText, name, device, dtype)
    # greedy always: drop sampling settings some checkpoints ship in generation_config.json
    model.generation_config.do_sample = False
    model.generation_config.temperature = model.generation_config.top_p = model.generation_config.top_k = None
    limit = min(max_text_tokens or DEFAULT_MAX_QUESTION_TOKENS, text_position_limit(model.config))
    return ImageTextToText(name, model, processor, caption_prompt or DEFAULT_CAPTION_INSTRUCTION, limit)
