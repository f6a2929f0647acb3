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


class Updates(Generic[U]):
    """What every stream of typed updates shares: it ends exactly once, and then its request is counted.

    A subclass says how the first update is awaited (`_wait_first`, watching the client and the deadline)
    and how each update is taken (`_take`: the typed update and whether it is the last).
    """

    def __init__(self, call: Call, items: list[Item[Any, Any]]) -> None:
        call.streaming = True
        self.call = call
        self._items = items
        self._ended = False

    async def start(self) -> None:
        """Wait for the first update, watching the client (499) and the deadline (504); errors raise."""
        try:
            await self._wait_first()
        except BaseException as e:
            self._end(ended_status(e))
            raise

    def __aiter__(self) -> Updates[U]:
        return self

    async def __anext__(self) -> U:
        if self._ended:
            raise StopAsyncIteration
        try:
            update, last = await self._take()
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

    async def _wait_first(self) -> None:
        raise NotImplementedError

    async def _take(self) -> tuple[U, bool]:
        raise NotImplementedError

    def _end(self, status: int) -> None:
        if self._ended:
            return
        self._ended = True
        for item in self._items:
            if not item.future.done():
                item.abandon()  # queued: skipped; running: dropped at the next step
        if self.call.timings is None:
            self.call.time(self._items)  # for the request's log line
        self.call.end(status)


class Stream(Updates[U]):
    """The typed updates of one submitted item; counts its request when it ends."""

    def __init__(self, call: Call, item: Item[Any, Any], updates: asyncio.Queue[Any], convert: Convert[U]) -> None:
        super().__init__(call, [item])
        self._updates = updates
        self._convert = convert
        self._first: Any = None
        item.future.add_done_callback(sink(updates))

    async def _wait_first(self) -> None:
        getter = asyncio.ensure_future(self._updates.get())
        await self.call.until([getter])
        self._first = getter.result()

    async def _take(self) -> tuple[U, bool]:
        entry, self._first = self._first, None
        if entry is None:
            entry = await self._next()
        return self._convert(self._unwrap(entry))

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
