"""Several submitted items as one stream, an update per item in order: a long recording's chunks, streamed.

The chunks of one recording are submitted at once and decode together as rows of the same batches; the
stream gives one update per chunk, in order of time, as soon as that chunk and every earlier one are done
(`convert(index, result)`, which says which update is the last; with no items, `convert(0, None)` makes the
only one). It
keeps the contract of every stream (`service.serving.stream.Updates`): `start()` waits for the first update watching the
client and the deadline, so an error until then keeps its own status; the request is counted once, when
the stream ends (its last update, an error, `finish()` or `close()`), and ending early abandons the items
still queued or decoding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from service.batching import Item
from service.serving.call import Call
from service.serving.stream import Updates

U = TypeVar("U")

ConvertChunk = Callable[[int, Any], tuple[U, bool]]  # (item index, its result or None after the last) → (update, last?)


class ChunkStream(Updates[U]):
    """The typed updates of several submitted items, one per item, in their order."""

    def __init__(self, call: Call, items: Sequence[Item[Any, Any]], convert: ConvertChunk[U]) -> None:
        super().__init__(call, list(items))
        self._convert = convert
        self._waiters = [asyncio.wrap_future(item.future) for item in items]
        for waiter in self._waiters:  # late failures are seen: the stream may have ended already
            waiter.add_done_callback(lambda w: w.cancelled() or w.exception())
        self._next = 0
        self._first: tuple[U, bool] | None = None

    async def _wait_first(self) -> None:
        self._first = await self._take_next()

    async def _take(self) -> tuple[U, bool]:
        taken, self._first = self._first, None
        return taken if taken is not None else await self._take_next()

    async def _take_next(self) -> tuple[U, bool]:
        index = self._next
        self._next += 1
        if index >= len(self._waiters):
            return self._convert(index, None)
        waiter = self._waiters[index]
        await self.call.until([waiter])
        return self._convert(index, waiter.result())
