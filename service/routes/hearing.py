"""Spoken questions: /vqa's `question_audio`, heard through the transcribe task, then answered as if typed.

Serving does it (`Serving.generate`): admission to the transcribe queue (501 when the model serving
`transcribe` cannot, 429 when its queue is full), the image decoded while the audio is decoded and
prepared in the decode pool (a bad image is a 400 before anything is transcribed; a bad audio a 400, 413,
415 or 422 on `question_audio`), the transcribe batches of that model (where the transcript finishes, a model
that can rescores it among its neighbours: `model.api.RescoresHeard`, `MMSERVE_SPOKEN_RESCORING`), all under
the /vqa request's deadline (504). What was heard must then be a question: a blank transcript (nothing heard)
or one over the question limit is a 422 on `question_audio`, and so is a question the built-in model does not know
(`service.serving.questions`: the message says what was heard). This module holds what the route documents.
"""

from __future__ import annotations

from typing import Any

from service.routes.common import ERROR_RESPONSES
from service.schemas import ErrorResponse, ValidationErrorResponse
from service.serving.questions import SPOKEN_FIELD as FIELD

__all__ = ["FIELD", "SPOKEN_RESPONSES"]

SPOKEN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    400: {"model": ErrorResponse, "description": "The image or the spoken question's bytes cannot be decoded"},
    413: {"model": ErrorResponse, "description": "The upload, the image (in pixels) or the spoken question "
          "(in seconds) is over the limit"},
    415: {"model": ErrorResponse, "description": "The content type is not multipart/form-data or JSON, or the "
          "spoken question's audio format is not decoded (send WAV, FLAC, Ogg or MP3)"},
    422: {"model": ValidationErrorResponse | ErrorResponse, "description": "A missing or malformed field, both or "
          "neither of question and question_audio, or a spoken question that cannot be transcribed or was heard "
          "blank or too long (FastAPI's `detail` shape); or a question, typed or heard, that the built-in model does "
          "not know or wrote no answer to (`question_not_understood`, the error shape)"},
    501: {"model": ErrorResponse, "description": "The configured model cannot do this task (a spoken question "
          "needs a model serving transcribe)"},
}  # fmt: skip

