"""What every Hugging Face adapter shares: the contract's attributes, refusals, and output helpers.

An adapter overrides only the tasks its family can do; the rest raise `UnsupportedTask`, and `tasks`
lists exactly what was overridden. The helpers here make batched generation equal single calls:
one `max_new_tokens` per row, each row cut at its own limit and at its first end-of-sequence token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import GenerationMixin, PreTrainedModel, StoppingCriteria, StoppingCriteriaList

from model.api import AudioSpec, Progress, Task, UnsupportedTask


class HFAdapter:
    """Base for the adapters: holds the contract's attributes and refuses every task by default."""

    def __init__(
        self,
        name: str,
        device: torch.device,
        dtype: torch.dtype,
        tasks: frozenset[Task],
        max_text_tokens: int,
        dim: int | None = None,
    ) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self.tasks = tasks
        self.max_text_tokens = max_text_tokens
        self.dim = dim
        self.audio: AudioSpec | None = None  # set by the adapters that transcribe

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, tasks={sorted(self.tasks)}, device={self.device})"

    def _refuse(self, task: Task) -> UnsupportedTask:
        return UnsupportedTask(f"model {self.name!r} cannot do {task!r}; it can do {sorted(self.tasks)}")

    def prepare_image(self, image: Image.Image) -> Image.Image:
        """Adapters preprocess with their processors inside the batched calls; the image crosses as it is."""
        return image

    def prepare_text(self, text: str) -> str:
        return text

    def caption(
        self,
        images: Sequence[Image.Image],
        max_new_tokens: int | Sequence[int] = 32,
        progress: Progress | None = None,
    ) -> list[str]:
        """One caption per image."""
        raise self._refuse("caption")

    def answer(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        max_new_tokens: int = 16,
        progress: Progress | None = None,
    ) -> list[str]:
        """One answer per (image, question) pair."""
        raise self._refuse("vqa")

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, dim] float32 CPU tensor, L2-normalised."""
        raise self._refuse("embed_text")

    def embed_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[n, dim] float32 CPU tensor, L2-normalised."""
        raise self._refuse("embed_image")

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as `embed_text` sees them (any thread); adapters that embed text override it."""
        raise self._refuse("embed_text")

    def prepare_audio(self, audio: np.ndarray) -> Any:
        raise self._refuse("transcribe")

    def transcribe(
        self,
        audios: Sequence[np.ndarray | Any],
        language: str | Sequence[str | None] | None = None,
        progress: Progress | None = None,
    ) -> list[str]:
        """One transcript per audio."""
        raise self._refuse("transcribe")


class StepReporter(StoppingCriteria):
    """A stopping criterion that never stops: it calls `progress` after every decoding step of `generate`."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        self.progress()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def generate(model: PreTrainedModel, progress: Progress | None = None, **kwargs: Any) -> torch.Tensor:
    """`model.generate(**kwargs)`'s token ids (transformers types `generate` only on its generating classes);
    `progress` is called after every decoding step."""
    if not isinstance(model, GenerationMixin):
        raise TypeError(f"{type(model).__name__} does not generate")
    if progress is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([StepReporter(progress)])
    out = model.generate(**kwargs)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"generate gave a {type(out).__name__}, not token ids")
    return out


def cut_rows(new_tokens: torch.Tensor, limits: Sequence[int], eos_ids: Iterable[int]) -> list[list[int]]:
    """Each row's generated tokens up to its own limit, stopping before its first end-of-sequence token.

    Greedy decoding is prefix-consistent, so generating a batch with the largest limit and cutting each
    row at its own gives exactly what one call per row with that row's limit would.
    """
    stop = set(eos_ids)
    rows: list[list[int]] = []
    for row, limit in zip(new_tokens.tolist(), limits, strict=True):
        kept: list[int] = []
        for token in row[:limit]:
            if token in stop:
                break
            kept.append(token)
        rows.append(kept)
    return rows


def eos_token_ids(eos: int | Sequence[int] | None) -> list[int]:
    """A generation config's eos_token_id (None, an int or a list) as a list."""
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def normalized_cpu(features: torch.Tensor) -> torch.Tensor:
    """[n, d] float32 on the CPU, each row L2-normalised (normalising in float32, not bf16)."""
    return F.normalize(features.float(), p=2, dim=-1).cpu()


def empty_embedding(dim: int | None) -> torch.Tensor:
    """The [0, dim] result of embedding an empty batch."""
    return torch.empty(0, dim or 0, dtype=torch.float32)


def to_device(inputs: Mapping[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Processor outputs on `device`: floating tensors (pixels) in the model's dtype, ids left as ints."""
    moved: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        moved[key] = value
    return moved
