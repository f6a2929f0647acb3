"""The contract between the models and the service.

Every model the service can serve (the built-in one, and the Hugging Face adapters) is an object with
this shape. The service imports nothing else from `model/`: `load_model` and this protocol.

Conventions, for every implementation:
- Every method is batched and synchronous; a batch of N returns exactly what N single calls return.
- Images are RGB `PIL.Image.Image`s of any size (implementations resize as they need).
- Audio is a float32 mono numpy array in [-1, 1] at the model's `audio.sampling_rate`, at most
  `audio.max_seconds` long (the service decodes, downmixes and resamples it); `audio` is None when the
  model hears nothing.
- Embeddings come back as float32 CPU tensors of shape [n, dim], L2-normalised.
- An empty list gives an empty result (an empty list, or a [0, dim] tensor).
- A task the model cannot do is absent from `tasks`; calling it raises `UnsupportedTask`.
- `progress`, where a batched call takes it, is called (on the calling thread) after every decoding step of
  a generation that runs as one whole batch, so a watchdog can time steps rather than whole batches.
- `prepare_image` / `prepare_text` / `prepare_audio` do the per-item preprocessing (resize and normalise,
  tokenise, log-mel features) that can run off the device thread; the batched calls take either raw items
  or prepared ones. A prepared image is model-sized, whatever the size of the image it came from.

A model that can decode step by step (the built-in one) also implements `StepwiseGenerator`: the service
then batches its captions, answers and transcripts continuously (sequences join and leave between decoding
steps, in one state: rows with their own context, an image's tokens or an audio's).

Text-to-image is served by an `ImageGenerator` (`model.image_generator`), a model of its own: each image is
one row of a `DenoisingState`, advanced one denoising step at a time (`ImageSpec` in, `ImageUpdate` out).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

Progress = Callable[[], None]  # called after each decoding step of a whole-batch generation
Task = Literal["caption", "vqa", "embed_text", "embed_image", "transcribe", "text_to_image"]
# What a `MultimodalModel` may do; text-to-image is an `ImageGenerator`'s (a model of its own).
UNDERSTANDING_TASKS: frozenset[Task] = frozenset(("caption", "vqa", "embed_text", "embed_image", "transcribe"))
ALL_TASKS: frozenset[Task] = UNDERSTANDING_TASKS | {"text_to_image"}


class UnsupportedTask(Exception):
    """The model was asked for a task it cannot do (e.g. captions from a text-only embedder)."""


class UnknownQuestion(ValueError):
    """A question a model with a closed grammar (`KnowsQuestions`) does not know; `known` says which it does."""

    def __init__(self, question: str, known: str) -> None:
        self.question = question  # as it was asked
        self.known = known  # a short description of the questions the model knows
        super().__init__(f"{question!r} is not a question this model knows; it knows: {known}")


class ModelLoadError(Exception):
    """A model could not be found or loaded; the message names it and says why (raised at start-up)."""


@dataclass(frozen=True)
class AudioSpec:
    """What `transcribe` takes: the audio's rate, its longest duration (the model's window), its languages."""

    sampling_rate: int  # Hz
    max_seconds: float  # longer audio is refused (never chunked)
    languages: frozenset[str]  # the language codes ("en", "fr") `transcribe` accepts; others are refused


@runtime_checkable
class MultimodalModel(Protocol):
    name: str  # what /health and the responses report as "model"
    device: torch.device
    dtype: torch.dtype
    dim: int | None  # embedding size; None when the model embeds nothing
    tasks: frozenset[Task]  # what this model can do
    max_text_tokens: int  # texts and questions are truncated to this many tokens (documented, never an error)
    audio: AudioSpec | None  # what `transcribe` takes; None when the model cannot transcribe
    # the (width, height) an image is resized to (or, keeping its aspect, at least covers) before the model
    # sees it: a larger image may be reduced towards it before `prepare_image`; None when the model says not
    input_size: tuple[int, int] | None

    def caption(
        self,
        images: Sequence[Image.Image],
        max_new_tokens: int | Sequence[int] = 32,
        progress: Progress | None = None,
    ) -> list[str]:
        """One caption per image; `max_new_tokens` is one limit for all or one per image."""
        ...

    def answer(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        max_new_tokens: int = 16,
        progress: Progress | None = None,
    ) -> list[str]:
        """One answer per (image, question) pair."""
        ...

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, dim] float32 CPU tensor, L2-normalised."""
        ...

    def embed_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[n, dim] float32 CPU tensor, L2-normalised, in the same space as embed_text."""
        ...

    def transcribe(
        self,
        audios: Sequence[np.ndarray | Any],
        language: str | Sequence[str | None] | None = None,
        progress: Progress | None = None,
    ) -> list[str]:
        """One transcript per audio (raw or prepared); `language` is one code for all or one per audio
        (None: the model detects it, or knows only one)."""
        ...

    def prepare_audio(self, audio: np.ndarray) -> Any:
        """One audio as `transcribe` takes it (e.g. its log-mel features; thread-safe, in the decode pool)."""
        ...

    def prepare_image(self, image: Image.Image) -> Any:
        """One image as the batched calls take it (thread-safe; runs in the service's decode pool)."""
        ...

    def prepare_text(self, text: str) -> Any:
        """One text to embed as `embed_text` takes it (thread-safe; runs in the decode pool)."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """The tokens each text is embedded as (after truncation), for usage reports. Unlike the other
        methods it may be called from any thread, next to the inference thread's calls."""
        ...


@runtime_checkable
class ScoredTranscriber(Protocol):
    """A model whose whole-batch transcripts come with their confidence (the built-in model, the Whisper adapter)."""

    def transcribe_scored(
        self,
        audios: Sequence[np.ndarray | Any],
        language: str | Sequence[str | None] | None = None,
        progress: Progress | None = None,
    ) -> list[Update]:
        """`transcribe`, each clip's finished update: `text`, `avg_logprob` (and `finish_reason` if known)."""
        ...


@runtime_checkable
class RescoresHeard(Protocol):
    """A model that picks a heard question among its neighbours by how well each fits the audio (the built-in
    model: `model.heard_rescoring`; a model without the means returns the texts as they are)."""

    def encode_audios(self, audios: Sequence[Any]) -> list[Any]: ...

    def rescore_heard(self, encodings: Sequence[Any], texts: Sequence[str]) -> list[str]:
        """Each heard question (a transcript of the audio of the encoding beside it) as rescored."""
        ...


@dataclass(frozen=True)
class PreparedImage:
    """An image as a model takes it, and a digest of those pixels: equal keys give equal encodings."""

    pixels: torch.Tensor  # (3, H, W), on the CPU (pinned when the model is on CUDA)
    key: bytes


@dataclass(frozen=True)
class Update:
    """What one decoding step did to one sequence: `delta` is newly visible text, `text` the whole once finished."""

    delta: str
    finished: bool = False
    # "stop" (end of sequence), "length" (its limit) or "repetition" (a transcript caught looping: `model.loops`)
    finish_reason: str | None = None
    text: str | None = None
    tokens: int = 0  # generated so far
    avg_logprob: float | None = None  # once finished: the mean log-probability of its chosen tokens (and the end's)


class ImageEncoding(Protocol):
    """What a decoder needs of one image, computed once (and cached by the service)."""

    @property
    def nbytes(self) -> int: ...


class GenerationState(Protocol):
    """Sequences decoding together, as rows (TGI's `Batch`): anonymous, compact, in order of arrival."""

    capacity: int

    def __len__(self) -> int: ...

    @property
    def free(self) -> int: ...

    def prefill(self, specs: Sequence[Any], images: Sequence[Any]) -> list[Update]:
        """Append sequences; each one's first update (its first token, or finished)."""
        ...

    def step(self) -> list[Update]:
        """One token for every row."""
        ...

    def filter(self, keep: Sequence[int]) -> None:
        """Keep the rows `keep` (ascending): they become rows 0, 1, ... in that order."""
        ...

    def resumable(self, index: int) -> Any:
        """The spec that goes on with row `index` from where it is (its tokens so far part of it): prefilled
        after the row has left (preempted), it continues with the same tokens and text as if never interrupted."""
        ...


@runtime_checkable
class StepwiseGenerator(Protocol):
    """A model whose captions, answers (and transcripts) can be decoded a step at a time, sequences joining
    and leaving."""

    def sequence(self, task: Task, question: str | None, max_new_tokens: int) -> Any:
        """The spec of one sequence to generate (its tokenised prompt and limit); thread-safe."""
        ...

    def encode_images(self, images: Sequence[PreparedImage]) -> list[Any]:
        """Each prepared image's `ImageEncoding` (one batched pass of the image encoder)."""
        ...

    def encode_audios(self, audios: Sequence[Any]) -> list[Any]:
        """Each prepared audio's encoding, its own length (one batched pass of the audio encoder); only
        called when the model transcribes (`"transcribe"` in its tasks): transcripts are rows of the state too."""
        ...

    def start_audio_encoding(self, audios: Sequence[Any]) -> Any:
        """The same encodings, computed a part at a time: `advance()` runs one part and returns None, or
        the encodings once done (so a step loop keeps each turn short)."""
        ...

    def new_state(self, capacity: int) -> GenerationState: ...


@runtime_checkable
class KnowsQuestions(Protocol):
    """A model that may know only the questions of a closed grammar (the built-in one, trained on a few
    question families): with `closed_questions`, a question outside it is refused, never answered with a
    guess. Models of open vocabulary (Hugging Face VQA models) do not implement this."""

    # True: it answers only its grammar's questions (a trained built-in checkpoint); False: it claims nothing
    # (an untrained one, as tests use) and takes any question as asked
    closed_questions: bool

    def known_question(self, question: str) -> str:
        """The question as the model reads it (normalised to its trained phrasing), or `UnknownQuestion`;
        thread-safe. An empty answer to a known question means the model wrote no answer."""
        ...


# -- Text to image ------------------------------------------------------------------------------------------


class UnsupportedImageSize(ValueError):
    """A size the image generator cannot make; `sizes` lists the (width, height) pairs it can."""

    def __init__(self, width: int, height: int, sizes: Sequence[tuple[int, int]]) -> None:
        self.sizes = tuple(sizes)
        listed = ", ".join(f"{w}x{h}" for w, h in self.sizes)
        super().__init__(f"this model cannot make {width}x{height} images; it makes {listed}")


@dataclass(frozen=True)
class ImageSpec:
    """One image to generate (one row of a `DenoisingState`), as validated by `ImageGenerator.image_spec`."""

    prompt: str
    seed: int  # its own torch.Generator: the same image alone or batched
    steps: int  # num_inference_steps, as a diffusers pipeline takes it
    guidance_scale: float  # classifier-free guidance; <= 1: none (the unconditional pass is skipped)
    width: int
    height: int
    preview_every: int = 0  # a preview (the current estimate of the clean image) every k steps; 0: none


@dataclass(frozen=True)
class ImageUpdate:
    """What one denoising step did to one image: `step` of `steps` done; the image once finished."""

    step: int
    steps: int  # the row's denoising steps (UNet calls) in all: len(scheduler.timesteps)
    finished: bool = False
    image: Image.Image | None = None  # the finished image
    preview: Image.Image | None = None  # the model's current estimate of the clean image, when one was due


class DenoisingState(Protocol):
    """Images denoising together, as rows (in order of arrival); each row has its own timestep and guidance."""

    capacity: int

    def __len__(self) -> int: ...

    @property
    def free(self) -> int: ...

    def join(self, specs: Sequence[ImageSpec]) -> None:
        """Append rows: their prompts encoded, their initial noise drawn from their own seeds."""
        ...

    def step(self, rows: Sequence[int] | None = None) -> list[ImageUpdate]:
        """One denoising step for the rows `rows` (ascending; every row when None) in one batched UNet call;
        an update per row stepped, in that order; finished rows come decoded."""
        ...

    def filter(self, keep: Sequence[int]) -> None:
        """Keep the rows `keep` (ascending): they become rows 0, 1, ... in that order."""
        ...


@runtime_checkable
class ImageGenerator(Protocol):
    """A text-to-image model: the built-in generator, or a diffusers Stable Diffusion folder."""

    name: str
    device: torch.device
    dtype: torch.dtype
    sizes: tuple[tuple[int, int], ...]  # (width, height) pairs it makes; the first is its default
    default_steps: int
    default_guidance_scale: float

    def image_spec(
        self,
        prompt: str,
        seed: int,
        steps: int | None = None,
        guidance_scale: float | None = None,
        size: tuple[int, int] | None = None,
        preview_every: int = 0,
    ) -> ImageSpec:
        """One image's spec, the model's defaults filled in; `UnsupportedImageSize` for a size it cannot make."""
        ...

    def new_state(self, capacity: int) -> DenoisingState: ...

    def generate(self, specs: Sequence[ImageSpec]) -> list[Image.Image]:
        """Whole images, run together to the end (the same images as row by row)."""
        ...
