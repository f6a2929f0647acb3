"""Our denoising loop against diffusers' own pipeline on a tiny random Stable Diffusion folder: the served
image equals `pipeline(prompt, num_inference_steps=k, guidance_scale=g, generator=manual_seed(s))` pixel for
pixel (at most 1/255 apart), alone, batched with requests of other step counts and guidance, and advanced
in sub-batches over several turns (a few rows a step, as while other work waits), for a
deterministic scheduler (DDIM), one that scales its input (Euler) and one that draws noise at every step
(Euler ancestral: the row's own generator must be used in the pipeline's order)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, StableDiffusionPipeline
from PIL import Image

from model.api import ImageSpec
from model.image_generator import DiffusionGenerator, load_image_generator

CASES = [("a red circle", 1, 4, 3.0), ("a small blue square", 2, 7, 1.0), ("two green triangles", 3, 3, 6.5)]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def reference(folder: Path) -> Callable[[str, int, int, float], np.ndarray]:
    pipeline = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)

    def generate(prompt: str, seed: int, steps: int, guidance: float) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        output = pipeline(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator)
        return pixels(output.images[0])

    return generate


def assert_parity(folder: Path) -> None:
    model = load_image_generator(folder, torch.device("cpu"), None)
    generate = reference(folder)
    expected = [generate(*case) for case in CASES]
    specs = [model.image_spec(prompt, seed, steps, guidance) for prompt, seed, steps, guidance in CASES]
    alone = [pixels(model.generate([spec])[0]) for spec in specs]
    together = [pixels(image) for image in model.generate(specs)]
    for want, one, batched in zip(expected, alone, together, strict=True):
        assert np.abs(want - one).max() <= 1
        assert np.abs(want - batched).max() <= 1
    assert np.abs(expected[0] - expected[2]).max() > 32  # the images differ: the comparison means something
    staggered = join_midway(model, specs)
    for want, got in zip(expected, staggered, strict=True):
        assert np.abs(want - pixels(got)).max() <= 1
    for want, got in zip(expected, in_turns(model, specs, per_turn=2), strict=True):
        assert np.abs(want - pixels(got)).max() <= 1


def join_midway(model: DiffusionGenerator, specs: list[ImageSpec]) -> list[Image.Image]:
    """Each image joins the running state one step after the previous one; images in order."""
    state = model.new_state(len(specs))
    images: dict[int, Image.Image] = {}
    rows: list[int] = []
    waiting = list(range(len(specs)))
    while waiting or rows:
        if waiting:
            state.join([specs[waiting[0]]])
            rows.append(waiting.pop(0))
        updates = state.step()
        for row, update in zip(rows, updates, strict=True):
            if update.finished:
                assert update.image is not None
                images[row] = update.image
        keep = [i for i, update in enumerate(updates) if not update.finished]
        state.filter(keep)
        rows = [rows[i] for i in keep]
    return [images[i] for i in range(len(specs))]


def in_turns(model: DiffusionGenerator, specs: list[ImageSpec], per_turn: int) -> list[Image.Image]:
    """Every image joins at once, then each turn steps only `per_turn` rows, those that have waited longest
    (as the server does while other work waits): each image advances in sub-batches; images in order."""
    state = model.new_state(len(specs))
    state.join(specs)
    rows = list(range(len(specs)))  # row → image
    last = [0] * len(specs)  # row → the turn of its last step
    images: dict[int, Image.Image] = {}
    turn = 0
    while rows:
        turn += 1
        chosen = sorted(sorted(range(len(rows)), key=lambda i: (last[i], i))[:per_turn])
        updates = state.step(chosen)
        assert len(updates) == len(chosen)
        for i, update in zip(chosen, updates, strict=True):
            last[i] = turn
            if update.finished:
                assert update.image is not None
                images[rows[i]] = update.image
        keep = [i for i in range(len(rows)) if rows[i] not in images]
        state.filter(keep)
        rows, last = [rows[i] for i in keep], [last[i] for i in keep]
    return [images[i] for i in range(len(specs))]


def test_ddim_images_equal_the_pipelines(tiny_sd_dir: Path) -> None:
    assert_parity(tiny_sd_dir)


@pytest.mark.parametrize("scheduler_class", [EulerDiscreteScheduler, EulerAncestralDiscreteScheduler])
def test_euler_images_equal_the_pipelines(tmp_path: Path, scheduler_class: type) -> None:
    from tests.support.diffusion_checkpoints import build_stable_diffusion

    scheduler = scheduler_class(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    assert_parity(build_stable_diffusion(tmp_path, scheduler=scheduler))
