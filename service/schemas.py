"""Request and response models.

Limits that come from the settings (question length, texts per /embed call, `max_new_tokens`) are
checked by validators that read the settings from the validation context, so that every malformed
field is answered in FastAPI's usual 422 shape; `document_limits` writes the same limits into the
OpenAPI document, so that its request schemas say exactly what the routes accept.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from service.settings import Settings

# Blank: only whitespace, as Python (str.isspace) or JSON Schema's ECMA-262 regexes (which add U+FEFF, and lack
# U+001C-U+001F and U+0085) see it; the schema's pattern and the check agree on every character.
_NOT_BLANK_PATTERN = r"[^\s\x1c-\x1f\x85]"  # ECMA-262
_NOT_BLANK = re.compile(r"[^\s\ufeff]")  # Python's \s covers U+001C-U+001F and U+0085
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


def _decode_base64(value: Any, what: str = "image") -> bytes:
    """A base64 string or a `data:image/...;base64,` (`data:audio/...`) URL → bytes."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a base64 string or a data URL")
    encoded = "".join(_DATA_URL.sub("", value, count=1).split())  # MIME base64 may wrap lines
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as e:
        raise ValueError(f"{what} is not valid base64 ({e})") from e


def _decode_base64_audio(value: Any) -> bytes:
    return _decode_base64(value, "audio")


Base64Image = Annotated[
    bytes,
    BeforeValidator(_decode_base64),
    WithJsonSchema(
        {
            "type": "string",
            "format": "byte",
            "contentEncoding": "base64",
            "contentMediaType": "image/*",
            "minLength": 1,
            "description": "The image file (JPEG, PNG, WebP, GIF, BMP or TIFF), base64-encoded, or a data URL",
        }
    ),
]
Base64Audio = Annotated[
    bytes,
    BeforeValidator(_decode_base64_audio),
    WithJsonSchema(
        {
            "type": "string",
            "format": "byte",
            "contentEncoding": "base64",
            "contentMediaType": "audio/*",
            "minLength": 1,
            "description": "The audio file (WAV, FLAC, Ogg or MP3), base64-encoded, or a data URL",
        }
    ),
]
# A tiny PNG (8x8, red), so that the documented examples are requests the service answers.
EXAMPLE_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8ISfHgA0wYRUdtBIA0MoBFD5jqJkAAAAASUVORK5CYII="
)


def _settings(info: ValidationInfo) -> Settings:
    context = info.context or {}
    settings = context.get("settings")
    return settings if isinstance(settings, Settings) else Settings()


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Requests.
def _form_boolean(value: Any) -> Any:
    """A multipart field is text: "true" and "false" (any case) are booleans; nothing else is (no 0, yes, on)."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


class StreamParam(RequestModel):
    stream: Annotated[bool, BeforeValidator(_form_boolean)] = Field(
        default=False,
        strict=True,
        description="Answer with server-sent events: a `token` event per token, then `done`",
    )


class CaptionParams(StreamParam):
    max_new_tokens: int | None = Field(default=None, ge=1, description="At most this many tokens (bounded)")

    @field_validator("max_new_tokens")
    @classmethod
    def _bounded(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = _settings(info).max_new_tokens_limit
        if value is not None and value > limit:
            raise ValueError(f"max_new_tokens must be at most {limit}")
        return value


class CaptionJSON(CaptionParams):
    image: Base64Image

    model_config = ConfigDict(json_schema_extra={"examples": [{"image": EXAMPLE_IMAGE, "max_new_tokens": 20}]})


class VqaParams(StreamParam):
    """Exactly one of `question` (typed) and `question_audio` (spoken; in a multipart body, a file field)."""

    question: str | SkipJsonSchema[None] = Field(
        default=None,
        description="A question about the image (or send it spoken, as `question_audio`)",
        json_schema_extra={"minLength": 1, "pattern": _NOT_BLANK_PATTERN},  # checked below, with clearer messages
    )
    question_audio: bytes | SkipJsonSchema[None] = Field(
        default=None,
        description="The question spoken (WAV, FLAC, Ogg or MP3): transcribed, then answered; "
        "the response's `heard` says what was heard",
    )

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["question"]}, {"required": ["question_audio"]}]}
    )

    @model_validator(mode="before")
    @classmethod
    def _not_null(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("question", "question_audio"):
                if name in data and data[name] is None:
                    raise ValueError(f"{name} must not be null; leave it out")
        return data

    @field_validator("question", mode="before")
    @classmethod
    def _question(cls, value: Any, info: ValidationInfo) -> Any:
        """A text's checks before the type's (which are a union's, with `None`): one clear error each."""
        if isinstance(value, str):
            if not value:
                raise ValueError("question must have at least 1 character")
            check_question(value, _settings(info), "question must not be blank")
        return value

    @model_validator(mode="after")
    def _one_question(self) -> Self:
        if (self.question is None) == (self.question_audio is None):
            if self.question is not None:
                raise ValueError("send either question (typed) or question_audio (spoken), not both")
            raise ValueError("send a question: question (typed) or question_audio (spoken); neither was sent")
        return self


def check_question(question: str, settings: Settings, blank: str, what: str = "question") -> None:
    """A question to answer, typed or heard: not blank (`blank` says so), not over the limit."""
    if not _NOT_BLANK.search(question):
        raise ValueError(blank)
    if len(question) > settings.max_question_chars:
        raise ValueError(f"{what} is {len(question)} characters long; the limit is {settings.max_question_chars}")


class VqaJSON(VqaParams):
    image: Base64Image
    question_audio: Base64Audio | SkipJsonSchema[None] = Field(
        default=None,
        description="The question spoken, base64-encoded (WAV, FLAC, Ogg or MP3): transcribed, then answered; "
        "the response's `heard` says what was heard",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": ["question"]}, {"required": ["question_audio"]}],
            "examples": [{"image": EXAMPLE_IMAGE, "question": "What colour is the square?"}],
        }
    )


