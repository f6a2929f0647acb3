"""The engine: the loaded models, one per task, their preprocessing and their batched synchronous calls.

Each task maps to a model object (`MMSERVE_CAPTION_MODEL`, `MMSERVE_VQA_MODEL`, `MMSERVE_EMBED_MODEL`,
`MMSERVE_TRANSCRIBE_MODEL`, each defaulting to `MMSERVE_MODEL`); a model named by several tasks is loaded
once. A task whose model cannot do it is not served (501). A model that decodes step by step (the
built-in one) has its captions, answers and transcripts batched continuously (`stepwise`); other models
run as whole batches (`run`). The engine knows no HTTP and no asyncio. `prepare_*` run in the decode
pool (model-sized tensors are what cross the queue); `run` and the generation states are the inference
thread's alone, under `torch.inference_mode()`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from model import ALL_TASKS, AudioSpec, MultimodalModel, Task, load_model, resolve_device
from model.api import StepwiseGenerator
from service.errors import NotImplementedTask
from service.settings import Settings

logger = logging.getLogger(__name__)

STEPWISE_TASKS: tuple[Task, ...] = ("caption", "vqa", "transcribe")  # what a stepwise model decodes by steps
TRANSCRIPT_MAX_TOKENS = 1 << 16  # a transcript runs to its end, or as far as the model's decoder has room

_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class GenerationInput:
    """A caption or an answer to generate, prepared: the model's image, and its sequence spec if stepwise."""

    image: Any  # what the model's prepare_image made of the decoded image
    question: str | None
    max_new_tokens: int
    spec: Any = None  # a stepwise model's sequence (tokenised prompt, limit); None for whole-batch models

    @property
    def image_key(self) -> bytes | None:
        """A digest of the pixels the model sees, for the encoder cache (None when the model gives none)."""
        return getattr(self.image, "key", None)


@dataclass(frozen=True)
class TranscriptionInput:
    """Audio to transcribe, prepared (e.g. log-mel features), and its language (None: the model decides)."""

    audio: Any
    language: str | None
    spec: Any = None  # a stepwise model's sequence (its prompt); None for whole-batch models


@dataclass(frozen=True)
class Generated:
    """A finished caption or answer."""

    text: str
    finish_reason: str | None = None  # "stop" or "length" (continuous batching knows; whole batches do not)
    tokens: int = 0  # generated tokens (0 when not counted)


