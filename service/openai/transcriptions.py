"""POST /v1/audio/transcriptions: OpenAI's speech-to-text API over the same queue as /transcribe.

The request is OpenAI's multipart form: `file`, `model` (the served transcription model's id, as
/v1/models lists it), `language`, `response_format` (`json`: `{"text"}`; `text`: the text alone;
`verbose_json`: `{"task", "language", "duration", "text"}`, without segments), `stream` (server-sent
`transcript.text.delta` events as the text decodes, then `transcript.text.done`). Decoding is greedy: a
`temperature` other than 0, a `prompt`, timestamps (`timestamp_granularities[]`, given once or repeated)
and the `srt`/`vtt` formats are refused with a 400 naming the parameter. Errors come in OpenAI's shape
(`service.openai.errors`).
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
from service.serving import Stream, TextUpdate, Transcript, TranscriptionAsk
from service.uploads import BodyKind, body_kind, read_form

router = APIRouter()

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
        default=None, alias="timestamp_granularities[]", description="Refused: no timestamps"
    )


class Transcription(RequestModel):
    text: str


class TranscriptionVerbose(RequestModel):
    task: Literal["transcribe"] = "transcribe"
    language: str | None = Field(description="The language asked for; null when the model detected it")
    duration: float = Field(description="The audio's duration in seconds")
    text: str


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
                            "response_format": {"type": "string", "enum": ["json", "text", "verbose_json"]},
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
        data, form = await read_form(request, TranscriptionForm, serving.settings, "file")
        _check_supported(form, serving.model_name("transcribe"))
        return TranscriptionAsk(data, form.language, field="file", stream=form.stream)

    result = await serving.transcribe_as_asked(read, disconnect_waiter(request))
    assert form is not None
    if not isinstance(result, Transcript):
        return EventStream(_events(result), result)
    if form.response_format == "text":
        return PlainTextResponse(result.text)
    if form.response_format == "verbose_json":
        body = TranscriptionVerbose(language=result.language, duration=result.duration_s, text=result.text)
        return Response(body.model_dump_json(), media_type="application/json")
    return Response(Transcription(text=result.text).model_dump_json(), media_type="application/json")


async def _events(stream: Stream[TextUpdate[Transcript]]) -> AsyncIterator[bytes]:
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
    if form.response_format in ("srt", "vtt"):
        raise UnsupportedParameter(
            f"response_format {form.response_format} needs timestamps, which are not produced; use json, text or "
            "verbose_json",
            param="response_format",
        )
    refused = {
        "temperature": form.temperature != 0 and "decoding is greedy: leave temperature out or 0",
        "prompt": bool(form.prompt) and "prompts are not supported: leave prompt out",
        "timestamp_granularities[]": bool(form.timestamp_granularities) and "timestamps are not produced",
    }
    for param, reason in refused.items():
        if reason:
            raise UnsupportedParameter(str(reason), param=param)
    if form.model != served:
        raise ModelNotFound(f"the model {form.model!r} is not served here; use {served}")
