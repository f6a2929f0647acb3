"""Text-to-image in serving: a prompt in, PNG images out, whole (`images`) or with progress (`images_stream`).

The same life as every other kind of work (`service.serving.core`): readiness and support before the body
is read, the read, admission for the request's `n` images (429), their specs prepared in the decode pool
(400 for a size the model cannot make), `n` items submitted to the `text_to_image` batcher (seeds `seed`,
`seed + 1`, ...: each its own generator, so an image is the same alone or batched), then waiting (504 at
the deadline, 499 when the client leaves: the running rows are dropped at the next step) or streaming.
Images and previews are encoded as PNG in the decode pool; the request is counted once, when it ends.

A stream gives typed `ImageProgress` updates: one per denoising step of each image (`index` of `n`, `step`
of `steps`), with a preview PNG when one was due, then the last one carrying the whole `Images`. With
whole-request batching (`MMSERVE_SCHEDULER=static`) the model sends no steps: the stream has only its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from PIL import Image

from model import Task
from model.api import ImageSpec
from service.batching import Item
from service.engine import MAX_SEED, Engine, GeneratedImage
from service.schemas import Timings
from service.serving.call import Call, Disconnected
from service.serving.core import Core
from service.serving.stream import Stream, sink
from service.serving.types import Read

TASK: Task = "text_to_image"


@dataclass(frozen=True)
class ImageAsk:
    """Images to generate from one prompt (the model's defaults where None)."""

    prompt: str
    n: int = 1  # images, seeds seed, seed + 1, ...
    seed: int | None = None  # None: a random one (the response says which)
    steps: int | None = None
    guidance_scale: float | None = None
    size: tuple[int, int] | None = None  # (width, height)
    preview_every: int = 0  # a preview every k steps (streams); 0: none
    previews: int | None = None  # instead of `preview_every`: about this many previews, spread over the steps
    stream: bool = False  # for `images_as_asked`


@dataclass(frozen=True)
class Images:
    pngs: list[bytes]  # one PNG file per image, in order
    seeds: list[int]  # the seed of each (the same request with that seed and n=1 makes the same image)
    steps: int
    guidance_scale: float
    size: tuple[int, int]  # (width, height)
    model: str
    timings: Timings


@dataclass(frozen=True)
class ImageProgress:
    """A streamed generation's news: image `index` has done `step` of `steps`; the last one carries `done`."""

    index: int
    step: int
    steps: int
    preview: bytes | None = None  # a PNG of the model's current estimate of the clean image, when one was due
    done: Images | None = None


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class ImageServing(Core):
    """`images` / `images_stream` / `images_as_asked`: a mixin of `Serving`."""

    def image_sizes(self) -> tuple[tuple[int, int], ...]:
        return self.runtime.ensure_ready().image_sizes()

    async def images(self, read: Read[ImageAsk], client: Disconnected) -> Images:
        result = await self.images_as_asked(read, client, stream=False)
        assert isinstance(result, Images)
        return result

    async def images_stream(self, read: Read[ImageAsk], client: Disconnected) -> ImageStream:
        result = await self.images_as_asked(read, client, stream=True)
        assert isinstance(result, ImageStream)
        return result

    async def images_as_asked(
        self, read: Read[ImageAsk], client: Disconnected, stream: bool | None = None
    ) -> Images | ImageStream:
        """The images whole, or their progress as it comes (`stream` None: as the ask says)."""
        updates: asyncio.Queue[Any] = asyncio.Queue()
        async with self._call(TASK, client) as call:
            self.runtime.ensure_ready().check_supported(TASK)  # 503 / 501 before the body is read
            ask = await self._read(call, read)
            streamed = ask.stream if stream is None else stream
            with self._admit(TASK, ask.n) as slots:
                [specs] = await self._prepare(call, lambda e: _specs(e, ask))
                items = [
                    slots.submit(spec, call.deadline, _tagged(sink(updates), i) if streamed else None)
                    for i, spec in enumerate(specs)
                ]
            if not streamed:
                results = await self._run_submitted(call, items)
                return await self._finished(call, items, results)
            group = _Group(items)
            inner = await self._stream(call, group, updates, _raw)  # type: ignore[arg-type]
            return ImageStream(self, call, items, inner)

    async def _finished(self, call: Call, items: Sequence[Item[Any, Any]], results: Sequence[GeneratedImage]) -> Images:
        """The finished images encoded (decode pool, timed with the decoding), the request's timings."""
        started = time.monotonic()
        pngs = await self.in_pool(lambda: [encode_png(r.image) for r in results])
        call.decode_s += time.monotonic() - started
        first = results[0]
        return Images(
            pngs=pngs,
            seeds=[r.seed for r in results],
            steps=first.steps,
            guidance_scale=first.guidance_scale,
            size=first.image.size,
            model=self.model_name(TASK),
            timings=call.time(items),
        )


class ImageStream:
    """The typed progress of one request's images; ends (and counts the request) after its last update."""

    def __init__(self, serving: ImageServing, call: Call, items: Sequence[Item[Any, Any]], inner: Stream[Any]) -> None:
        self.stream = inner  # what the response closes when it ends
        self._serving = serving
        self._call = call
        self._items = items
        self._done = False

    def __aiter__(self) -> ImageStream:
        return self

    async def __anext__(self) -> ImageProgress:
        if self._done:
            raise StopAsyncIteration
        entry = await self.stream.__anext__()
        if isinstance(entry, list):  # every image finished
            try:
                images = await self._serving._finished(self._call, self._items, entry)
            finally:
                self._done = True
                self.stream.finish()  # counted 200, now that the images are encoded
            last = len(images.pngs) - 1
            return ImageProgress(last, images.steps, images.steps, None, images)
        index, update = entry
        preview = None
        if update.preview is not None and not update.finished:
            image = update.preview
            preview = await self._serving.in_pool(lambda: encode_png(image))
        return ImageProgress(index, update.step, update.steps, preview)

    def close(self) -> None:
        self.stream.close()


def _specs(engine: Engine, ask: ImageAsk) -> list[ImageSpec]:
    """The ask's images: the first with the asked (or a random) seed, the others the next seeds."""
    first = engine.prepare_image_generation(
        ask.prompt, ask.seed, ask.steps, ask.guidance_scale, ask.size, ask.preview_every
    )
    if ask.previews is not None:
        every = max(1, first.steps // (ask.previews + 1)) if ask.previews > 0 else 0
        first = dataclasses.replace(first, preview_every=every)
    return [dataclasses.replace(first, seed=(first.seed + i) % (MAX_SEED + 1)) for i in range(ask.n)]


def _tagged(put: Callable[[Any], None], index: int) -> Callable[[Any], None]:
    """A row's sink: its updates tagged with the image's index."""
    return lambda update: put((index, update))


def _raw(entry: Any) -> tuple[Any, bool]:
    """A stream's entry as it came: `(index, ImageUpdate)`, or the list of finished images (never the last:
    `ImageStream` finishes the stream once they are encoded)."""
    return entry, False


class _Group:
    """A request's items as one for `Stream`: its future is done when every image is (with the list of them)
    or when one fails; abandoning it abandons them all; its phases are the slowest of each."""

    def __init__(self, items: Sequence[Item[Any, Any]]) -> None:
        self.items = list(items)
        self.future: Future[list[Any]] = Future()
        for item in self.items:
            item.future.add_done_callback(self._one_done)

    def _one_done(self, future: Future[Any]) -> None:
        if self.future.done():
            return
        with contextlib.suppress(InvalidStateError):  # set meanwhile, by another thread
            if future.cancelled():
                self.future.cancel()
            elif (error := future.exception()) is not None:
                self.future.set_exception(error)
            elif all(i.future.done() and not i.future.cancelled() for i in self.items):
                self.future.set_result([i.future.result() for i in self.items])

    def abandon(self) -> None:
        for item in self.items:
            if not item.future.done():
                item.abandon()

    @property
    def enqueued_at(self) -> float:
        return min(i.enqueued_at for i in self.items)

    @property
    def started_at(self) -> float:
        return max(i.started_at for i in self.items) if all(i.started_at for i in self.items) else 0.0

    @property
    def finished_at(self) -> float:
        return max(i.finished_at for i in self.items)

    @property
    def batch_size(self) -> int:
        return max(i.batch_size for i in self.items)
