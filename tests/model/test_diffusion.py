"""The denoising state on a tiny random built-in generator (pixels folded space-to-depth, MiniLM token states,
flow matching): its images equal the format's reference loop, and are identical alone, batched (prompts of
other lengths, other step counts and guidance), joining mid-way and advanced a row a step in turns;
per-step updates and previews; dropping rows; sizes it cannot make; the folder format's loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.api import ImageGenerator, ModelLoadError, UnsupportedImageSize
from model.image_generator import DiffusionGenerator, load_image_generator
from model.text_to_image import TextToImage
from tests.model.test_diffusion_parity import in_turns, join_midway, pixels


@pytest.fixture(scope="module")
def generator(tiny_generator_dir: Path, text_tower) -> DiffusionGenerator:  # type: ignore[no-untyped-def]
    return load_image_generator(tiny_generator_dir, torch.device("cpu"), None, text_tower=text_tower)


def test_the_folder_loads_as_an_image_generator(generator: DiffusionGenerator) -> None:
    assert isinstance(generator, ImageGenerator)
    assert generator.sizes == ((32, 32),)  # 16×16 samples of 12 channels, unfolded 2×2
    spec = generator.image_spec("a red circle", seed=7)
    assert (spec.steps, spec.guidance_scale, spec.width, spec.height) == (4, 3.0, 32, 32)
    with pytest.raises(UnsupportedImageSize, match="cannot make 64x64 images; it makes 32x32") as caught:
        generator.image_spec("a red circle", seed=7, size=(64, 64))
    assert caught.value.sizes == ((32, 32),)


def test_an_image_is_the_same_alone_batched_joining_midway_and_stepped_in_turns(generator: DiffusionGenerator) -> None:
    specs = [
        generator.image_spec("a red circle", 1, steps=5, guidance_scale=3.0),
        generator.image_spec("a blue square on the left", 2, steps=3, guidance_scale=1.0),
        generator.image_spec("a red circle", 3, steps=6, guidance_scale=7.0),
        generator.image_spec("a large yellow circle to the right of a small purple square", 4, 4, 0.5),
    ]
    alone = [pixels(generator.generate([spec])[0]) for spec in specs]
    together = [pixels(image) for image in generator.generate(specs)]
    midway = [pixels(image) for image in join_midway(generator, specs)]
    turns = [pixels(image) for image in in_turns(generator, specs, per_turn=1)]
    for one, batched, joined, stepped in zip(alone, together, midway, turns, strict=True):
        assert one.shape == (32, 32, 3)
        assert np.abs(one - batched).max() <= 1
        assert np.abs(one - joined).max() <= 1
        assert np.abs(one - stepped).max() <= 1  # one row a step, in turns
    assert np.abs(alone[0] - alone[2]).max() > 32  # another seed (and guidance): another image
    again = pixels(generator.generate([specs[0]])[0])
    assert np.array_equal(again, alone[0])  # the same seed: the same image


def test_each_step_reports_progress_and_previews_when_due(generator: DiffusionGenerator) -> None:
    state = generator.new_state(4)
    state.join([generator.image_spec("a green triangle", 5, steps=5, preview_every=2)])
    updates = []
    while not updates or not updates[-1].finished:
        (update,) = state.step()
        updates.append(update)
    assert [(u.step, u.steps, u.finished) for u in updates] == [(i, 5, i == 5) for i in range(1, 6)]
    assert [u.preview is not None for u in updates] == [False, True, False, True, False]
    assert all(isinstance(u.preview, Image.Image) and u.preview.size == (32, 32) for u in updates if u.preview)
    final = updates[-1].image
    assert isinstance(final, Image.Image) and final.size == (32, 32)
    with pytest.raises(RuntimeError, match="filter out finished rows"):
        state.step()


def test_filter_drops_rows_and_frees_them(generator: DiffusionGenerator) -> None:
    specs = [generator.image_spec(f"a circle number {i}", i, steps=4) for i in range(3)]
    state = generator.new_state(3)
    state.join(specs)
    assert state.free == 0
    with pytest.raises(ValueError, match="do not fit"):
        state.join(specs[:1])
    state.step()
    state.filter([0, 2])  # the middle one's client left
    assert len(state) == 2 and state.free == 1
    assert [spec.seed for spec in state.specs] == [0, 2]
    images = []
    while len(state):
        updates = state.step()
        images += [u.image for u in updates if u.finished]
        state.filter([i for i, u in enumerate(updates) if not u.finished])
    alone = [pixels(generator.generate([spec])[0]) for spec in (specs[0], specs[2])]
    assert len(images) == 2
    for image, expected in zip(images, alone, strict=True):
        assert np.abs(pixels(image) - expected).max() <= 1


def test_folders_that_are_not_generators_are_refused(tmp_path: Path, tiny_generator_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no model_index\.json"):
        load_image_generator(tmp_path, torch.device("cpu"), None)
    other = tmp_path / "other"
    shutil.copytree(tiny_generator_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "text_encoder": "t5"}))
    with pytest.raises(ModelLoadError, match="text encoder 't5'"):
        load_image_generator(other, torch.device("cpu"), None)
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="FluxPipeline folder"):
        load_image_generator(other, torch.device("cpu"), None)


def reference_image(folder: Path, tower, prompt: str, seed: int, steps: int, scale: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The built-in format's sampling loop, for one image: `TextToImage.generate`, the loop `model.text_to_image`
    documents (MiniLM states of [prompt, ""] with their masks, float32 CPU noise from the seed, Euler
    flow-matching steps with v = v_uncond + g·(v_cond - v_uncond), unfolded with `pixel_shuffle`)."""
    reference = TextToImage.from_pretrained(folder, tower=tower)
    return pixels(reference.generate([prompt], [seed], steps, scale)[0])


def test_images_equal_the_formats_reference_loop(
    generator: DiffusionGenerator, tiny_generator_dir: Path, text_tower
) -> None:  # type: ignore[no-untyped-def]
    for prompt, seed, steps, scale in (("a red circle", 1, 5, 3.0), ("two small green squares", 2, 3, 0.5)):
        expected = reference_image(tiny_generator_dir, text_tower, prompt, seed, steps, scale)
        served = pixels(generator.generate([generator.image_spec(prompt, seed, steps, scale)])[0])
        assert np.abs(expected - served).max() <= 1
