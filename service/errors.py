"""Typed errors raised below the routes, and their one mapping to HTTP.

Every error the service itself produces is a `ServiceError` with a status, a type and a message,
answered as `{"error": {"type": ..., "message": ...}}`. Request-field validation keeps FastAPI's
422 shape (`{"detail": [...]}`), which clients and the OpenAPI schema already know, but echoes back only
short, JSON-safe inputs: never raw body bytes (which may not be UTF-8), never a whole base64 image.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from model import UnsupportedTask

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with its HTTP status; the message is shown to the client."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(
        self,
        message: str,
        retry_after_s: float | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s  # overload and not-ready answers say when to come back
        self.param = param  # the request field at fault, when one is (shown by the OpenAI-shaped errors)
        self._headers = headers or {}  # e.g. a 401's WWW-Authenticate

    @property
    def headers(self) -> dict[str, str]:
        retry = {"Retry-After": f"{self.retry_after_s:g}"} if self.retry_after_s is not None else {}
        return {**self._headers, **retry}


class InvalidImage(ServiceError):
    status_code = 400
    error_type = "invalid_image"


class InvalidAudio(ServiceError):
    status_code = 400
    error_type = "invalid_audio"


class UnsupportedAudioFormat(ServiceError):
    status_code = 415
    error_type = "unsupported_audio_format"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    error_type = "unsupported_media_type"


class QuestionNotUnderstood(ServiceError):
    """A question (typed, or heard in a spoken one) that the model serving /vqa does not know, or wrote no
    answer to; the message says what was asked (or heard) and which questions the model knows."""

    status_code = 422
    error_type = "question_not_understood"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "payload_too_large"


class QueueFull(ServiceError):
    status_code = 429
    error_type = "queue_full"


class NotReady(ServiceError):
    status_code = 503
    error_type = "not_ready"


class Timeout(ServiceError):
    status_code = 504
    error_type = "timeout"


class UnsupportedSize(ServiceError):
    """An image size the text-to-image model cannot make; the message lists those it can."""

    status_code = 400
    error_type = "unsupported_size"


class NotImplementedTask(ServiceError):
    status_code = 501
    error_type = "not_implemented"


class ClientDisconnected(ServiceError):
    """The client went away before its answer; nobody reads this response (nginx's 499)."""

    status_code = 499
    error_type = "client_closed_request"


class NotUnderstood(ServiceError):
    """A spoken question the model did not understand (no speech, low confidence, a loop): the message says
    why and what was heard (`heard`), instead of an answer to a question nobody asked."""

    status_code = 422
    error_type = "not_understood"

    def __init__(self, message: str, heard: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.heard = heard


class OutOfMemory(ServiceError):
    """One input does not fit in the device's memory even alone (a batch that does not fit is split)."""

    status_code = 507
    error_type = "out_of_memory"


def json_error(
    status_code: int, error_type: str, message: str, headers: dict[str, str] | None = None, param: str | None = None
) -> JSONResponse:
    """The one JSON error shape (`param` only when an error names one)."""
    error = {"type": error_type, "message": message, **({"param": param} if param else {})}
    return JSONResponse(status_code=status_code, content={"error": error}, headers=headers)


def error_response(error: ServiceError) -> JSONResponse:
    """A typed error as a response."""
    return json_error(error.status_code, error.error_type, error.message, error.headers, error.param)


def status_of(error: BaseException) -> int:
    """The HTTP status an exception will be answered with (for metrics)."""
    if isinstance(error, ServiceError):
        return error.status_code
    if isinstance(error, UnsupportedTask):
        return NotImplementedTask.status_code
    if isinstance(error, StarletteHTTPException):
        return error.status_code
    if isinstance(error, ClientDisconnect):
        return ClientDisconnected.status_code
    return 422 if isinstance(error, RequestValidationError) else 500


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc)


async def _unsupported_task(request: Request, exc: Exception) -> JSONResponse:
    return error_response(NotImplementedTask(str(exc) or "this model does not support the task"))


async def _client_disconnect(request: Request, exc: Exception) -> JSONResponse:
    return error_response(ClientDisconnected("the client disconnected while sending the request"))


# The longest input a 422 echoes back; longer strings are cut, containers and bytes left out.
MAX_ECHOED_INPUT_CHARS = 200


def _echoable(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _encodable(text: str) -> str:
    """`text` with any lone surrogate replaced, so that it can be written as UTF-8."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _echoed(value: str) -> str:
    """A client's string as a 422 echoes it: at most MAX_ECHOED_INPUT_CHARS, encodable."""
    if len(value) > MAX_ECHOED_INPUT_CHARS:
        value = value[:MAX_ECHOED_INPUT_CHARS] + "…"
    return _encodable(value)


def validation_detail(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's 422 `detail`, made JSON-safe: type, loc, msg, and the input when it is short and scalar."""
    detail = []
    for error in errors:
        item: dict[str, Any] = {
            "type": str(error.get("type", "value_error")),
            "loc": [part if isinstance(part, int) else _echoed(str(part)) for part in error.get("loc", ())],
            "msg": _encodable(str(error.get("msg", ""))),
        }
        value = error.get("input")
        if _echoable(value):
            item["input"] = _echoed(value) if isinstance(value, str) else value
        detail.append(item)
    return detail


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": validation_detail(exc.errors())})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    return json_error(exc.status_code, error_type, str(exc.detail), dict(exc.headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    """Map our typed errors (and Starlette's 404/405/400) to the one error shape, and 422s to a safe one.

    Unexpected exceptions are caught, logged once with the request id and answered 500 by
    `service.middleware.RequestContext`, not here: Starlette's catch-all handler re-raises.
    """
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(UnsupportedTask, _unsupported_task)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(RequestValidationError, _validation_error)
