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
from transformers import (
    GenerationMixin,
    LogitsProcessor,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)

from model.api import AudioSpec, Progress, Task, UnsupportedTask

# image processor attributes that make what a model sees depend on the image's full resolution (tiling by
# LLaVA-NeXT/OneVision grid pinpoints, Idefics splitting, Gemma 3 pan and scan, Qwen-VL pixel budgets)
DYNAMIC_RESOLUTION = ("image_grid_pinpoints", "do_image_splitting", "do_pan_and_scan", "max_pixels", "min_pixels")


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
        self.input_size: tuple[int, int] | None = None  # set by the adapters that see images
        self._pixel_processor: Any = None  # the image processor `prepare_image` runs, if any

    def _prepare_pixels_with(self, image_processor: Any) -> None:
        """Preprocess images with `image_processor` in `prepare_image` (the decode pool), not in the batched calls."""
        self._pixel_processor = image_processor
        self.input_size = processor_input_size(image_processor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, tasks={sorted(self.tasks)}, device={self.device})"

    def _refuse(self, task: Task) -> UnsupportedTask:
        return UnsupportedTask(f"model {self.name!r} cannot do {task!r}; it can do {sorted(self.tasks)}")

    def prepare_image(self, image: Image.Image) -> Any:
        """The model's pixels (3, H, W) when the adapter's image processor runs alone; else the image as it is
        (its processor then runs inside the batched call, with the text)."""
        if self._pixel_processor is None:
            return image
        pixels: torch.Tensor = self._pixel_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        return pixels

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


class ChosenLogprobs(LogitsProcessor):
    """Records, at every greedy step, each row's chosen token and its log-probability under the final (processed)
    scores, without changing them: one log-softmax and max per step, kept on the device until `averages`.
    Pass it as `generate(..., logits_processor=LogitsProcessorList([it]))`: transformers runs a caller's
    processors after its own, so it sees the scores the greedy choice is made on."""

    def __init__(self) -> None:
        self.logprobs: list[torch.Tensor] = []  # per step: (B,)
        self.ids: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        best = scores.float().log_softmax(-1).max(-1)
        self.logprobs.append(best.values)
        self.ids.append(best.indices)
        return scores

    def averages(self, eos_ids: Iterable[int]) -> list[float | None]:
        """Each row's mean log-probability over its tokens up to its first end token (included)."""
        if not self.logprobs:
            return []
        logprobs, ids = torch.stack(self.logprobs).tolist(), torch.stack(self.ids).tolist()  # (S, B)
        stop, rows = set(eos_ids), []
        for b in range(len(logprobs[0])):
            total, count = 0.0, 0
            for step_logprobs, step_ids in zip(logprobs, ids, strict=True):
                total, count = total + step_logprobs[b], count + 1
                if step_ids[b] in stop:
                    break
            rows.append(total / count if count else None)
        return rows


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


def processor_input_size(image_processor: Any) -> tuple[int, int] | None:
    """The (width, height) an image processor resizes to, or a square of the shorter side it resizes to
    (keeping the aspect); None when it says neither (e.g. sizes given in pixels per image, or no resizing)."""
    size = getattr(image_processor, "size", None)
    if size is None or not getattr(image_processor, "do_resize", True):
        return None
    if any(getattr(image_processor, marker, None) for marker in DYNAMIC_RESOLUTION):
        return None  # it tiles or sizes by the image's own resolution: a reduced image would change its input
    keys = ("height", "width", "shortest_edge", "longest_edge")
    sides = {k: size.get(k) if isinstance(size, Mapping) else getattr(size, k, None) for k in keys}
    if sides["height"] and sides["width"]:
        return int(sides["width"]), int(sides["height"])
    if sides["shortest_edge"] and not sides["longest_edge"]:
        return int(sides["shortest_edge"]), int(sides["shortest_edge"])
    return None


def pixel_batch(image_processor: Any, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
    """(B, 3, H, W) float32: prepared pixels as they are, raw images through `image_processor`."""
    raw = [image for image in images if not isinstance(image, torch.Tensor)]
    processed = iter(image_processor(images=raw, return_tensors="pt")["pixel_values"] if raw else [])
    return torch.stack([image if isinstance(image, torch.Tensor) else next(processed) for image in images])


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
