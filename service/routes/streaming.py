"""Server-sent events for generated text: a `token` event per decoded token, then `done` (or `error`).

    event: token
    data: {"index": 0, "text": "a"}

    event: done
    data: {"caption": "a large red circle", "model": ..., "timings": {...}}

The first update is awaited before the response starts, so an error until then (a full queue, a
timeout, a model failure) keeps its own status code; one after it arrives as an `error` event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from model.api import Update
from service.errors import ClientDisconnected, ServiceError

logger = logging.getLogger(__name__)


async def first_update(updates: AsyncGenerator[Update], disconnected: Callable[[], Awaitable[None]]) -> Update:
    """The stream's first update; a client that leaves before it drops the request."""
    getter = asyncio.ensure_future(anext(updates))
    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            await updates.aclose()
            raise ClientDisconnected("the client disconnected")
        return getter.result()
    finally:
        watcher.cancel()


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def event_stream(
    first: Update, updates: AsyncGenerator[Update], reply: Callable[[str], dict[str, Any]]
) -> AsyncIterator[bytes]:
    """The events of one generation; `reply(text)` is the final event's body (the non-streamed response)."""
    index = 0
    update = first
    try:
        while True:
            if update.delta:
                yield sse("token", {"index": index, "text": update.delta})
                index += 1
            if update.finished:
                yield sse("done", reply(update.text or ""))
                return
            update = await anext(updates)
    except ServiceError as e:
        yield sse("error", {"error": {"type": e.error_type, "message": e.message}})
    except Exception:
        logger.exception("a streamed generation failed")
        yield sse("error", {"error": {"type": "internal_error", "message": "internal server error"}})
    finally:
        await updates.aclose()
