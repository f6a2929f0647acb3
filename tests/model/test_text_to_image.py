"""The built-in text-to-image generator: its training stage (tiny, resumed) and the shipped folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.text_to_image import GENERATOR_DIR, GeneratorIndex, TextToImage, to_images, to_sample
from model.train.generator import GeneratorConfig, _object_weights, batch_at, learning_rate, train_generator

TINY = GeneratorConfig(
    channels=(32, 32),
    batch_size=2,
    steps=2,
    checkpoint_every=1,
    eval_captions=2,
    default_steps=2,
    warmup_steps=1,
)
shipped = pytest.mark.skipif(not (GENERATOR_DIR / "model_index.json").exists(), reason="no shipped generator")


def test_folding_an_image_into_the_unet_sample_and_back_is_exact() -> None:
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    sample = to_sample(images, 4)
    assert sample.shape == (2, 48, 16, 16)
    assert torch.equal(to_images(sample, 4), images)


def test_batches_are_deterministic_and_drop_some_captions() -> None:
    images, captions = batch_at(TINY, 3)
    again, captions_again = batch_at(TINY, 3)
    assert torch.equal(images, again) and captions == captions_again
    assert images.shape == (2, 3, 64, 64) and images.min() >= -1 and images.max() <= 1
    dropped = sum(c == "" for step in range(50) for c in batch_at(GeneratorConfig(batch_size=4), step)[1])
    assert 5 < dropped < 40  # a tenth of 200


def test_object_weights_shift_the_batches_towards_crowded_scenes() -> None:
    def objects(caption: str) -> int:
        return caption.count(",") + caption.count(" and ") + 1

    def counts(config: GeneratorConfig) -> list[int]:
        return [objects(c) for step in range(40) for c in batch_at(config, step)[1] if c]

    uniform, crowded = (
        counts(GeneratorConfig(batch_size=8, object_weights=())),
        counts(GeneratorConfig(batch_size=8, object_weights=(0, 1, 0, 3))),
    )
    assert set(uniform) == {1, 2, 3, 4}
    assert set(crowded) == {2, 4} and 0.6 < crowded.count(4) / len(crowded) < 0.9  # three quarters
    again = batch_at(GeneratorConfig(batch_size=8, object_weights=(0, 1, 0, 3)), 7)
    assert torch.equal(again[0], batch_at(GeneratorConfig(batch_size=8, object_weights=(0, 1, 0, 3)), 7)[0])
    assert _object_weights("2,3,4,4") == (2.0, 3.0, 4.0, 4.0)
    for bad in ("", "a,b", "1,2,3,4,5", "-1,2", "0,0"):
        with pytest.raises(Exception, match="non-negative weights"):
            _object_weights(bad)


def test_the_rate_warms_up_holds_and_decays_to_zero_over_the_budgets_last_minutes() -> None:
    config = GeneratorConfig(lr=1e-3, warmup_steps=10, max_minutes=100.0, decay_minutes=40.0)
    assert learning_rate(config, 0, 0, 0.0) == pytest.approx(1e-4)  # warming up
    assert learning_rate(config, 500, 0, 60.0) == pytest.approx(1e-3)  # held until the decay starts
    assert learning_rate(config, 600, 0, 80.0) == pytest.approx(0.5e-3)  # half way down the cosine
    assert learning_rate(config, 700, 0, 100.0) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(config, 700, 0, 120.0) == pytest.approx(0.0, abs=1e-12)  # never below zero
    assert learning_rate(GeneratorConfig(lr=1e-3, max_minutes=100.0, decay_minutes=0), 700, 0, 99.0) == 1e-3
    short = GeneratorConfig(lr=1e-3, warmup_steps=10, max_minutes=20.0, decay_minutes=80.0)  # shorter than the decay
    assert learning_rate(short, 500, 0, 0.0) == pytest.approx(1e-3)  # the cosine spans the whole budget
    assert learning_rate(short, 500, 0, 10.0) == pytest.approx(0.5e-3)


def test_the_stage_trains_exports_and_resumes(tmp_path: Path, text_tower) -> None:  # type: ignore[no-untyped-def]
    out, run_dir = tmp_path / "generator", tmp_path / "run"
    train_generator(TINY, out, run_dir, resume=False, tower=text_tower)
    index = GeneratorIndex.read(out)
    assert index.training["steps_done"] == 2 and [c["step"] for c in index.training["curve"]] == [2]
    assert json.loads((out / "unet" / "config.json").read_text())["in_channels"] == 48

    from dataclasses import replace

    train_generator(replace(TINY, steps=3), out, run_dir, resume=True, tower=text_tower)
    index = GeneratorIndex.read(out)
    assert index.training["steps_done"] == 3 and [c["step"] for c in index.training["curve"]] == [2, 3]
    generator = TextToImage.from_pretrained(out, tower=text_tower)
    assert generator.unet.dtype == torch.float32  # stored in fp16, served in the dtype asked for
    (image,) = generator.generate(["a large red circle"], [0])
    assert image.size == (64, 64) and image.mode == "RGB"

    # Without the run state (it is not committed), the stage goes on from the exported folder: its step,
    # minutes and curve continue.
    again = tmp_path / "again"
    train_generator(replace(TINY, steps=4), again, tmp_path / "fresh-run", False, tower=text_tower, init_from=out)
    index = GeneratorIndex.read(again)
    assert index.training["steps_done"] == 4 and [c["step"] for c in index.training["curve"]] == [2, 3, 4]
    assert index.training["minutes"] >= GeneratorIndex.read(out).training["minutes"]


@pytest.fixture(scope="module")
def generator(text_tower) -> TextToImage:  # type: ignore[no-untyped-def]
    return TextToImage.from_pretrained(tower=text_tower)


@shipped
def test_the_shipped_generator_is_diffusers_loadable_and_compact() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DConditionModel

    UNet2DConditionModel.from_pretrained(str(GENERATOR_DIR), subfolder="unet")
    FlowMatchEulerDiscreteScheduler.from_pretrained(str(GENERATOR_DIR), subfolder="scheduler")
    meta = json.loads((GENERATOR_DIR / "model_index.json").read_text())
    assert meta["_class_name"] == "MmserveTextToImage" and meta["uncond_prompt"] == "" and meta["vae"] is None
    size = sum(p.stat().st_size for p in GENERATOR_DIR.rglob("*") if p.is_file())
    assert size <= 25 * 2**20


@shipped
def test_one_seed_one_image_two_seeds_two_images(generator: TextToImage) -> None:
    first, again, other = generator.generate(["a small blue square"] * 3, [7, 7, 8])
    assert first.size == (64, 64)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert np.abs(np.asarray(first, dtype=int) - np.asarray(other, dtype=int)).mean() > 5
    (alone,) = generator.generate(["a small blue square"], [7])
    assert np.abs(np.asarray(alone, dtype=int) - np.asarray(first, dtype=int)).max() <= 1  # alone as batched


@shipped
@pytest.mark.parametrize("prompt", ["", "a photograph of a cat on the moon", "x" * 2000])
def test_any_prompt_gets_an_image(generator: TextToImage, prompt: str) -> None:
    (image,) = generator.generate([prompt], [0], steps=4, guidance_scale=2.0)
    assert image.size == (64, 64)


def test_the_card_section_is_rewritten_between_its_markers(tmp_path: Path) -> None:
    from model.generator_eval import CARD_BEGIN, CARD_END, EVALUATION_FILE, write_card_section

    curve = [{"step": 5, "minutes": 1.0, "round_trip_exact_match": 0.25, "object_colour": 0.5}]
    curve[0] |= {"object_shape": 0.5, "object_size": 0.5, "object_count": 0.75}
    GeneratorIndex(training={"steps_done": 5, "curve": curve}).write(tmp_path)
    (tmp_path / EVALUATION_FILE).write_text(json.dumps({"captions": 4, "metrics": {"round_trip_exact_match": 0.5}}))
    card = tmp_path / "CARD.md"
    card.write_text(f"before\n{CARD_BEGIN}\nold numbers\n{CARD_END}\nafter\n")
    write_card_section(tmp_path, card)
    text = card.read_text()
    assert text.startswith("before\n") and text.endswith(f"{CARD_END}\nafter\n") and "old numbers" not in text
    assert "| round_trip_exact_match | 0.500 |" in text and "| 5 | 1.0 | 0.250 |" in text


@shipped
def test_the_whole_card_takes_the_generator_section_from_the_folder(tmp_path: Path) -> None:
    """`mmserve evaluate` rewrites the whole card from its template: the generator's part comes from the
    folder's last evaluation, not from a copy kept in the template."""
    from model.evaluate import write_card
    from model.generator_eval import CARD_BEGIN, CARD_END, card_section

    card = tmp_path / "MODEL_CARD.md"
    write_card({"caption_exact_match": 1.0}, {"scenes": 10, "training": "{}"}, card)
    text = card.read_text()
    between = text[text.index(CARD_BEGIN) + len(CARD_BEGIN) : text.index(CARD_END)]
    assert between.strip() == card_section(GENERATOR_DIR).strip()
    assert "| caption_exact_match | 1.000 |" in text and "{generator}" not in text
