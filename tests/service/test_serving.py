"""The serving layer without HTTP: a Runtime on the tiny built-in model, driven through `Serving`'s methods.

Whole and streamed generations agree with the model, streams end once with their real outcome (a stream
left before its first update stops its item and is counted 499), timings are never negative, embeddings
count their tokens from the prepared ids, and a spoken question with a broken image fails before anything
is transcribed.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model import MultimodalModel, load_model
from service.errors import ClientDisconnected, InvalidImage
from service.metrics import Metrics
from service.runtime import Runtime, State
from service.serving import EmbedAsk, Generation, GenerationAsk, Serving, Stream, TranscriptionAsk, given
from service.settings import Settings
from tests.service.conftest import LoadModel
from tests.service.test_continuous_batching import slow_steps
from tests.support.audio import encode, speech
from tests.support.server import encode_image, noise_image

__all__ = ["slow_steps"]  # the fixture, used here by name

pytestmark = pytest.mark.anyio


async def stays() -> None:
    """A client that never leaves."""
    await asyncio.Event().wait()


@asynccontextmanager
async def running(checkpoint: Path, **overrides: Any) -> AsyncIterator[Serving]:
    defaults = {"model": str(checkpoint), "device": "cpu", "torch_threads": 1, "exit_on_failure": False}
    defaults |= {"generate_model": "none"}  # no text-to-image unless a test names a generator
    settings = Settings(**{**defaults, **overrides})
    runtime = Runtime(settings, Metrics())
    runtime.start()
    while runtime.state is State.LOADING:
        await asyncio.sleep(0.02)
    assert runtime.state is State.OK
    try:
        yield Serving(runtime)
    finally:
        await runtime.drain(timeout_s=5)


def sample(serving: Serving, name: str, **labels: str) -> float:
    return serving.runtime.metrics.registry.get_sample_value(name, labels) or 0.0


def requests(serving: Serving, task: str, status: int) -> float:
    return sample(serving, "mmserve_requests_total", task=task, status=str(status))


@pytest.fixture(scope="module")
def reference(tiny_checkpoint_dir: Path) -> MultimodalModel:
    return load_model(str(tiny_checkpoint_dir), "cpu")


async def test_whole_and_streamed_generations_equal_the_model(checkpoint: Path, reference: MultimodalModel) -> None:
    image = noise_image(1)
    ask = GenerationAsk("caption", encode_image(image), max_new_tokens=12)
    async with running(checkpoint) as serving:
        whole = await serving.generate(given(ask), stays, "caption")
        assert whole.text == reference.caption([image], 12)[0]
        stream = await serving.generate_stream(given(ask), stays, "caption")
        updates = [update async for update in stream]
        last = updates[-1].done
        assert isinstance(last, Generation) and all(u.done is None for u in updates[:-1])
        assert "".join(u.delta for u in updates) == last.text == whole.text
        for timings in (whole.timings, last.timings):
            assert min(timings.queue_ms, timings.inference_ms, timings.decode_ms, timings.total_ms) >= 0
        assert requests(serving, "caption", 200) == 2
        question = "what colour is the square?"
        answer = await serving.generate(given(GenerationAsk("vqa", encode_image(image), question)), stays, "vqa")
        assert answer.text == reference.answer([image], [question])[0]


async def test_a_stream_left_before_its_first_update_stops_and_counts_499(
    checkpoint: Path, slow_steps: Callable[[float], list[int]]
) -> None:
    slow_steps(0.02)
    async with running(checkpoint, caption_max_batch_size=1) as serving:
        busy = await serving.generate_stream(
            given(GenerationAsk("caption", encode_image(noise_image(2)), max_new_tokens=40)), stays, "caption"
        )
        left = asyncio.Event()

        async def leaves() -> None:
            await left.wait()

        queued = asyncio.ensure_future(
            serving.generate_stream(
                given(GenerationAsk("caption", encode_image(noise_image(3)), max_new_tokens=40)), leaves, "caption"
            )
        )
        batcher = serving.runtime.batchers["caption"]
        while batcher.pending() == 0:  # queued behind the running one
            await asyncio.sleep(0.005)
        left.set()
        with pytest.raises(ClientDisconnected):
            await queued
        assert requests(serving, "caption", 499) == 1
        busy.close()  # the running one's client leaves too, mid-stream
        while batcher.in_flight() or sample(serving, "mmserve_running_sequences"):
            await asyncio.sleep(0.01)
        assert requests(serving, "caption", 499) == 2
        assert requests(serving, "caption", 200) == 0


async def test_a_stream_records_its_end_not_its_start(
    checkpoint: Path, slow_steps: Callable[[float], list[int]]
) -> None:
    slow_steps(0.01)
    async with running(checkpoint) as serving:
        stream = await serving.generate_stream(
            given(GenerationAsk("caption", encode_image(noise_image(4)), max_new_tokens=30)), stays, "caption"
        )
        loop = asyncio.get_running_loop()
        first = loop.time()
        count = sum([1 async for _ in stream])
        length = loop.time() - first
        assert count >= 2
        assert sample(serving, "mmserve_request_duration_seconds_sum", task="caption") >= length


async def test_a_stream_ending_in_an_error_is_counted_with_it(
    checkpoint: Path, slow_steps: Callable[[float], list[int]]
) -> None:
    slow_steps(0.02)
    async with running(checkpoint, request_timeout_s=0.3) as serving:
        stream: Stream[Any] = await serving.generate_stream(
            given(GenerationAsk("caption", encode_image(noise_image(5)), max_new_tokens=100)), stays, "caption"
        )
        with pytest.raises(Exception) as failed:
            async for _ in stream:
                pass
        assert getattr(failed.value, "status_code", None) == 504
        assert requests(serving, "caption", 504) == 1 and requests(serving, "caption", 200) == 0


@pytest.mark.parametrize("freeze", [True, False])
async def test_a_ready_service_leaves_what_loading_made_out_of_garbage_collections(
    checkpoint: Path, reference: MultimodalModel, freeze: bool
) -> None:
    gc.unfreeze()  # (the test process's own objects: other tests' servers run with MMSERVE_GC_FREEZE=false)
    try:
        async with running(checkpoint, gc_freeze=freeze) as serving:
            frozen = gc.get_freeze_count()
            assert (frozen > 10_000) if freeze else frozen == 0  # the model's modules, tensors, tokenizer, ...
            embedded = await serving.embed(given(EmbedAsk(["a red circle"])), stays)  # and it serves
            expected = reference.embed_text(["a red circle"])[0].numpy()
            np.testing.assert_allclose(embedded.vectors[0], expected, atol=1e-5)
    finally:
        gc.unfreeze()


async def test_embeddings_keep_their_order_and_count_tokens_from_the_ids(
    checkpoint: Path, reference: MultimodalModel
) -> None:
    texts = ["a red circle", "two blue squares on a green field"]
    image = noise_image(6)
    async with running(checkpoint) as serving:
        embedded = await serving.embed(given(EmbedAsk([texts[0], encode_image(image), texts[1]])), stays)
        assert len(embedded.vectors) == 3
        np.testing.assert_allclose(embedded.vectors[0], reference.embed_text([texts[0]])[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(embedded.vectors[1], reference.embed_image([image])[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(embedded.vectors[2], reference.embed_text([texts[1]])[0].numpy(), atol=1e-5)
        assert embedded.text_tokens == sum(reference.count_tokens(texts))
        with pytest.raises(InvalidImage) as bad:
            await serving.embed(given(EmbedAsk(["x", b"not an image"], image_param="input[{}].image_url.url")), stays)
        assert bad.value.param == "input[1].image_url.url"
        assert serving.runtime.batchers["embed_text"].in_flight() == 0  # the text's slot was given back


async def test_a_spoken_question_with_a_bad_image_fails_before_any_transcription(
    tiny_audio_checkpoint_dir: Path, load_once: LoadModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_once(str(tiny_audio_checkpoint_dir), "cpu", None)
    heard: list[int] = []
    real_start = model.start_audio_encoding  # type: ignore[attr-defined]  # every audio encoded, stepwise or whole

    def start_audio_encoding(audios: Sequence[Any]) -> Any:
        heard.append(len(audios))
        return real_start(audios)

    monkeypatch.setattr(model, "start_audio_encoding", start_audio_encoding)
    wav = encode(*speech("what colour is the circle?"))
    async with running(tiny_audio_checkpoint_dir) as serving:
        heard.clear()  # the warm-up's
        with pytest.raises(InvalidImage):
            await serving.generate(given(GenerationAsk("vqa", b"not an image", question_audio=wav)), stays, "vqa")
        assert heard == []
        transcript = await serving.transcribe(given(TranscriptionAsk(wav)), stays)
        assert heard == [1] and transcript.duration_s > 0
        streamed = await serving.transcribe_stream(given(TranscriptionAsk(wav)), stays)
        updates = [update async for update in streamed]
        assert updates[-1].done is not None and updates[-1].done.text == transcript.text
        assert "".join(u.delta for u in updates) == transcript.text
