"""Text-to-image in the step loop, without HTTP: the loop of an `InferenceThread` turned by hand (as in
test_scheduler_properties.py) on the tiny random built-in generator, and a whole `Runtime` on its thread.

Images join the running ones between steps and every running image advances one step per turn (one UNet
call); each image equals the one generated alone; a finished image is answered at once; a client that left
or whose deadline passed is dropped at the next turn and frees its row; embeddings run between steps;
progress goes to the item's sink; whole-request batching (`MMSERVE_SCHEDULER=static`) gives the same images;
while other work waits, a turn steps only the images its budget fits, the longest waiting first, to the
same images, and when nothing else waits every image steps every turn.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from model import MultimodalModel
from model.api import ALL_TASKS, UNDERSTANDING_TASKS, ImageSpec, ImageUpdate
from model.image_generator import DiffusionGenerator, load_image_generator
from service import Settings
from service.batching import Batcher, Item
from service.denoising import Denoising
from service.engine import Engine, GeneratedImage
from service.errors import ClientDisconnected, Timeout, UnsupportedSize
from service.metrics import Metrics
from service.runtime import Runtime, State
from service.scheduler import InferenceThread
from service.turn_budget import TurnBudget

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def generator(tiny_generator_dir: Path, text_tower) -> DiffusionGenerator:  # type: ignore[no-untyped-def]
    return load_image_generator(tiny_generator_dir, torch.device("cpu"), None, text_tower=text_tower)


@pytest.fixture(scope="module")
def alone(generator: DiffusionGenerator) -> dict[ImageSpec, np.ndarray]:
    """Each test image generated alone, by the model's own whole-batch call."""
    return {spec: pixels(generator.generate([spec])[0]) for spec in specs_of(generator)}


def specs_of(generator: DiffusionGenerator) -> list[ImageSpec]:
    return [
        generator.image_spec("a large red circle", 11, steps=6, guidance_scale=3.0, preview_every=2),
        generator.image_spec("a small blue square", 12, steps=2, guidance_scale=1.0),
        generator.image_spec("a green triangle above a circle", 13, steps=4, guidance_scale=5.0),
    ]


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


class Loop:
    """An `InferenceThread`'s loop, turned by hand (its thread never started); records each step's rows."""

    def __init__(self, engine: Engine, max_batch_size: int = 4) -> None:
        self.lock = threading.Condition()
        self.metrics = Metrics()
        self.batchers: dict[Any, Batcher[Any, Any]] = {
            task: Batcher(task, max_batch_size, 0, 100, self.lock) for task in sorted(ALL_TASKS)
        }
        self.engine = engine
        self.thread = InferenceThread(lambda: engine, self.batchers, self.lock, self.metrics, print, print)
        self.thread._build_generations(engine)
        self.thread._build_denoising(engine)
        self.rows: list[int] = []  # rows of each denoising step
        self.seeds: list[list[int]] = []  # the seeds of the images each denoising step advanced
        denoising = self.denoising
        if denoising is not None:
            real_step = denoising.state.step

            def step(rows: list[int] | None = None) -> list[ImageUpdate]:
                self.rows.append(len(denoising.state) if rows is None else len(rows))
                self.seeds.append([s.seed for i, s in enumerate(denoising.state.specs) if rows is None or i in rows])
                return real_step(rows)

            denoising.state.step = step  # type: ignore[method-assign]

    @property
    def denoising(self) -> Denoising | None:
        running = self.thread._generations.get("text_to_image")
        return running if isinstance(running, Denoising) else None

    def submit(self, task: str, payload: Any, deadline: float = float("inf"), sink: Any = None) -> Item[Any, Any]:
        with self.batchers[task].reserve(1) as slots:
            return slots.submit(payload, deadline, on_update=sink)

    def turn(self) -> None:
        self.thread._turn(self.engine)
        self.thread._taken = []

    def busy(self) -> bool:
        return any(len(g) for g in self.thread._states) or bool(self.thread._due())

    def metric(self, name: str) -> float:
        for family in text_string_to_metric_families(_exposition(self.metrics)):
            for sample in family.samples:
                if sample.name == name:
                    return float(sample.value)
        raise KeyError(name)


