"""POST /v1/audio/transcriptions: OpenAI's speech-to-text API over the same queue as /transcribe.

The request is OpenAI's multipart form: `file` (up to `MMSERVE_MAX_AUDIO_SECONDS`; a recording longer
than the model's window is cut at pauses), `model` (the served transcription model's id, as /v1/models
lists it), `language`, `response_format` (`json`: `{"text"}`; `text`: the text alone; `verbose_json`:
`{"task", "language", "duration", "text", "segments"}` with Whisper's segment fields (`service.segments`);
`srt` and `vtt`: subtitles, one cue per segment, as text/plain), `timestamp_granularities[]` (`segment`
only: word times are not produced, `word` is a 400), `stream` (server-sent `transcript.text.delta` events
as the text decodes, or a segment's text at a time for a chunked recording, then `transcript.text.done`).
Decoding is greedy: a `temperature` other than 0 and a `prompt` are refused with a 400 naming the
parameter. Errors come in OpenAI's shape (`service.openai.errors`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import ConfigDict, Field

from service.errors import UnsupportedMediaType
from service.openai.errors import ModelNotFound, UnsupportedParameter
from service.routes.common import ServingDep, disconnect_waiter
from service.routes.streaming import EventStream, stream_error
from service.schemas import RequestModel
from service.segments import verbose_json
from service.serving import Transcript, TranscriptionAsk, TranscriptStream
from service.subtitles import to_srt, to_vtt
from service.uploads import BodyKind, body_kind, read_form

router = APIRouter()

TIMED_FORMATS = ("verbose_json", "srt", "vtt")  # formats with segment times: the audio is cut at pauses

ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]


class TranscriptionForm(RequestModel):
    """OpenAI's form fields besides `file` (the ones the `openai` package sends)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str = Field(min_length=1, description="The transcription model's id, as GET /v1/models lists it")
    language: str | None = Field(default=None, min_length=2, max_length=8, description="ISO 639-1 code")
    response_format: ResponseFormat = "json"
    temperature: float = Field(default=0.0, ge=0, le=1, description="Only 0 (greedy decoding)")
    prompt: str | None = Field(default=None, description="Refused: no prompting")
    stream: bool = Field(default=False, description="transcript.text.delta events, then transcript.text.done")
    timestamp_granularities: list[str] | None = Field(
        default=None, alias="timestamp_granularities[]", description="segment (word is refused)"
    )


class Transcription(RequestModel):
    text: str


class VerboseSegment(RequestModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float | None
    compression_ratio: float
    no_speech_prob: float | None


class TranscriptionVerbose(RequestModel):
    task: Literal["transcribe"] = "transcribe"
    language: str | None = Field(description="The language asked for; null when the model detected it")
    duration: float = Field(description="The audio's duration in seconds")
    text: str
    segments: list[VerboseSegment]


@router.post(
    "/v1/audio/transcriptions",
    response_model=Transcription | TranscriptionVerbose,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "model"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "model": {"type": "string", "minLength": 1},
                            "language": {"type": "string", "minLength": 2, "maxLength": 8},
                            "response_format": {
                                "type": "string",
                                "enum": ["json", "text", "verbose_json", "srt", "vtt"],
                            },
                            "timestamp_granularities[]": {"type": "array", "items": {"enum": ["segment"]}},
                            "stream": {"type": "boolean"},
                        },
                    }
                }
            },
        }
    },
)
async def create_transcription(request: Request, serving: ServingDep) -> Response:
    """Transcribe an audio file (WAV, FLAC, Ogg or MP3), in OpenAI's request and response shapes."""
    form: TranscriptionForm | None = None

    async def read() -> TranscriptionAsk:
        nonlocal form
        if body_kind(request, "file") is not BodyKind.MULTIPART:
            raise UnsupportedMediaType("send multipart/form-data with the audio in a file field 'file'")
        settings = serving.settings
        data, form = await read_form(
            request, TranscriptionForm, settings, "file", limit=settings.max_audio_upload_bytes
        )
        _check_supported(form, serving.model_name("transcribe"))
        timed = form.response_format in TIMED_FORMATS
        return TranscriptionAsk(data, form.language, field="file", stream=form.stream, segments=timed)

    result = await serving.transcribe_as_asked(read, disconnect_waiter(request))
    assert form is not None
    if not isinstance(result, Transcript):
        return EventStream(_events(result), result)
    if form.response_format == "text":
        return PlainTextResponse(result.text)
    segments = result.segments or []
    if form.response_format == "verbose_json":
        body = {**verbose_json(segments, result.language or "", result.duration_s), "language": result.language}
        return Response(orjson.dumps(body), media_type="application/json")
    if form.response_format == "srt":
        return PlainTextResponse(to_srt(segments))
    if form.response_format == "vtt":
        return PlainTextResponse(to_vtt(segments))
    return Response(Transcription(text=result.text).model_dump_json(), media_type="application/json")


async def _events(stream: TranscriptStream) -> AsyncIterator[bytes]:
    """OpenAI's transcription stream: `transcript.text.delta` events, then `transcript.text.done`."""
    try:
        async for update in stream:
            if update.delta:
                yield _data({"type": "transcript.text.delta", "delta": update.delta})
            if update.done is not None:
                yield _data({"type": "transcript.text.done", "text": update.done.text})
    except Exception as e:
        error = stream_error(e)
        yield _data({"type": "error", "error": {"message": error["message"], "code": error["type"]}})


def _data(body: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _check_supported(form: TranscriptionForm, served: str) -> None:
    """400 for what mmserve does not do; 404 for a model it does not serve."""
    granularities = set(form.timestamp_granularities or [])
    unknown = granularities - {"segment", "word"}
    refused = {
        "temperature": form.temperature != 0 and "decoding is greedy: leave temperature out or 0",
        "prompt": bool(form.prompt) and "prompts are not supported: leave prompt out",
        "timestamp_granularities[]": (
            "word" in granularities and "word timestamps are not produced; segment timestamps are (ask for segment)"
        )
        or (unknown and f"unknown granularity {sorted(unknown)[0]!r}; use segment"),
    }
    for param, reason in refused.items():
        if reason:
            raise UnsupportedParameter(str(reason), param=param)
    if form.model != served:
        raise ModelNotFound(f"the model {form.model!r} is not served here; use {served}")
