"""The private path every kind of work goes through: a request's record, admission, its read, preparation in
the decode pool, submission and waiting, or a stream. `Serving` (`service.serving.serving`) builds each
public method from these; a new kind of work (text-to-image's `images` / `images_stream`) does the same.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

from model import Task
from service.batching import Item, Reservation
from service.engine import Engine
from service.errors import Timeout
from service.runtime import Runtime
from service.serving.call import Call, Disconnected, ended_status
from service.serving.stream import Convert, Stream
from service.serving.types import Read

T = TypeVar("T")
U = TypeVar("U")


class Core:
    """The steps of a request's life, each done once here for every kind of work."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings

    def model_name(self, task: Task) -> str:
        return self.runtime.model_name(task)

    def serves(self, task: Task) -> bool:
        engine = self.runtime.engine
        return engine is not None and task in engine.tasks

    async def in_pool(self, work: Callable[[], T]) -> T:
        """Run `work` in the decode pool (off the event loop and the inference thread)."""
        return await self.runtime.in_pool(work)

    @asynccontextmanager
    async def _call(self, task: Task, client: Disconnected) -> AsyncIterator[Call]:
        """The request's record; counted with its outcome when it ends (by its stream, for a stream)."""
        call = Call(task, self.runtime.metrics, self.settings.request_timeout_s, client)
        try:
            yield call
        except BaseException as e:
            call.end(ended_status(e))
            raise
        if not call.streaming:
            call.end(200)

    @contextmanager
    def _admit(self, task: Task, count: int = 1) -> Iterator[Reservation[Any, Any]]:
        """Room for `count` items of `task`, if the service takes them now (else 503, 501 or 429)."""
        self.runtime.ensure_ready().check_supported(task)
        with self.runtime.batchers[task].reserve(count) as reservation:
            yield reservation

    async def _read(self, call: Call, read: Read[T]) -> T:
        """The route's parsing of the request, under its deadline (504)."""
        try:
            async with asyncio.timeout(call.left_s()):
                return await read()
        except TimeoutError as e:
            raise Timeout("reading and decoding the request took longer than the request timeout") from e

    async def _prepare(self, call: Call, *works: Callable[[Engine], Any]) -> list[Any]:
        """Run each work on the engine in the decode pool, all at once, under the deadline; the first error
        raises (and the results of the others are dropped). Adds the time taken to the call's decode time."""
        engine = self.runtime.ensure_ready()
        started = time.monotonic()
        try:
            async with asyncio.timeout(call.left_s()):
                results = await asyncio.gather(*(self.in_pool(functools.partial(w, engine)) for w in works))
        except TimeoutError as e:
            raise Timeout("reading and decoding the request took longer than the request timeout") from e
        finally:
            call.decode_s += time.monotonic() - started
        return list(results)

    async def _run_submitted(self, call: Call, items: Sequence[Item[Any, Any]]) -> list[Any]:
        """The items' outputs in order; on a timeout (504), a disconnect (499) or a failure the rest are dropped."""
        waiters = [asyncio.wrap_future(item.future) for item in items]
        for waiter in waiters:  # mark late failures as seen: their request has already been answered
            waiter.add_done_callback(lambda w: w.cancelled() or w.exception())
        try:
            await call.until(waiters)
            return [waiter.result() for waiter in waiters]
        finally:
            for item in items:  # a no-op for finished items; queued ones are skipped, running ones dropped
                if not item.future.done():
                    item.abandon()

    async def _stream(
        self, call: Call, item: Item[Any, Any], updates: asyncio.Queue[Any], convert: Convert[U]
    ) -> Stream[U]:
        stream = Stream(call, item, updates, convert)
        await stream.start()
        return stream
