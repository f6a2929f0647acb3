"""Server-sent events for streamed text: a `token` event per decoded piece, then `done` (or `error`).

    event: token
    data: {"index": 0, "text": "a"}

    event: done
    data: {"caption": "a large red circle", "model": ..., "timings": {...}}

Serving's stream has already had its first update when the response starts, so an error until then (a
full queue, a timeout, a bad input) keeps its own status code; one after it arrives as an `error` event
(and the request is counted with that error's status). `EventStream` closes the stream however the
response ends: a client that leaves mid-stream stops its decoding and is counted 499, with no error.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.errors import ServiceError
from service.serving import Stream, TextUpdate, Updates

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStream(StreamingResponse):
    """An event-stream response over a serving stream, which it closes when the response ends, however."""

    def __init__(self, events: AsyncIterator[bytes], stream: Updates[Any]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stream.close()  # a no-op once it ended; else its client left: decoding stops, counted 499


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def token_events(stream: Stream[TextUpdate[Any]], reply: Callable[[Any], dict[str, Any]]) -> EventStream:
    """`token` events as the text decodes, then `done` with `reply(result)` (the non-streamed response's body)."""

    async def events() -> AsyncIterator[bytes]:
        index = 0
        try:
            async for update in stream:
                if update.delta:
                    yield sse("token", {"index": index, "text": update.delta})
                    index += 1
                if update.done is not None:
                    yield sse("done", reply(update.done))
        except Exception as e:
            yield sse("error", {"error": stream_error(e)})

    return EventStream(events(), stream)


def stream_error(error: Exception) -> dict[str, str]:
    """A failure after the response started, as the error shape's object (an unexpected one logged once)."""
    if isinstance(error, ServiceError):
        return {"type": error.error_type, "message": error.message}
    logger.error("a stream failed", exc_info=error)
    return {"type": "internal_error", "message": "internal server error"}
