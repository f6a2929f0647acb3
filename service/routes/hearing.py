"""Spoken questions: /vqa's `question_audio` is heard through the transcribe task, then answered as if typed.

The audio goes the way a /transcribe upload goes: admission to the transcribe queue (501 when the model
serving `transcribe` cannot, 429 when its queue is full), decoding and features in the decode pool (400,
413, 415, 422, on the field `question_audio`), the transcribe batches of that model, all under the /vqa
request's deadline (504). What was heard must then be a question: a blank transcript (nothing heard) or
one over the question limit is a 422 on `question_audio`.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError

from service.batching import Item
from service.routes.common import ERROR_RESPONSES, RequestRecord, before_deadline, disconnect_waiter
from service.runtime import Runtime
from service.schemas import ErrorResponse, check_question

FIELD = "question_audio"

SPOKEN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    400: {"model": ErrorResponse, "description": "The image or the spoken question's bytes cannot be decoded"},
    413: {"model": ErrorResponse, "description": "The upload, the image (in pixels) or the spoken question "
          "(in seconds) is over the limit"},
    415: {"model": ErrorResponse, "description": "The content type is not multipart/form-data or JSON, or the "
          "spoken question's audio format is not decoded (send WAV, FLAC, Ogg or MP3)"},
    422: {**ERROR_RESPONSES[422], "description": "A missing or malformed field, both or neither of question and "
          "question_audio, or a spoken question that cannot be transcribed or was heard blank or too long"},
    501: {"model": ErrorResponse, "description": "The configured model cannot do this task (a spoken question "
          "needs a model serving transcribe)"},
}  # fmt: skip


async def hear_question(
    request: Request, runtime: Runtime, record: RequestRecord, audio: bytes
) -> tuple[str, Item[Any, Any]]:
    """The question heard in `audio` (transcribed by the model serving `transcribe`), and its queue item."""
    with runtime.admit("transcribe") as slot:
        async with before_deadline(record):
            started = time.monotonic()
            payload, _ = await runtime.prepare_transcription("transcribe", audio, field=FIELD)
            record.decode_s += time.monotonic() - started
        item = slot.submit(payload, record.deadline)
    [result] = await runtime.wait([item], record.deadline, disconnect_waiter(request))
    heard: str = result.text
    try:
        check_question(
            heard,
            runtime.settings,
            f"nothing was heard in {FIELD}: its transcript is blank",
            f"the question heard in {FIELD}",
        )
    except ValueError as e:
        raise RequestValidationError(
            [{"type": "question_heard", "loc": ("body", FIELD), "msg": str(e), "input": heard[:200]}]
        ) from e
    return heard, item