def _exposition(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


@pytest.fixture(scope="module")
def engine(tiny_model: MultimodalModel, generator: DiffusionGenerator) -> Engine:
    return Engine({task: tiny_model for task in UNDERSTANDING_TASKS}, continuous=True, generator=generator)


def test_images_join_between_steps_and_equal_the_images_made_alone(
    engine: Engine, generator: DiffusionGenerator, alone: dict[ImageSpec, np.ndarray]
) -> None:
    loop = Loop(engine)
    first, short, third = specs_of(generator)
    updates: list[ImageUpdate] = []
    items = [loop.submit("text_to_image", first, sink=updates.append)]
    loop.turn()  # the first one joins and takes its first step
    items.append(loop.submit("text_to_image", short))
    loop.turn()  # the second joins: both step
    items.append(loop.submit("text_to_image", third))
    done_at: dict[int, int] = {}
    turn = 2
    while loop.busy():
        loop.turn()
        turn += 1
        for i, item in enumerate(items):
            if item.future.done() and i not in done_at:
                done_at[i] = turn
    assert loop.rows == [1, 2, 3, 2, 2, 2]  # one UNet call per turn for every running image
    assert done_at == {1: 3, 0: 6, 2: 6}  # the 2-step image answered as soon as it was done
    for spec, item in zip((first, short, third), items, strict=True):
        result = item.future.result()
        assert isinstance(result, GeneratedImage)
        assert (result.seed, result.steps, result.guidance_scale) == (spec.seed, spec.steps, spec.guidance_scale)
        assert np.abs(pixels(result.image) - alone[spec]).max() <= 1
        assert item.batch_size == 3  # the most images it denoised with
    assert [(u.step, u.steps, u.finished, u.preview is not None) for u in updates] == [
        (1, 6, False, False), (2, 6, False, True), (3, 6, False, False),
        (4, 6, False, True), (5, 6, False, False), (6, 6, True, False),
    ]  # fmt: skip
    assert updates[-1].image is not None and pixels(updates[-1].image).tolist() == alone[first].tolist()
    assert loop.metric("mmserve_denoise_steps_total") == 6
    assert loop.metric("mmserve_images_generated_total") == 3
    assert loop.metric("mmserve_image_duration_seconds_count") == 3
    assert loop.metric("mmserve_running_images") == 0
    assert all(b.in_flight() == 0 for b in loop.batchers.values())


def test_a_client_that_left_or_ran_out_of_time_is_dropped_at_the_next_turn(
    engine: Engine, generator: DiffusionGenerator, alone: dict[ImageSpec, np.ndarray]
) -> None:
    loop = Loop(engine)
    first, _, third = specs_of(generator)
    kept, left, late = (loop.submit("text_to_image", spec) for spec in (first, third, first))
    loop.turn()
    assert loop.rows == [3]
    left.abandon()  # the client went away
    late.deadline = time.monotonic() - 1  # its deadline passed
    loop.turn()
    assert loop.rows == [3, 1]  # neither computed another step
    assert isinstance(left.future.exception(), ClientDisconnected)
    assert isinstance(late.future.exception(), Timeout)
    assert loop.denoising is not None and len(loop.denoising) == 1 and loop.denoising.state.free == 3
    assert loop.batchers["text_to_image"].in_flight() == 1  # their slots are free again
    while loop.busy():
        loop.turn()
    assert np.abs(pixels(kept.future.result().image) - alone[first]).max() <= 1


def test_embeddings_run_between_denoising_steps(engine: Engine, generator: DiffusionGenerator) -> None:
    loop = Loop(engine)
    image = loop.submit("text_to_image", specs_of(generator)[0])
    loop.turn()
    embedding = loop.submit("embed_text", engine.prepare_text("embed_text", "a red circle"))
    loop.turn()
    assert embedding.future.done() and not image.future.done()  # it did not wait for the image
    assert embedding.future.result().ndim == 1
    assert loop.rows == [1, 1]
    while loop.busy():
        loop.turn()
    assert image.future.done()


def test_whole_request_batching_gives_the_same_images(
    tiny_model: MultimodalModel, generator: DiffusionGenerator, alone: dict[ImageSpec, np.ndarray]
) -> None:
    static = Engine({task: tiny_model for task in UNDERSTANDING_TASKS}, continuous=False, generator=generator)
    loop = Loop(static)
    assert loop.denoising is None  # no running state: whole batches
    items = [loop.submit("text_to_image", spec) for spec in specs_of(generator)]
    loop.turn()  # one batch, run to its longest image
    for spec, item in zip(specs_of(generator), items, strict=True):
        assert item.future.done()
        assert np.abs(pixels(item.future.result().image) - alone[spec]).max() <= 1
        assert item.batch_size == 3


def test_sizes_the_model_cannot_make_are_refused_before_queueing(engine: Engine) -> None:
    assert engine.image_sizes() == ((32, 32),)
    assert "text_to_image" in engine.tasks and engine.describe()["models"]["text_to_image"] == engine.model_name(
        "text_to_image"
    )
    with pytest.raises(UnsupportedSize, match="cannot make 512x512 images; it makes 32x32") as caught:
        engine.prepare_image_generation("a red circle", size=(512, 512))
    assert (caught.value.status_code, caught.value.param) == (400, "size")
    spec = engine.prepare_image_generation("a red circle")  # the model's defaults, a seed drawn
    assert (spec.steps, spec.guidance_scale, (spec.width, spec.height)) == (4, 3.0, (32, 32))
    assert 0 <= spec.seed < 2**31


async def test_the_runtime_serves_images_on_its_inference_thread(
    checkpoint: Path, tiny_generator_dir: Path, generator: DiffusionGenerator, alone: dict[ImageSpec, np.ndarray]
) -> None:
    settings = Settings(
        model=str(checkpoint),
        generate_model=str(tiny_generator_dir),
        device="cpu",
        torch_threads=1,
        exit_on_failure=False,
    )
    runtime = Runtime(settings, Metrics())
    runtime.start()
    while runtime.state is State.LOADING:
        await asyncio.sleep(0.02)
    assert runtime.state is State.OK
    try:
        engine = runtime.ensure_ready()
        specs = specs_of(generator)
        futures: list[Future[Any]] = []
        with runtime.batchers["text_to_image"].reserve(len(specs)) as slots:
            for spec in specs:
                payload = engine.prepare_image_generation(
                    spec.prompt, spec.seed, spec.steps, spec.guidance_scale, (spec.width, spec.height)
                )
                futures.append(slots.submit(payload, time.monotonic() + 120).future)
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        for spec, result in zip(specs, results, strict=True):
            assert np.abs(pixels(result.image) - alone[spec]).max() <= 1
    finally:
        await runtime.drain(30)


def test_a_step_out_of_memory_starts_the_images_again_and_they_come_out_the_same(
    engine: Engine, generator: DiffusionGenerator, alone: dict[ImageSpec, np.ndarray]
) -> None:
    loop = Loop(engine)
    assert loop.denoising is not None
    state = loop.denoising.state
    counting_step = state.step
    failures = [3]  # the third step runs out of memory (a real allocation failure of the CPU allocator)

    def step() -> list[ImageUpdate]:
        failures[0] -= 1
        if failures[0] == 0:
            torch.empty(1 << 60, dtype=torch.uint8)
        return counting_step()

    state.step = step  # type: ignore[method-assign]
    first, _, third = specs_of(generator)
    updates: list[ImageUpdate] = []
    items = [loop.submit("text_to_image", first, sink=updates.append), loop.submit("text_to_image", third)]
    while loop.busy():
        loop.turn()
    for spec, item in zip((first, third), items, strict=True):
        assert np.abs(pixels(item.future.result().image) - alone[spec]).max() <= 1
    assert loop.metric("mmserve_oom_total") == 1
    assert loop.denoising.cap.limit == 1  # halved, growing back slowly
    assert [u.step for u in updates] == [1, 2, 3, 4, 5, 6]  # progress never went back, nor came twice


def test_which_generator_the_settings_load(tiny_generator_dir: Path, tmp_path: Path, text_tower) -> None:  # type: ignore[no-untyped-def]
    from model import ModelLoadError
    from service.engine import _load_generator
    from service.errors import NotImplementedTask

    cpu = torch.device("cpu")
    assert _load_generator(Settings(generate_model="none"), cpu, None, []) is None
    loaded = _load_generator(Settings(generate_model=str(tiny_generator_dir)), cpu, None, [])
    assert loaded is not None and loaded.sizes == ((32, 32),)
    with pytest.raises(ModelLoadError, match="not a text-to-image model folder"):
        _load_generator(Settings(generate_model=str(tmp_path)), cpu, None, [])
    without = Engine({}, generator=None)
    assert "text_to_image" not in without.tasks
    with pytest.raises(NotImplementedTask, match="MMSERVE_GENERATE_MODEL"):
        without.check_supported("text_to_image")
    with pytest.raises(ValueError, match="must be >= 1"):
        loaded.image_spec("a red circle", 0, steps=0)


def test_captions_decode_and_images_denoise_in_the_same_turns(
    engine: Engine, generator: DiffusionGenerator, alone: dict[ImageSpec, np.ndarray], tiny_model: MultimodalModel
) -> None:
    from tests.support.server import noise_image

    loop = Loop(engine)
    spec = specs_of(generator)[0]  # 6 steps
    image = loop.submit("text_to_image", spec)
    caption = loop.submit("caption", engine.prepare_generation("caption", noise_image(1), max_new_tokens=3))
    turns = 0
    while loop.busy():
        loop.turn()
        turns += 1
    assert turns == 6 and loop.rows == [1] * 6  # the image stepped every turn, the caption decoding beside it
    assert caption.future.result().text == tiny_model.caption([noise_image(1)], 3)[0]
    assert caption.finished_at < image.finished_at  # answered when done, not when the image was
    assert np.abs(pixels(image.future.result().image) - alone[spec]).max() <= 1


class Measured(TurnBudget):
    """A 100 ms turn budget whose every measurement says `per_item_ms` an item."""

    def __init__(self, per_item_ms: float) -> None:
        super().__init__(100)
        self.per_item_s = per_item_ms / 1000

    def observe(self, task: str, seconds: float, size: int) -> None:
        super().observe(task, self.per_item_s * size, size)


def test_while_embeddings_wait_a_turn_steps_only_the_images_its_budget_fits_each_in_its_turn(
    engine: Engine, generator: DiffusionGenerator, alone: dict[ImageSpec, np.ndarray]
) -> None:
    loop = Loop(engine)
    loop.thread._budget = Measured(per_item_ms=60)  # one image's step fits a turn
    specs = specs_of(generator)  # 6, 2 and 4 steps: seeds 11, 12, 13
    items = [loop.submit("text_to_image", spec) for spec in specs]
    embeddings = []
    while loop.busy():
        embeddings.append(loop.submit("embed_text", engine.prepare_text("embed_text", "a red circle")))
        loop.turn()
    assert all(e.future.done() and e.future.result().ndim == 1 for e in embeddings)  # each in its own turn
    # the first step's cost was not known yet: every image; then one a turn, the longest waiting first
    assert loop.seeds == [[11, 12, 13], [11], [12], [13], [11], [13], [11], [13], [11], [11]]
    for spec, item in zip(specs, items, strict=True):
        assert np.abs(pixels(item.future.result().image) - alone[spec]).max() <= 1
    loop = Loop(engine)
    loop.thread._budget = Measured(per_item_ms=45)  # two fit
    items = [loop.submit("text_to_image", spec) for spec in specs]
    while loop.busy():
        loop.submit("embed_text", engine.prepare_text("embed_text", "a red circle"))
        loop.turn()
    assert loop.rows[0] == 3 and max(loop.rows[1:]) == 2 and sum(loop.rows) == 6 + 2 + 4
    for spec, item in zip(specs, items, strict=True):
        assert np.abs(pixels(item.future.result().image) - alone[spec]).max() <= 1


def test_when_only_images_run_every_image_steps_in_every_turn(
    engine: Engine, generator: DiffusionGenerator, alone: dict[ImageSpec, np.ndarray]
) -> None:
    loop = Loop(engine)
    loop.thread._budget = Measured(per_item_ms=60)  # one would fit, were anything else waiting
    items = [loop.submit("text_to_image", spec) for spec in specs_of(generator)]
    while loop.busy():
        loop.turn()
    assert loop.rows == [3, 3, 2, 2, 1, 1]  # no throughput lost to the budget
    for spec, item in zip(specs_of(generator), items, strict=True):
        assert np.abs(pixels(item.future.result().image) - alone[spec]).max() <= 1
