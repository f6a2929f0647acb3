"""Smoke test of the trained checkpoint shipped in model/weights/ on held-out scenes."""

import random

import pytest
import torch

from model.checkpoint import WEIGHTS_DIR, load_builtin
from model.scenes import HELD_OUT_SEED_START, QUESTION_FAMILIES, Question, Scene, ask, ask_any, make_scene, render
from tests.support.audio import needs_espeak, needs_flite


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


def _held_out_questions(families: tuple[str, ...], offset: int) -> list[tuple[Scene, Question]]:
    rng = random.Random(offset)
    scenes = [make_scene(HELD_OUT_SEED_START + offset + i) for i in range(20)]
    return [(s, ask_any(s, rng, families)) for s in scenes]


def _correct(shipped, pairs: list[tuple[Scene, Question]]) -> tuple[int, list[tuple[str, str, str]]]:  # type: ignore[no-untyped-def]
    answers = shipped.answer([render(s) for s, _ in pairs], [q.text for _, q in pairs])
    report = [(q.text, q.answer, a) for (_, q), a in zip(pairs, answers, strict=True)]
    return sum(truth == got for _, truth, got in report), report


def test_answers_held_out_questions(shipped) -> None:
    """At least 18 of 20 questions right, from all five families."""
    correct, report = _correct(shipped, _held_out_questions(QUESTION_FAMILIES, 600_000))
    assert correct >= 18, report


@pytest.mark.parametrize("family", QUESTION_FAMILIES)
def test_answers_each_family_above_its_bar(shipped, family: str) -> None:
    """Each family on 100 held-out scenes with two objects or more: at least 72 right (the 0.80 bar less
    two standard deviations of a 100-question sample; chance at 50% passes with probability below 1e-5).
    On 1,000 held-out scenes the shipped model's weakest family, existence, gets 0.92."""
    offset = 650_000 + 1_000 * QUESTION_FAMILIES.index(family)
    rng = random.Random(offset)
    scenes = (make_scene(HELD_OUT_SEED_START + offset + i, min_objects=2) for i in range(1_000))
    pairs = [(s, q) for s in scenes if (q := ask(s, family, rng)) is not None][:100]
    assert len(pairs) == 100 and {q.family for _, q in pairs} == {family}
    correct, report = _correct(shipped, pairs)
    assert correct >= 72, report


def test_text_and_image_embeddings_share_a_space(shipped) -> None:
    scenes = [make_scene(HELD_OUT_SEED_START + 700_000 + i) for i in range(10)]
    images = shipped.embed_image([render(s) for s in scenes])
    texts = shipped.embed_text([s.caption for s in scenes])
    sims = images @ texts.T
    assert (sims.argmax(1) == torch.arange(10)).float().mean() >= 0.8


@needs_espeak
def test_transcribes_held_out_sentences(shipped) -> None:
    """Held-out sentences (never spoken in training), in training voices: most transcribed word for word."""
    from model.evaluate import word_error_rate
    from model.train.speech import eval_utterances, synthesise

    utterances = eval_utterances(held_out_voice=False, n=24)
    heard = shipped.transcribe([synthesise(u, 16_000, i) for i, u in enumerate(utterances)])
    truth = [u.text for u in utterances]
    # (the hearing stage traded a little here for unheard voices: on the card's 300 sentences, held-out questions
    # in training voices are heard word for word 0.80 of the time, 0.90 before it; in unheard voices 0.53, 0.41
    # before; captions 1.00 and 0.71, 0.37 before)
    assert sum(h == t for h, t in zip(heard, truth, strict=True)) >= 18, list(zip(heard, truth, strict=True))
    assert word_error_rate(truth, heard) < 0.05


@needs_espeak
def test_hears_a_question_and_answers_it(shipped) -> None:
    """espeak-ng's default voice (not one of the training voices' settings) asks; the spoken question is answered."""
    import io
    import subprocess

    import soundfile as sf
    import soxr

    wav = subprocess.run(["espeak-ng", "--stdout", "what colour is the square?"], check=True, capture_output=True)
    samples, rate = sf.read(io.BytesIO(wav.stdout), dtype="float32")
    [heard] = shipped.transcribe([soxr.resample(samples, rate, 16_000)])
    assert heard == "what colour is the square?"
    scene = make_scene(HELD_OUT_SEED_START)  # a small purple square, a small blue diamond and a small blue triangle
    [square] = [o for o in scene.objects if o.shape == "square"]
    assert shipped.answer([render(scene)], [heard]) == [square.colour]


@needs_espeak
def test_spoken_questions_in_unheard_voices_against_typed(shipped) -> None:
    """The spoken-/vqa measure of the card: typed and spoken accuracy, refusals counted wrong."""
    from model.spoken_vqa_eval import spoken_vqa_metrics

    metrics = spoken_vqa_metrics(shipped, n=20)
    assert metrics["vqa_typed"] >= 0.9
    assert metrics["vqa_spoken_held_out_voices"] <= metrics["vqa_typed"]  # a refusal or a mishearing only loses
    assert metrics["vqa_spoken_held_out_voices"] >= 0.6 and 0 <= metrics["spoken_refused_held_out_voices"] <= 0.3


@needs_flite
def test_hears_a_speaker_of_another_kind_it_never_heard(shipped) -> None:
    """flite's slt (a woman's recorded voice, statistical parametric synthesis: never heard in training, where
    every other voice is espeak-ng's or one of three other flite voices) says held-out sentences; the card's
    100 are heard at WER 0.195 (0.384 before flite's voices were trained on)."""
    from model.evaluate import speech_metrics

    metrics = speech_metrics(shipped, per_condition=30, only=["flite_held_out_voice", "flite_voices"])
    assert set(metrics) == {"wer_flite_held_out_voice", "wer_flite_voices"}
    assert metrics["wer_flite_voices"] < 0.1, metrics  # flite's training voices, held-out sentences
    assert metrics["wer_flite_held_out_voice"] < 0.3, metrics
