"""OpenAI's error shape on the /v1 routes, in one place: every error answer under /v1/ is rewritten.

The service answers errors as `{"error": {"type", "message"}}` and request-field validation in FastAPI's
`{"detail": [...]}`; OpenAI's clients read `{"error": {"message", "type", "param", "code"}}`. The status
code stays the native API's. `type` is OpenAI's class of error; `code` is the native error type
(`queue_full`, `invalid_image`, ...), so nothing the native answer said is lost. A middleware (not the
exception handlers) does this, so errors raised in other middleware (401, 413, the last-resort 500) are
rewritten too.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceError

OPENAI_PREFIX = "/v1/"


class UnsupportedParameter(ServiceError):
    """A parameter mmserve understands but does not do (`dimensions`, token ids, http image URLs)."""

    status_code = 400
    error_type = "unsupported_parameter"


class InvalidRequest(ServiceError):
    """A well-formed request the served model cannot answer (no image for a model that needs one, ...)."""

    status_code = 400
    error_type = "invalid_request"


class ModelNotFound(ServiceError):
    status_code = 404
    error_type = "model_not_found"


def openai_type(status_code: int) -> str:
    """OpenAI's error class for a status code."""
    if status_code == 401:
        return "authentication_error"
    if status_code == 429:
        return "rate_limit_error"
    if status_code >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error(status_code: int, body: Any) -> dict[str, Any]:
    """The OpenAI error object for a native error body (or FastAPI's 422 `detail`)."""
    param: str | None = None
    code: str | None = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        message = str(error.get("message", ""))
        code = error.get("type")
        param = error.get("param")
    elif isinstance(body, dict) and isinstance(body.get("detail"), list):
        messages, params = [], []
        for problem in body["detail"]:
            location = [str(part) for part in problem.get("loc", ()) if part != "body"]
            params.append(_param_name(location))
            messages.append(f"{params[-1]}: {problem.get('msg')}" if location else str(problem.get("msg")))
        message = "; ".join(messages)
        param = next((p for p in params if p), None)
        code = "invalid_value"
    elif isinstance(body, dict) and "detail" in body:
        message = str(body["detail"])
    else:
        message = json.dumps(body)
    return {"error": {"message": message, "type": openai_type(status_code), "param": param, "code": code}}


def _param_name(location: list[str]) -> str:
    """["input", "list[...]", "2", "str"] → "input[2]": the field and its list indices, as OpenAI names them."""
    name = location[0] if location else ""
    return name + "".join(f"[{part}]" for part in location[1:] if part.isdigit())


class OpenAIErrorShape:
    """Rewrite JSON error answers under /v1/ into OpenAI's error shape (status and headers kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(OPENAI_PREFIX):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def rewriting_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the body is complete
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            headers = MutableHeaders(scope=start)
            if headers.get("content-type", "").startswith("application/json"):
                with contextlib.suppress(ValueError):  # not JSON after all: passed on as it is
                    body = json.dumps(openai_error(start["status"], json.loads(body))).encode()
                headers["content-length"] = str(len(body))
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, rewriting_send)
