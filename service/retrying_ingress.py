"""An ASGI app in front of model replicas: each request forwarded whole, retried once if its replica is lost.

Under Ray Serve (service.ray_ingress) this is the application's ingress: Ray's proxy hands it every HTTP
request, it reads the body and sends the request to a model replica (`send_to_replica`, a handle call),
and passes the answer back as it comes. mmserve's requests are idempotent inference, so when the replica
dies (or cannot be reached) before the answer begins, the request goes once more to another replica; if
that one is lost too, the client gets mmserve's JSON 503 with `Retry-After` (`replica_lost`), never a bare
500. A streamed answer is retried only while nothing of it has been sent: the replica's first part carries
the status with the first event. A stream whose replica dies after that ends with an error event, as
mmserve ends a stream on any error (`event: error`; on /v1, OpenAI's `data: {"error": ...}`); another body
cut short is cut off with its connection, so the client cannot take it for whole. Errors of the ingress's
own (413, 429, 503) have the same shapes as the model app's, OpenAI's under /v1/.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable

import orjson
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from service.asgi_forward import ForwardedRequest, ResponseStart
from service.errors import PayloadTooLarge, ServiceError, error_response
from service.middleware import body_limit
from service.openai.errors import OPENAI_PREFIX, OpenAIErrorShape, openai_error
from service.routes.streaming import sse, stream_error

logger = logging.getLogger(__name__)

RETRIED_HEADER = "X-MMServe-Retried"  # on an answer that came from a second replica: for operators and tests
RETRY_AFTER_S = 1.0  # the other replicas answer at once; the lost one's replacement takes longer

Parts = AsyncGenerator[ResponseStart | bytes, None]


class ReplicaLost(ServiceError):
    """The replica answering a request died or cannot be reached (raised by `send_to_replica`'s parts)."""

    status_code = 503
    error_type = "replica_lost"


class RetryingIngress:
    """Forward each HTTP request to a replica through `send_to_replica`; `retries` more tries on `ReplicaLost`."""

    def __init__(
        self,
        send_to_replica: Callable[[ForwardedRequest], Parts],
        max_upload_bytes: int,
        larger: dict[str, int] | None = None,
        retries: int = 1,
    ) -> None:
        self._send_to_replica = send_to_replica
        # The model app's own body limits (service.middleware.BodySizeLimit): the whole body is read here first.
        self._max_upload_bytes = max_upload_bytes
        self._larger = larger or {}
        self._retries = retries

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan of its own: the model lives in the replicas
        try:
            body = await self._read_body(scope, receive)
            if body is None:
                return  # the client left while sending it
            start, parts, tries = await self._first_part(ForwardedRequest.of(scope, body))
        except ServiceError as error:
            await OpenAIErrorShape(error_response(error))(scope, receive, send)
            return
        except Exception:
            logger.exception("the ingress failed to forward %s %s", scope["method"], scope["path"])
            await OpenAIErrorShape(error_response(ServiceError("internal server error")))(scope, receive, send)
            return
        headers = start.headers + ([(RETRIED_HEADER.lower().encode(), str(tries - 1).encode())] if tries > 1 else [])
        await send({"type": "http.response.start", "status": start.status, "headers": headers})
        await send({"type": "http.response.body", "body": start.body, "more_body": start.more_body})
        if start.more_body:
            await self._rest(scope, start, parts, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        headers = Headers(scope=scope)
        limit = body_limit(headers, self._larger.get(scope["path"], self._max_upload_bytes))
        too_large = PayloadTooLarge(f"the request body is larger than {limit} bytes")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > limit:
                raise too_large
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _first_part(self, request: ForwardedRequest) -> tuple[ResponseStart, Parts, int]:
        """The answer's first part, from a second replica if the first is lost before it (and the tries made)."""
        for tries in range(1, self._retries + 2):
            parts = self._send_to_replica(request)
            try:
                start = await anext(parts)
            except ReplicaLost as lost:
                await parts.aclose()
                cause = type(lost.__cause__).__name__
                logger.warning("%s %s: try %d lost its replica (%s)", request.method, request.path, tries, cause)
                continue
            except BaseException:
                await parts.aclose()
                raise
            assert isinstance(start, ResponseStart)
            return start, parts, tries
        raise ReplicaLost("the replicas that took this request stopped before answering; retry", RETRY_AFTER_S)

    async def _rest(self, scope: Scope, start: ResponseStart, parts: Parts, send: Send) -> None:
        """The body after its first chunk; if the replica is lost now, an event stream ends on an error event."""
        try:
            async for chunk in parts:
                assert isinstance(chunk, bytes)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ReplicaLost as lost:
            logger.warning("%s: the replica was lost mid-answer (%s)", scope["path"], type(lost.__cause__).__name__)
            if not _is_event_stream(start.headers):
                raise  # the connection is closed under the body: nothing else says that it is cut short
            error = ReplicaLost("the replica answering this stream stopped; retry the request", RETRY_AFTER_S)
            await send({"type": "http.response.body", "body": stream_error_event(scope["path"], error)})
            return
        finally:
            await parts.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def stream_error_event(path: str, error: ServiceError) -> bytes:
    """How mmserve ends a stream on an error: an `error` event; on /v1, OpenAI's `data: {"error": ...}`."""
    if path.startswith(OPENAI_PREFIX):
        return b"data: " + orjson.dumps(openai_error(error.status_code, {"error": stream_error(error)})) + b"\n\n"
    return sse("error", {"error": stream_error(error)})


def _is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"content-type" and value.startswith(b"text/event-stream") for name, value in headers)