class EmbedImageParams(RequestModel):
    """A multipart /embed call carries only its `image` file."""


class TranscribeParams(StreamParam):
    language: str | None = Field(
        default=None,
        min_length=2,
        max_length=8,
        description="The spoken language's ISO 639-1 code (en, fr, ...); leave it out to let the model detect it",
    )
    segments: Annotated[bool, BeforeValidator(_form_boolean)] = Field(
        default=False,
        strict=True,
        description="Segment times: the audio is cut at pauses and each piece's text comes with its start and "
        "end (always, for audio longer than the model's window)",
    )


class TranscribeJSON(TranscribeParams):
    audio: Base64Audio


# What `_texts` below accepts, as a schema (its own checks give clearer messages than pydantic's constraints).
_TEXT_SCHEMA = {"type": "string", "minLength": 1}
_TEXTS_SCHEMA = {"anyOf": [_TEXT_SCHEMA, {"type": "array", "items": _TEXT_SCHEMA, "minItems": 1}]}


class EmbedJSON(RequestModel):
    """Exactly one of `input` and `image` (absent, not null: the schema's `oneOf` says so)."""

    input: Annotated[str | list[str], WithJsonSchema(_TEXTS_SCHEMA)] | SkipJsonSchema[None] = Field(
        default=None, description="One text or a list of texts"
    )
    image: Base64Image | SkipJsonSchema[None] = None

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": ["input"]}, {"required": ["image"]}],
            "examples": [{"input": ["a red circle", "a blue square"]}, {"input": "a red circle"}],
        }
    )

    @model_validator(mode="before")
    @classmethod
    def _not_null(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for field in ("input", "image"):
                if field in data and data[field] is None:
                    raise ValueError(f"{field} must not be null; leave it out")
        return data

    @field_validator("input")
    @classmethod
    def _texts(cls, value: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        if value is None:
            return value
        settings = _settings(info)
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("input must not be an empty list")
        if len(texts) > settings.max_embed_inputs:
            raise ValueError(f"input has {len(texts)} texts; the limit is {settings.max_embed_inputs}")
        for i, text in enumerate(texts):
            if not text:
                raise ValueError(f"input[{i}] is empty")
            if len(text) > settings.max_text_chars:
                raise ValueError(f"input[{i}] is {len(text)} characters long; the limit is {settings.max_text_chars}")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.input is None) == (self.image is None):
            raise ValueError("send either input (text or list of texts) or image, not both or neither")
        return self

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input or [])


# Responses.
class Timings(BaseModel):
    """A spoken question's two steps add up: hearing it (transcription), then answering it."""

    queue_ms: float = Field(description="Waiting for a batch (the longest, for several inputs)")
    inference_ms: float = Field(description="The batch on the device")
    decode_ms: float = Field(default=0.0, description="Decoding the image or the audio (and its features), or both")
    total_ms: float = Field(description="From arrival to response")
    batch_size: int = Field(description="Items in the batch that ran this request (the largest)")


class CaptionResponse(BaseModel):
    caption: str
    model: str
    timings: Timings


class VqaResponse(BaseModel):
    answer: str
    model: str
    heard: str | None = Field(
        default=None, description="What was heard in `question_audio` (the question answered); null when typed"
    )
    timings: Timings


class Confidence(BaseModel):
    """How sure the transcript is, as Whisper's verbose_json segments say it."""

    avg_logprob: float | None = Field(
        default=None,
        description="The mean log-probability of its decoded tokens; null when the model does not report it",
    )
    no_speech_prob: float | None = Field(
        default=None, description="The voice-activity detector's probability that the audio holds no speech"
    )
    compression_ratio: float = Field(
        default=0.0, description="The text's UTF-8 bytes over their zlib-compressed size (high: it repeats itself)"
    )


class TranscriptSegment(Confidence):
    id: int
    start: float = Field(description="Where its speech starts in the recording, in seconds")
    end: float = Field(description="Where its speech ends, in seconds")
    text: str


class TranscribeResponse(Confidence):
    text: str
    model: str
    language: str | None = Field(description="The language asked for; null when the model detected it")
    duration: float = Field(description="The audio's duration in seconds")
    timings: Timings
    segments: list[TranscriptSegment] | None = Field(
        default=None,
        description="What was said when, in order of time: with `segments`, and for audio longer than the "
        "model's window (cut at pauses); absent when the audio was heard whole",
    )


class Embedding(BaseModel):
    index: int
    embedding: list[float]


class EmbedResponse(BaseModel):
    data: list[Embedding]
    model: str
    dim: int
    timings: Timings


class HealthResponse(BaseModel):
    status: str = Field(description="ok, loading, draining or unhealthy")
    model: str | None = None
    models: dict[str, str] = Field(default_factory=dict, description="The model serving each task")
    device: str | None = None
    dtype: str | None = None
    tasks: list[str] = Field(default_factory=list)
    queues: dict[str, int] = Field(default_factory=dict, description="Items waiting, per task")


class ValidationErrorItem(BaseModel):
    type: str
    loc: list[str | int] = Field(description="Where: 'body', then the field")
    msg: str
    input: str | int | float | bool | None = Field(default=None, description="The value, when short and scalar")


class ValidationErrorResponse(BaseModel):
    """FastAPI's 422 shape, as `service.errors` writes it."""

    detail: list[ValidationErrorItem]


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
