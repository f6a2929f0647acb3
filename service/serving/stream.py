"""One item's updates as the inference thread makes them, as an async iterator of typed updates.

The inference thread calls the item's sink with each update (`sink()`); the item's future, when done, is
queued behind them, so its error (or, for a model that produces its result as a whole, its only result)
comes in order. `start()` waits for the first update while watching the client, so that what fails until
then (a full queue, a timeout, a bad input, a model error) keeps its own status. After that, iterating
gives the typed updates (`convert` makes each from the model's update, or from the item's whole result)
until the last one; an error raises once, and ends the stream.

A stream is ended exactly once, with its real outcome, and that is when its request is counted: its last
update (200), an error (its status), `finish()` (the caller stopped early, e.g. at a stop string: 200) or
`close()` (the client left: 499). Ending it early abandons the item, so its decoding stops at the next
step. Nothing here is an async generator: cancelling a pending `__anext__` (the client left mid-stream)
only cancels a queue read, which is always safe, and `close()` is synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from service.batching import Item
from service.errors import ClientDisconnected
from service.serving.call import Call, ended_status

U = TypeVar("U")

Convert = Callable[[Any], tuple[U, bool]]  # a model's update, or the item's whole result → (typed update, last?)


def sink(queue: asyncio.Queue[Any]) -> Callable[[Any], None]:
    """What the inference thread calls with each update: puts it on `queue`, on the queue's event loop."""
    loop = asyncio.get_running_loop()

    def put(update: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is closed (the server stopped): nobody reads
            loop.call_soon_threadsafe(queue.put_nowait, update)

    return put


class Stream(Generic[U]):
    """The typed updates of one submitted item; counts its request when it ends."""

    def __init__(self, call: Call, item: Item[Any, Any], updates: asyncio.Queue[Any], convert: Convert[U]) -> None:
        call.streaming = True
        self.call = call
        self._item = item
        self._updates = updates
        self._convert = convert
        self._first: Any = None
        self._ended = False
        put = sink(updates)
        item.future.add_done_callback(put)

    async def start(self) -> None:
        """Wait for the first update, watching the client (499) and the deadline (504); errors raise."""
        getter = asyncio.ensure_future(self._updates.get())
        try:
            await self.call.until([getter])
        except BaseException as e:
            self._end(ended_status(e))
            raise
        self._first = getter.result()

    def __aiter__(self) -> Stream[U]:
        return self

    async def __anext__(self) -> U:
        if self._ended:
            raise StopAsyncIteration
        try:
            entry, self._first = self._first, None
            if entry is None:
                entry = await self._next()
            update, last = self._convert(self._unwrap(entry))
        except asyncio.CancelledError:
            raise  # the client left: the response closes the stream
        except BaseException as e:
            self._end(ended_status(e))
            raise
        if last:
            self._end(200)
        return update

    def finish(self) -> None:
        """The caller has what it wants (a stop string matched): the rest is dropped, the request counted 200."""
        self._end(200)

    def close(self) -> None:
        """The client left (or the response ended without reading on): drop the rest; counted 499 if not ended."""
        self._end(ClientDisconnected.status_code)

    async def _next(self) -> Any:
        try:
            async with asyncio.timeout(self.call.left_s()):
                return await self._updates.get()
        except TimeoutError:
            raise self.call.timeout() from None

    def _unwrap(self, entry: Any) -> Any:
        """An update as it came, or the item's result when its future is what came (raising its error)."""
        if not isinstance(entry, Future):
            return entry
        if entry.cancelled():
            raise ClientDisconnected("the client disconnected")
        if (error := entry.exception()) is not None:
            raise error
        return entry.result()

    def _end(self, status: int) -> None:
        if self._ended:
            return
        self._ended = True
        if not self._item.future.done():
            self._item.abandon()  # queued: skipped; running: dropped at the next step
        if self.call.timings is None:
            self.call.time([self._item])  # for the request's log line
        self.call.end(status)
