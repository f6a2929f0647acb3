"""The built-in multimodal Transformer and its public face.

`MultimodalTransformer` is the trainable module: a ViT image encoder, a projection of the image into the
frozen MiniLM text space (for embeddings), and a decoder with cross-attention (for captions and answers).
`BuiltinModel` wraps it with the tokenizer, the text tower and image preprocessing, and implements the
`MultimodalModel` protocol the service uses: batched `caption`, `answer`, `embed_text`, `embed_image`.

Prompts: a caption is generated after `[BOS]`; an answer after `[BOS] question [SEP]`. For some questions
the decoder first writes a scratchpad ending in `[SEP]`: for relative position each object's column, then
their relation ("two four left [SEP] yes"); for colour the object's column ("three [SEP] green").
`answer` returns only what follows the last `[SEP]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer
from torch import nn

from model.api import ALL_TASKS, Task
from model.config import ModelConfig
from model.decoder import Decoder
from model.generate import greedy_decode
from model.images import to_pixels
from model.text import TextTower
from model.tokenizer import BOS, EOS, PAD, SEP
from model.vision import VisionEncoder


def after_scratchpad(ids: list[int], sep_id: int) -> list[int]:
    """The answer part of generated ids: what follows the last `[SEP]` (all of it when there is none)."""
    return ids[len(ids) - ids[::-1].index(sep_id) :] if sep_id in ids else ids


class MultimodalTransformer(nn.Module):
    """The trainable towers: image encoder, image→text-space projection, decoder."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config.vision)
        self.image_proj = nn.Sequential(nn.LayerNorm(config.vision.dim), nn.Linear(config.vision.dim, config.embed_dim))
        self.decoder = Decoder(config.decoder, context_dim=config.vision.dim)
        # CLIP's learnable temperature, log(1/0.07); only the training loss reads it
        self.logit_scale = nn.Parameter(torch.tensor(2.6593))

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels (B, 3, H, W) → normalised embedding (B, embed_dim) and image tokens (B, 1 + N, d)."""
        cls, patches = self.vision(pixels)
        embedding = F.normalize(self.image_proj(cls).float(), dim=-1)
        # Optionally the decoder reads the patch tokens with their fixed 2-D positions added back, as DETR
        # adds positional encodings to the encoder's memory, so that an object's column is a linear
        # read-out of what cross-attention fetches. Off in the shipped model (it did not make the position
        # family learnable within 1,500 steps).
        if self.config.context_positions:
            patches = patches + self.vision.pos.to(patches.dtype)
        return embedding, torch.cat([cls[:, None], patches], dim=1)


class BuiltinModel:
    """The built-in model behind the `MultimodalModel` protocol."""

    tasks: frozenset[Task] = ALL_TASKS

    def __init__(
        self,
        module: MultimodalTransformer,
        tokenizer: Tokenizer,
        text_tower: TextTower,
        name: str = "mmserve-builtin",
    ) -> None:
        self.module = module.eval()
        self.tokenizer = tokenizer
        self.text_tower = text_tower.eval()
        self.name = name
        self.config = module.config
        parameter = next(module.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.dim: int | None = module.config.embed_dim
        self.max_text_tokens = text_tower.max_tokens
        self._ids = {token: tokenizer.token_to_id(token) for token in (PAD, BOS, EOS, SEP)}

    # -- images and prompts --------------------------------------------------------------------
    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = to_pixels(images, self.config.vision.image_size)  # (B, 3, H, W) float32
        return pixels.to(self.device, self.dtype)

    def _question_prompt(self, question: str) -> list[int]:
        ids = self.tokenizer.encode(question, add_special_tokens=False).ids[: self.config.max_question_tokens]
        return [self._ids[BOS], *ids, self._ids[SEP]]

    def _generate(
        self, images: Sequence[Image.Image], prompts: list[list[int]], max_new_tokens: Sequence[int]
    ) -> list[list[int]]:
        _, tokens = self.module.encode_image(self._pixels(images))
        return greedy_decode(self.module.decoder, tokens, prompts, max_new_tokens, self._ids[EOS], self._ids[PAD])

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids).strip()

    # -- the protocol ------------------------------------------------------------------------------
    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image], max_new_tokens: int | Sequence[int] = 32) -> list[str]:
        """One caption per image (objects left to right)."""
        if not images:
            return []
        limits = [max_new_tokens] * len(images) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        return [self._decode(ids) for ids in self._generate(images, [[self._ids[BOS]] for _ in images], limits)]

    @torch.inference_mode()
    def answer(self, images: Sequence[Image.Image], questions: Sequence[str], max_new_tokens: int = 16) -> list[str]:
        """One answer per (image, question); questions are truncated to `max_question_tokens` tokens."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if not images:
            return []
        prompts = [self._question_prompt(q) for q in questions]
        generated = self._generate(images, prompts, [max_new_tokens] * len(images))
        return [self._decode(after_scratchpad(ids, self._ids[SEP])) for ids in generated]

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, 384) MiniLM embeddings, normalised; texts past 256 tokens are truncated."""
        return self.text_tower(list(texts))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """The text tower's tokens per text (for usage reports; any thread)."""
        return self.text_tower.count_tokens(texts)

    @torch.inference_mode()
    def embed_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, 384) image embeddings in MiniLM's space, normalised."""
        if not images:
            return torch.zeros(0, self.config.embed_dim)
        embedding, _ = self.module.encode_image(self._pixels(images))
        return embedding.float().cpu()
