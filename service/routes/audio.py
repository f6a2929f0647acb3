"""POST /transcribe: speech to text, over the transcribe queue (whole batches; the model is Whisper).

The steps and their order are the image routes': readiness (503) and task support (501), content type
(415), admission (429), reading and validating the fields (422, 413), then decoding the audio and its
features off the event loop (400, 413, 415, 422: see `service.audio`), queueing, and the answer (504).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from service.audio import language_code
from service.routes.common import (
    ERROR_RESPONSES,
    RuntimeDep,
    before_deadline,
    disconnect_waiter,
    observe,
    request_body,
    timings,
)
from service.schemas import ErrorResponse, TranscribeJSON, TranscribeParams, TranscribeResponse
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
    openapi_extra=request_body(TranscribeJSON, TranscribeParams, "audio"),
)
async def transcribe(request: Request, runtime: RuntimeDep) -> TranscribeResponse:
    """Transcribe speech: a multipart file field `audio` (and `language`), or JSON with a base64 `audio`."""
    async with observe(runtime, "transcribe") as record:
        kind = body_kind(request, "audio")
        with runtime.admit("transcribe") as slot:
            async with before_deadline(record):
                data, params = await read_image_request(
                    request, kind, TranscribeParams, TranscribeJSON, runtime.settings, "audio"
                )
                language = language_code(params.language, runtime.ensure_ready().audio_spec("transcribe"))
                started = time.monotonic()
                payload, seconds = await runtime.prepare_transcription("transcribe", data, language)
                record.decode_s = time.monotonic() - started
            item = slot.submit(payload, record.deadline)
        [result] = await runtime.wait([item], record.deadline, disconnect_waiter(request))
        return TranscribeResponse(
            text=result.text,
            model=runtime.model_name("transcribe"),
            language=language,
            duration=round(seconds, 3),
            timings=timings(record, [item]),
        )
