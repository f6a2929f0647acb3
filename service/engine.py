"""The engine: the loaded models, one per task, their preprocessing and their batched synchronous calls.

Each task maps to a model object (`MMSERVE_CAPTION_MODEL`, `MMSERVE_VQA_MODEL`, `MMSERVE_EMBED_MODEL`,
`MMSERVE_TRANSCRIBE_MODEL`, each defaulting to `MMSERVE_MODEL`); a model named by several tasks is loaded
once. A task whose model cannot do it is not served (501). A model that decodes step by step (the
built-in one) has its captions, answers and transcripts batched continuously (`stepwise`); other models
run as whole batches (`run`). The engine knows no HTTP and no asyncio. `prepare_*` run in the decode
pool (model-sized tensors are what cross the queue); `run` and the generation states are the inference
thread's alone, under `torch.inference_mode()`. Text to image has a model of its own, an `ImageGenerator`
(`MMSERVE_GENERATE_MODEL`; by default the built-in generator when its weights are installed, else the task
is not served).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from model import (
    UNDERSTANDING_TASKS,
    AudioSpec,
    MultimodalModel,
    Task,
    load_image_generator,
    load_model,
    no_speech_in,
    resolve_device,
    transcript_token_limit,
)
from model.api import (
    ImageGenerator,
    ImageSpec,
    KnowsQuestions,
    RescoresHeard,
    ScoredTranscriber,
    StepwiseGenerator,
    UnsupportedImageSize,
)
from service.errors import NotImplementedTask, UnsupportedSize
from service.settings import Settings

logger = logging.getLogger(__name__)

STEPWISE_TASKS: tuple[Task, ...] = ("caption", "vqa", "transcribe")  # what a stepwise model decodes by steps

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
    no_speech_prob: float | None = None  # the voice-activity detector's (`model.vad`), over the audio's frames
    question: bool = False  # a spoken question: its transcript rescored among its neighbours (`RescoresHeard`)


@dataclass(frozen=True)
class Generated:
    """A finished caption or answer."""

    text: str
    # "stop", "length" or "repetition" (a transcript's loop cut short); continuous batching knows, whole batches do not
    finish_reason: str | None = None
    tokens: int = 0  # generated tokens (0 when not counted)
    avg_logprob: float | None = None  # the mean log-probability of its tokens (continuous batching; else None)


@dataclass(frozen=True)
class GeneratedImage:
    """A finished text-to-image request's image, and what made it (the seed reproduces it)."""

    image: Image.Image
    seed: int
    steps: int
    guidance_scale: float

    @staticmethod
    def of(spec: ImageSpec, image: Image.Image) -> GeneratedImage:
        return GeneratedImage(image, spec.seed, spec.steps, spec.guidance_scale)


MAX_SEED = 2**31 - 1  # a seed drawn for a request that names none


