"""Pure ASGI middleware: a request id on every request, a body-size limit, and the last-resort 500.

`BodySizeLimit` refuses a body over the limit from its Content-Length header without reading it, and
counts the bytes of bodies that arrive without one (chunked), failing as soon as the count passes the
limit. `RequestContext` gives each request an id (`X-Request-ID`, kept when the client sends one) and
turns an unexpected exception into one logged line and a 500 in the error shape.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, error_response, json_error
from service.logs import RequestLog, current_request, log_request, request_fields

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# Room for the JSON or multipart framing and the small fields around the image.
_FRAMING_BYTES = 64 * 1024


def body_limit(headers: Headers, upload_bytes: int) -> int:
    """The most bytes a body may have that carries one upload: multipart carries the raw file; JSON carries
    it in base64, a third larger."""
    if headers.get("content-type", "").startswith("multipart/"):
        return upload_bytes + _FRAMING_BYTES
    return upload_bytes * 4 // 3 + _FRAMING_BYTES


class BodySizeLimit:
    """Refuse request bodies larger than one upload (413): an image's, or a path's own (`larger`: audio)."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.larger = larger or {}

    def limit_for(self, headers: Headers, path: str = "") -> int:
        return body_limit(headers, self.larger.get(path, self.max_upload_bytes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.limit_for(headers, scope.get("path", ""))
        too_large = PayloadTooLarge(f"the request body is larger than {limit} bytes")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(too_large)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large
            return message

        await self.app(scope, counting_receive, send)


class RequestContext:
    """Request ids, one log line per request, and a logged 500 for anything nobody else handled."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        request_id = Headers(scope=scope).get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        log = RequestLog()
        current_request.set(log)
        status: int | None = None  # once the response has started

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error in %s %s (request %s)", scope["method"], scope["path"], request_id)
            if status is None:
                response = json_error(500, "internal_error", f"internal server error (request id {request_id})")
                await response(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            address = f"{client[0]}:{client[1]}" if client else None
            fields = request_fields(request_id, scope["method"], scope["path"], status or 500, started, address, log)
            log_request(fields)
