"""The contract between the models and the service.

Every model the service can serve (the built-in one, and the Hugging Face adapters) is an object with
this shape. The service imports nothing else from `model/`: `load_model` and this protocol.

Conventions, for every implementation:
- Every method is batched and synchronous; a batch of N returns exactly what N single calls return.
- Images are RGB `PIL.Image.Image`s of any size (implementations resize as they need).
- Embeddings come back as float32 CPU tensors of shape [n, dim], L2-normalised.
- An empty list gives an empty result (an empty list, or a [0, dim] tensor).
- A task the model cannot do is absent from `tasks`; calling it raises `UnsupportedTask`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import torch
from PIL import Image

Task = Literal["caption", "vqa", "embed_text", "embed_image"]
ALL_TASKS: frozenset[Task] = frozenset(("caption", "vqa", "embed_text", "embed_image"))


class UnsupportedTask(Exception):
    """The model was asked for a task it cannot do (e.g. captions from a text-only embedder)."""


class ModelLoadError(Exception):
    """A model could not be found or loaded; the message names it and says why (raised at start-up)."""


@runtime_checkable
class MultimodalModel(Protocol):
    name: str  # what /health and the responses report as "model"
    device: torch.device
    dtype: torch.dtype
    dim: int | None  # embedding size; None when the model embeds nothing
    tasks: frozenset[Task]  # what this model can do
    max_text_tokens: int  # texts and questions are truncated to this many tokens (documented, never an error)

    def caption(self, images: Sequence[Image.Image], max_new_tokens: int | Sequence[int] = 32) -> list[str]:
        """One caption per image; `max_new_tokens` is one limit for all or one per image."""
        ...

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str], max_new_tokens: int = 16) -> list[str]:
        """One answer per (image, question) pair."""
        ...

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, dim] float32 CPU tensor, L2-normalised."""
        ...

    def embed_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[n, dim] float32 CPU tensor, L2-normalised, in the same space as embed_text."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """The tokens each text is embedded as (after truncation), for usage reports. Unlike the other
        methods it may be called from any thread, next to the inference thread's calls."""
        ...