class Engine:
    """Models by task, and one batched call per task."""

    def __init__(
        self, models: Mapping[Task, MultimodalModel], vqa_max_new_tokens: int = 16, continuous: bool = True
    ) -> None:
        self._models = dict(models)
        self._vqa_max_new_tokens = vqa_max_new_tokens
        self._continuous = continuous

    @classmethod
    def load(cls, settings: Settings) -> Engine:
        """Load each distinct model named by the settings onto the device."""
        device = resolve_device(settings.device)
        dtype = _DTYPES[settings.dtype]
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        loaded: dict[str, MultimodalModel] = {}
        models: dict[Task, MultimodalModel] = {}
        for task in sorted(ALL_TASKS):
            spec = settings.model_for(task)
            if spec not in loaded:
                started = time.monotonic()
                loaded[spec] = load_model(spec, device, dtype)
                logger.info(
                    "loaded %s (%s) on %s as %s in %.1f s",
                    loaded[spec].name,
                    spec,
                    device,
                    loaded[spec].dtype,
                    time.monotonic() - started,
                )
            models[task] = loaded[spec]
        return cls(models, settings.vqa_max_new_tokens, continuous=settings.scheduler == "continuous")

    # What the service reports.
    @property
    def tasks(self) -> frozenset[Task]:
        """The tasks some loaded model can do."""
        return frozenset(task for task, model in self._models.items() if task in model.tasks)

    def model_name(self, task: Task) -> str:
        return self._models[task].name

    def describe(self) -> dict[str, Any]:
        """Model names, device and dtype, for /health."""
        distinct = list({id(m): m for m in self._models.values()}.values())
        return {
            "model": ",".join(m.name for m in distinct),
            "models": {task: self._models[task].name for task in sorted(self.tasks)},
            "device": str(distinct[0].device),
            "dtype": str(distinct[0].dtype).removeprefix("torch."),
        }

    def check_supported(self, task: Task) -> None:
        """Raise `NotImplementedTask` (501) when the model for `task` cannot do it."""
        if task not in self.tasks:
            name = self._models[task].name if task in self._models else "none"
            raise NotImplementedTask(
                f"the model serving {task} ({name}) does not support it; "
                "choose another with MMSERVE_CAPTION_MODEL, MMSERVE_VQA_MODEL, MMSERVE_EMBED_MODEL or "
                "MMSERVE_TRANSCRIBE_MODEL"
            )

    def stepwise(self, task: Task) -> StepwiseGenerator | None:
        """The model generating `task` step by step (continuous batching), or None: whole batches."""
        model: Any = self._models.get(task)
        if self._continuous and task in STEPWISE_TASKS and task in self.tasks and isinstance(model, StepwiseGenerator):
            return model
        return None

    # Preprocessing (the decode pool; thread-safe).
    def prepare_generation(
        self, task: Task, image: Image.Image, question: str | None = None, max_new_tokens: int | None = None
    ) -> GenerationInput:
        """A caption (`max_new_tokens`) or an answer (`question`; at most `vqa_max_new_tokens`) to generate."""
        model = self._models[task]
        if task == "vqa":
            limit = min(self._vqa_max_new_tokens, max_new_tokens or self._vqa_max_new_tokens)
        else:
            limit = int(max_new_tokens or 0)
        stepwise = self.stepwise(task)
        spec = stepwise.sequence(task, question, limit) if stepwise is not None else None
        return GenerationInput(model.prepare_image(image), question, limit, spec)

    def audio_spec(self, task: Task) -> AudioSpec:
        """What the model serving `task` takes as audio (501 when it takes none)."""
        spec = self._models[task].audio
        if spec is None:
            raise NotImplementedTask(f"the model serving {task} ({self._models[task].name}) takes no audio")
        return spec

    def prepare_transcription(self, task: Task, audio: np.ndarray, language: str | None) -> TranscriptionInput:
        """Mono samples at the model's rate → its input (the decode pool)."""
        stepwise = self.stepwise(task)
        spec = stepwise.sequence(task, None, TRANSCRIPT_MAX_TOKENS) if stepwise is not None else None
        return TranscriptionInput(self._models[task].prepare_audio(audio), language, spec)

    def prepare_image(self, task: Task, image: Image.Image) -> Any:
        return self._models[task].prepare_image(image)

    def prepare_text(self, task: Task, text: str) -> Any:
        return self._models[task].prepare_text(text)

    def prompt_tokens(self, task: Task, question: str | None) -> int:
        """The prompt's tokens for a caption or an answer (usage reports); 0 when the model does not say."""
        model: Any = self._models[task]
        if isinstance(model, StepwiseGenerator):
            return len(model.sequence(task, question, 1).prompt)
        return 0

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text for the embedding model (usage reports); safe outside the inference thread."""
        return self._models["embed_text"].count_tokens(texts)

    # The batched calls (inference thread only).
    def run(self, task: str, payloads: Sequence[Any]) -> list[Any]:
        """Run one batch of `task`; exactly one output per payload (captions and answers as `Generated`)."""
        with torch.inference_mode():
            match task:
                case "caption":
                    texts = self._models["caption"].caption(
                        [p.image for p in payloads], [p.max_new_tokens for p in payloads]
                    )
                    outputs: list[Any] = [Generated(text) for text in texts]
                case "vqa":
                    limit = max(p.max_new_tokens for p in payloads)  # one per batch: the largest asked
                    images, questions = [p.image for p in payloads], [p.question for p in payloads]
                    texts = self._models["vqa"].answer(images, questions, limit)
                    outputs = [Generated(text) for text in texts]
                case "embed_text":
                    outputs = list(self._models["embed_text"].embed_text(list(payloads)).float().numpy())
                case "embed_image":
                    outputs = list(self._models["embed_image"].embed_image(list(payloads)).float().numpy())
                case "transcribe":
                    texts = self._models["transcribe"].transcribe(
                        [p.audio for p in payloads], [p.language for p in payloads]
                    )
                    outputs = [Generated(text) for text in texts]
                case _:
                    raise ValueError(f"unknown task {task!r}")
        if len(outputs) != len(payloads):
            raise RuntimeError(f"{task}: the model returned {len(outputs)} outputs for {len(payloads)} inputs")
        return outputs

    def check_device(self) -> None:
        """A tiny computation on each model's device, read back: raises what a broken device raises."""
        for device in {str(model.device) for model in self._models.values()}:
            x = torch.arange(4, dtype=torch.float32, device=device)
            if float((x * 2).sum()) != 12.0:
                raise RuntimeError(f"the device check on {device} computed a wrong result")

    def warm_up(self) -> None:
        """One small batch per served task, so the first request pays no lazy initialisation."""
        image = Image.new("RGB", (64, 48), (120, 60, 200))
        for task in sorted(self.tasks):
            started = time.monotonic()
            batch: list[Any]
            if task == "caption":
                batch = [self.prepare_generation(task, image, max_new_tokens=n) for n in (2, 3)]
            elif task == "vqa":
                batch = [self.prepare_generation(task, image, "what colour is it?")] * 2
            elif task == "embed_text":
                batch = [self.prepare_text(task, text) for text in ("a warm-up sentence", "another")]
            elif task == "transcribe":
                rate = self.audio_spec(task).sampling_rate
                tone = (0.1 * np.sin(np.arange(rate) * 2 * np.pi * 440 / rate)).astype(np.float32)
                batch = [self.prepare_transcription(task, tone, None)] * 2
            else:
                batch = [self.prepare_image(task, image)] * 2
            self.run(task, batch)
            logger.info("warmed up %s in %.2f s", task, time.monotonic() - started)
