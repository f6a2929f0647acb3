"""Smoke test of the trained checkpoint shipped in model/weights/ on held-out scenes."""

import random

import pytest
import torch

from model.checkpoint import WEIGHTS_DIR, load_builtin
from model.scenes import HELD_OUT_SEED_START, ask_any, make_scene, render


@pytest.fixture(scope="module")
def shipped(text_tower):  # type: ignore[no-untyped-def]
    return load_builtin(WEIGHTS_DIR, "cpu", text_tower=text_tower)


def test_shipped_weights_fit_the_budget() -> None:
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.iterdir())
    assert total <= 25 * 1024 * 1024
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in WEIGHTS_DIR.iterdir()}


def test_captions_held_out_scenes(shipped) -> None:
    scenes = [make_scene(HELD_OUT_SEED_START + 500_000 + i) for i in range(20)]
    captions = shipped.caption([render(s) for s in scenes])
    exact = sum(c == s.caption for c, s in zip(captions, scenes, strict=True))
    assert exact >= 18, list(zip(captions, [s.caption for s in scenes], strict=True))


def test_answers_held_out_questions(shipped) -> None:
    rng = random.Random(7)
    scenes = [make_scene(HELD_OUT_SEED_START + 600_000 + i) for i in range(20)]
    questions = [ask_any(s, rng) for s in scenes]
    answers = shipped.answer([render(s) for s in scenes], [q.text for q in questions])
    correct = sum(a == q.answer for a, q in zip(answers, questions, strict=True))
    assert correct >= 18, [(q.text, q.answer, a) for q, a in zip(questions, answers, strict=True)]


def test_text_and_image_embeddings_share_a_space(shipped) -> None:
    scenes = [make_scene(HELD_OUT_SEED_START + 700_000 + i) for i in range(10)]
    images = shipped.embed_image([render(s) for s in scenes])
    texts = shipped.embed_text([s.caption for s in scenes])
    sims = images @ texts.T
    assert (sims.argmax(1) == torch.arange(10)).float().mean() >= 0.8
