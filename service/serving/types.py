"""What serving takes (already parsed by a route) and gives back: typed inputs, results and stream updates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from model import Task, compression_ratio
from service.schemas import Timings
from service.segments import Segment

T = TypeVar("T")
R = TypeVar("R")

Read = Callable[[], Awaitable[T]]  # a route's parsing of its request, run once serving has admitted it


@dataclass(frozen=True)
class GenerationAsk:
    """A caption (no question) or an answer (a question, typed or spoken) about one image."""

    task: Task  # "caption" or "vqa"
    image: bytes  # the image file's bytes
    question: str | None = None
    question_audio: bytes | None = None  # a spoken question: heard through `transcribe`, then answered
    max_new_tokens: int | None = None  # what the client asked; bounded by the server's limits
    image_param: str | None = None  # names the image in a 400 (e.g. OpenAI's `messages[0].content[1]...`)
    stream: bool = False  # for `generate_as_asked`: the updates as they are decoded


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str | None  # "stop" or "length"; None when the model does not say
    tokens: int  # generated tokens (0 when the model does not count them)
    model: str
    timings: Timings
    heard: str | None = None  # the question heard in `question_audio`


@dataclass(frozen=True)
class TranscriptionAsk:
    audio: bytes  # the audio file's bytes (WAV, FLAC, Ogg or MP3)
    language: str | None = None  # an ISO 639-1 code, or None: the model detects it
    field: str = "audio"  # the request field holding the audio (named in a 4xx)
    stream: bool = False  # for `transcribe_as_asked`: the updates as they are decoded
    segments: bool = False  # segment times asked for: cut at pauses even when the audio fits the model's window


@dataclass(frozen=True)
class Transcript:
    text: str
    model: str
    language: str | None
    duration_s: float  # the audio's duration
    timings: Timings
    # what was said when, in order of time; None when the audio was heard whole (it fits the model's window
    # and no segments were asked for)
    segments: list[Segment] | None = None
    # how sure (`model.understanding`): the whole transcript's mean token log-probability (None: the model
    # does not report it), the detector's no-speech probability (a recording's: its most speech-like segment's)
    avg_logprob: float | None = None
    no_speech_prob: float | None = None

    @property
    def compression_ratio(self) -> float:
        return compression_ratio(self.text)


@dataclass(frozen=True)
class EmbedAsk:
    """Texts and images (their files' bytes) to embed in one space, answered in this order."""

    inputs: Sequence[str | bytes]
    image_param: str | None = None  # names an image in a 400: a format string given its index ("input[{}]")


@dataclass(frozen=True)
class Embeddings:
    vectors: list[np.ndarray]  # float32, one per input, in order
    model: str
    text_tokens: int  # the texts' tokens as embedded (usage reports)
    timings: Timings


@dataclass(frozen=True)
class TextUpdate(Generic[R]):
    """A streamed text's news: `delta` is newly decoded text; the last update carries the whole result."""

    delta: str
    done: R | None = None
    segment: Segment | None = None  # a chunked recording's transcript streams one finished segment at a time


def given(value: T) -> Read[T]:
    """A `Read` for a request the route has already read (its task was only known from the body)."""

    async def read() -> T:
        return value

    return read


__all__ = [
    "EmbedAsk",
    "Embeddings",
    "Generation",
    "GenerationAsk",
    "Read",
    "TextUpdate",
    "Transcript",
    "TranscriptionAsk",
    "given",
]
