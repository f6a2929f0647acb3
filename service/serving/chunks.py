"""Several submitted items as one stream, an update per item in order: a long recording's chunks, streamed.

The chunks of one recording are submitted at once and decode together as rows of the same batches; the
stream gives one update per chunk, in order of time, as soon as that chunk and every earlier one are done
(`convert(index, result)`, which says which update is the last; with no items, `convert(0, None)` makes the
only one). It
keeps `Stream`'s contract (`service.serving.stream`): `start()` waits for the first update watching the
client and the deadline, so an error until then keeps its own status; the request is counted once, when
the stream ends (its last update, an error, `finish()` or `close()`), and ending early abandons the items
still queued or decoding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from service.batching import Item
from service.errors import ClientDisconnected
from service.serving.call import Call, ended_status

U = TypeVar("U")

ConvertChunk = Callable[[int, Any], tuple[U, bool]]  # (item index, its result or None after the last) → (update, last?)


class ChunkStream(Generic[U]):
    """The typed updates of several submitted items, one per item, in their order."""

    def __init__(self, call: Call, items: Sequence[Item[Any, Any]], convert: ConvertChunk[U]) -> None:
        call.streaming = True
        self.call = call
        self._items = list(items)
        self._convert = convert
        self._waiters = [asyncio.wrap_future(item.future) for item in items]
        for waiter in self._waiters:  # late failures are seen: the stream may have ended already
            waiter.add_done_callback(lambda w: w.cancelled() or w.exception())
        self._next = 0
        self._first: tuple[U, bool] | None = None
        self._ended = False

    async def start(self) -> None:
        """Wait for the first update, watching the client (499) and the deadline (504); errors raise."""
        try:
            self._first = await self._take()
        except BaseException as e:
            self._end(ended_status(e))
            raise

    def __aiter__(self) -> ChunkStream[U]:
        return self

    async def __anext__(self) -> U:
        if self._ended:
            raise StopAsyncIteration
        try:
            taken, self._first = self._first, None
            update, last = taken if taken is not None else await self._take()
        except asyncio.CancelledError:
            raise  # the client left: the response closes the stream
        except BaseException as e:
            self._end(ended_status(e))
            raise
        if last:
            self._end(200)
        return update

    def finish(self) -> None:
        self._end(200)

    def close(self) -> None:
        self._end(ClientDisconnected.status_code)

    async def _take(self) -> tuple[U, bool]:
        index = self._next
        self._next += 1
        if index >= len(self._waiters):
            return self._convert(index, None)
        waiter = self._waiters[index]
        await self.call.until([waiter])
        return self._convert(index, waiter.result())

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