class Engine:
    """Models by task, and one batched call per task."""

    def __init__(
        self,
        models: Mapping[Task, MultimodalModel],
        vqa_max_new_tokens: int = 16,
        continuous: bool = True,
        generator: ImageGenerator | None = None,
    ) -> None:
        self._models = dict(models)
        self._vqa_max_new_tokens = vqa_max_new_tokens
        self._continuous = continuous
        self._generator = generator

    @classmethod
    def load(cls, settings: Settings) -> Engine:
        """Load each distinct model named by the settings onto the device."""
        device = resolve_device(settings.device)
        dtype = _DTYPES[settings.dtype]
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        loaded: dict[str, MultimodalModel] = {}
        models: dict[Task, MultimodalModel] = {}
        for task in sorted(UNDERSTANDING_TASKS):
            spec = settings.model_for(task)
            if spec not in loaded:
                started = time.monotonic()
                loaded[spec] = load_model(
                    spec,
                    device,
                    dtype,
                    fixed_shape_step=settings.fixed_shape_step,
                    cuda_graphs=settings.cuda_graphs,
                    blank_min_prob=settings.transcript_blank_min_prob,
                )
                logger.info(
                    "loaded %s (%s) on %s as %s in %.1f s",
                    loaded[spec].name,
                    spec,
                    device,
                    loaded[spec].dtype,
                    time.monotonic() - started,
                )
            models[task] = loaded[spec]
        generator = _load_generator(settings, device, dtype, loaded.values())
        return cls(models, settings.vqa_max_new_tokens, settings.scheduler == "continuous", generator)

    # What the service reports.
    @property
    def tasks(self) -> frozenset[Task]:
        """The tasks some loaded model can do."""
        tasks = frozenset(task for task, model in self._models.items() if task in model.tasks)
        return tasks | {"text_to_image"} if self._generator is not None else tasks

    def model_name(self, task: Task) -> str:
        if task == "text_to_image":
            return self._generator.name if self._generator is not None else ""
        return self._models[task].name

    def describe(self) -> dict[str, Any]:
        """Model names, device and dtype, for /health."""
        distinct: list[MultimodalModel | ImageGenerator] = list({id(m): m for m in self._models.values()}.values())
        if self._generator is not None:
            distinct.append(self._generator)
        return {
            "model": ",".join(m.name for m in distinct),
            "models": {task: self.model_name(task) for task in sorted(self.tasks)},
            "device": str(distinct[0].device),
            "dtype": str(distinct[0].dtype).removeprefix("torch."),
        }

    def check_supported(self, task: Task) -> None:
        """Raise `NotImplementedTask` (501) when the model for `task` cannot do it."""
        if task == "text_to_image" and self._generator is None:
            raise NotImplementedTask(
                "no text-to-image model is loaded: install the built-in generator's weights "
                "(model/weights/generator/) or name a Stable Diffusion folder with MMSERVE_GENERATE_MODEL"
            )
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

    def denoiser(self) -> ImageGenerator | None:
        """The text-to-image model, when its images are denoised step by step (continuous batching)."""
        return self._generator if self._continuous else None

    def image_sizes(self) -> tuple[tuple[int, int], ...]:
        """The (width, height) pairs the text-to-image model makes, its default first (none: no model)."""
        return self._generator.sizes if self._generator is not None else ()

    # Preprocessing (the decode pool; thread-safe).
    def prepare_image_generation(
        self,
        prompt: str,
        seed: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        size: tuple[int, int] | None = None,
        preview_every: int = 0,
    ) -> ImageSpec:
        """One image to generate (the model's defaults where None; a random seed when none is named);
        `UnsupportedSize` (400, listing the sizes the model makes) for a size it cannot make."""
        if self._generator is None:
            self.check_supported("text_to_image")
        assert self._generator is not None
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
        try:
            return self._generator.image_spec(prompt, seed, steps, guidance_scale, size, preview_every)
        except UnsupportedImageSize as e:
            raise UnsupportedSize(str(e), param="size") from e

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

    def known_question(self, task: Task, question: str) -> str:
        """The question as the model serving `task` reads it: a closed-grammar model's (the trained built-in
        one's) trained phrasing, or its `UnknownQuestion`; for any other model, the question as asked."""
        model: Any = self._models[task]
        return model.known_question(question) if self.knows_questions(task) else question

    def knows_questions(self, task: Task) -> bool:
        """Whether the model serving `task` answers only the questions of a closed grammar (`KnowsQuestions`)."""
        model: Any = self._models.get(task)
        return isinstance(model, KnowsQuestions) and model.closed_questions

    def audio_spec(self, task: Task) -> AudioSpec:
        """What the model serving `task` takes as audio (501 when it takes none)."""
        spec = self._models[task].audio
        if spec is None:
            raise NotImplementedTask(f"the model serving {task} ({self._models[task].name}) takes no audio")
        return spec

    def prepare_transcription(
        self,
        task: Task,
        audio: np.ndarray,
        language: str | None,
        no_speech_prob: float | None = None,
        question: bool = False,
    ) -> TranscriptionInput:
        """Mono samples at the model's rate → its input (the decode pool): its features, a stepwise model's
        sequence (at most `transcript_token_limit` of its duration: a loop stops there), and the detector's
        no-speech probability (measured here unless the chunker measured it). `question`: the audio is a spoken
        question (`TranscriptionInput.question`)."""
        stepwise = self.stepwise(task)
        rate = self.audio_spec(task).sampling_rate
        limit = transcript_token_limit(audio.size / rate)
        spec = stepwise.sequence(task, None, limit) if stepwise is not None else None
        if no_speech_prob is None:
            no_speech_prob = no_speech_in(audio, rate)
        return TranscriptionInput(self._models[task].prepare_audio(audio), language, spec, no_speech_prob, question)

    def input_size(self, task: Task) -> tuple[int, int] | None:
        """The (width, height) the model serving `task` sizes images to: decoding reduces larger ones towards it."""
        size: tuple[int, int] | None = getattr(self._models[task], "input_size", None)
        return size

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
    def run(self, task: str, payloads: Sequence[Any], progress: Callable[[], None] | None = None) -> list[Any]:
        """Run one batch of `task`; exactly one output per payload (captions and answers as `Generated`).
        `progress` is called after each decoding step of a generation (for the watchdog)."""
        with torch.inference_mode():
            match task:
                case "caption":
                    texts = self._models["caption"].caption(
                        [p.image for p in payloads], [p.max_new_tokens for p in payloads], progress
                    )
                    outputs: list[Any] = [Generated(text) for text in texts]
                case "vqa":
                    limit = max(p.max_new_tokens for p in payloads)  # one per batch: the largest asked
                    images, questions = [p.image for p in payloads], [p.question for p in payloads]
                    texts = self._models["vqa"].answer(images, questions, limit, progress)
                    outputs = [Generated(text) for text in texts]
                case "embed_text":
                    outputs = list(self._models["embed_text"].embed_text(list(payloads)).float().numpy())
                case "embed_image":
                    outputs = list(self._models["embed_image"].embed_image(list(payloads)).float().numpy())
                case "transcribe":  # with its confidence when the model reports it
                    transcriber = self._models["transcribe"]
                    audios, languages = [p.audio for p in payloads], [p.language for p in payloads]
                    if isinstance(transcriber, ScoredTranscriber):
                        updates = transcriber.transcribe_scored(audios, languages, progress)
                        outputs = [Generated(u.text or "", u.finish_reason, u.tokens, u.avg_logprob) for u in updates]
                    else:
                        outputs = [Generated(text) for text in transcriber.transcribe(audios, languages, progress)]
                    outputs = _rescored(transcriber, payloads, outputs)
                case "text_to_image":  # whole-request batching: every image run to its end together
                    assert self._generator is not None
                    images = self._generator.generate(list(payloads))
                    outputs = [GeneratedImage.of(spec, image) for spec, image in zip(payloads, images, strict=True)]
                case _:
                    raise ValueError(f"unknown task {task!r}")
        if len(outputs) != len(payloads):
            raise RuntimeError(f"{task}: the model returned {len(outputs)} outputs for {len(payloads)} inputs")
        return outputs

    def check_device(self) -> None:
        """A tiny computation on each model's device, read back: raises what a broken device raises."""
        devices = {str(model.device) for model in self._models.values()}
        if self._generator is not None:
            devices.add(str(self._generator.device))
        for device in devices:
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
                batch = [self.prepare_generation(task, image, "what colour is the circle?")] * 2
            elif task == "embed_text":
                batch = [self.prepare_text(task, text) for text in ("a warm-up sentence", "another")]
            elif task == "transcribe":
                rate = self.audio_spec(task).sampling_rate
                tone = (0.1 * np.sin(np.arange(rate) * 2 * np.pi * 440 / rate)).astype(np.float32)
                batch = [self.prepare_transcription(task, tone, None)] * 2
            elif task == "text_to_image":  # two steps, one image guided and one not
                batch = [self.prepare_image_generation("a warm-up", 0, 2, g) for g in (1.0, 3.0)]
            else:
                batch = [self.prepare_image(task, image)] * 2
            self.run(task, batch)
            logger.info("warmed up %s in %.2f s", task, time.monotonic() - started)


