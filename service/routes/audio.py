"""POST /transcribe: speech to text, whole or streamed (`stream`: `token` events, then `done`, as /caption).

Audio up to `MMSERVE_MAX_AUDIO_SECONDS` is taken: a recording longer than the model's window, or any with
`segments` asked, is cut at pauses and answered with `segments` (id, start, end, text); streamed, such a
recording gives a `segment` event per finished segment (in order of time), then `done`.

Serving runs the request (`Serving.transcribe_as_asked`): readiness (503) and task support (501),
admission (429), then this route's reading of the fields (415, 422, 413), decoding the audio and its
features off the event loop (400, 413, 415, 422: see `service.audio`), queueing, and the answer (504).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from model import compression_ratio
from service.routes.common import ERROR_RESPONSES, ServingDep, disconnect_waiter, request_body
from service.routes.streaming import EventStream, sse, stream_error, token_events
from service.schemas import ErrorResponse, TranscribeJSON, TranscribeParams, TranscribeResponse, TranscriptSegment
from service.segments import Segment
from service.serving import ChunkStream, TextUpdate, Transcript, TranscriptionAsk
from service.uploads import body_kind, read_image_request

AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    400: {"model": ErrorResponse, "description": "The bytes are not audio, or the audio is corrupt or truncated"},
    413: {"model": ErrorResponse, "description": "The upload, or the audio's duration, is over the limit"},
    415: {
        "model": ErrorResponse,
        "description": "The content type is not multipart/form-data or JSON, or the audio's format or codec is "
        "not decoded (send WAV, FLAC, Ogg or MP3)",
    },
}
AUDIO_RESPONSES[422] = {
    **ERROR_RESPONSES[422],
    "description": "A missing or malformed field, an unknown language, or audio that cannot be transcribed "
    "(no samples, silence only, shorter than 50 ms, a sample rate outside 1-384 kHz, more than 8 channels)",
}

router = APIRouter(responses=AUDIO_RESPONSES)


@router.post(
    "/transcribe",
    response_model=TranscribeResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or server-sent events with `stream`"}},
    openapi_extra=request_body(TranscribeJSON, TranscribeParams, "audio"),
)
async def transcribe(request: Request, serving: ServingDep) -> Response:
    """Transcribe speech: a multipart file field `audio` (and `language`), or JSON with a base64 `audio`."""

    async def read() -> TranscriptionAsk:
        data, params = await read_image_request(
            request, body_kind(request, "audio"), TranscribeParams, TranscribeJSON, serving.settings, "audio",
            offload=serving.in_pool, limit=serving.settings.max_audio_upload_bytes,
        )  # fmt: skip
        return TranscriptionAsk(data, params.language, stream=params.stream, segments=params.segments)

    def reply(transcript: Transcript) -> dict[str, Any]:
        body = TranscribeResponse(
            text=transcript.text,
            model=transcript.model,
            language=transcript.language,
            duration=transcript.duration_s,
            timings=transcript.timings,
            segments=segments_of(transcript),
            **confidence(transcript.avg_logprob, transcript.no_speech_prob, transcript.compression_ratio),
        ).model_dump()
        if transcript.segments is None:
            del body["segments"]  # heard whole: no segment times
        return body

    result = await serving.transcribe_as_asked(read, disconnect_waiter(request))
    if isinstance(result, Transcript):
        return Response(orjson.dumps(reply(result)), media_type="application/json")
    if isinstance(result, ChunkStream):
        return segment_events(result, reply)
    return token_events(result, reply)


def segments_of(transcript: Transcript) -> list[TranscriptSegment] | None:
    if transcript.segments is None:
        return None
    return [segment_of(s) for s in transcript.segments]


def segment_of(s: Segment) -> TranscriptSegment:
    confident = confidence(s.avg_logprob, s.no_speech_prob, compression_ratio(s.text))
    return TranscriptSegment(id=s.id, start=s.start_s, end=s.end_s, text=s.text, **confident)


def confidence(avg_logprob: float | None, no_speech_prob: float | None, ratio: float) -> dict[str, Any]:
    """The confidence fields, rounded to 4 places (`service.schemas.Confidence`)."""
    return {
        "avg_logprob": None if avg_logprob is None else round(avg_logprob, 4),
        "no_speech_prob": None if no_speech_prob is None else round(no_speech_prob, 4),
        "compression_ratio": round(ratio, 4),
    }


def segment_events(stream: ChunkStream[TextUpdate[Transcript]], reply: Callable[[Transcript], Any]) -> EventStream:
    """A `segment` event per finished segment (`{"id", "start", "end", "text"}` and its confidence), then `done`."""

    async def events() -> AsyncIterator[bytes]:
        try:
            async for update in stream:
                if update.segment is not None:
                    yield sse("segment", segment_of(update.segment).model_dump())
                if update.done is not None:
                    yield sse("done", reply(update.done))
        except Exception as e:
            yield sse("error", {"error": stream_error(e)})

    return EventStream(events(), stream)