def _rescored(model: Any, payloads: Sequence[TranscriptionInput], outputs: list[Any]) -> list[Any]:
    """Whole-batch transcripts, the spoken questions' rescored among their neighbours (`RescoresHeard`)."""
    asked = [i for i, p in enumerate(payloads) if p.question and outputs[i].text]
    if not asked or not isinstance(model, RescoresHeard):
        return outputs
    encodings = model.encode_audios([payloads[i].audio for i in asked])
    texts = model.rescore_heard(encodings, [outputs[i].text for i in asked])
    for i, text in zip(asked, texts, strict=True):
        outputs[i] = replace(outputs[i], text=text)
    return outputs


def _load_generator(
    settings: Settings, device: torch.device, dtype: torch.dtype | None, loaded: Iterable[MultimodalModel]
) -> ImageGenerator | None:
    """The text-to-image model: `MMSERVE_GENERATE_MODEL`, else the built-in generator if installed, else None."""
    from model.builtin_generator import is_builtin_generator
    from model.text_to_image import GENERATOR_DIR

    spec = settings.generate_model
    if spec == "none":
        return None
    if spec is None and not (GENERATOR_DIR / "model_index.json").is_file():
        logger.info("no text-to-image model: the built-in generator's weights are not installed")
        return None
    path = spec or "builtin"
    options: dict[str, Any] = {}
    if path == "builtin" or is_builtin_generator(path):  # share the MiniLM tower a built-in model has loaded
        towers = [getattr(model, "text_tower", None) for model in loaded]
        options["text_tower"] = next((tower for tower in towers if tower is not None), None)
    started = time.monotonic()
    generator = load_image_generator(path, device, dtype, **options)
    logger.info("loaded %s (%s) for text_to_image in %.1f s", generator.name, path, time.monotonic() - started)
    return generator
