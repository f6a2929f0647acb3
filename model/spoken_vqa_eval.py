"""Spoken questions against typed ones: how much of `/vqa`'s accuracy is lost between the voice and the answer.

Held-out scenes (`HELD_OUT_SEED_START` on), one question each (any family the scene allows), asked typed and
spoken (espeak-ng, a held-out voice: an accent and a variant training never used). A spoken question is heard
(`transcribe_scored`), refused when the service's criteria refuse it (`model.understanding.default_criteria`:
counted wrong, as the client gets no answer), else rescored among its neighbours as the service rescores it
(`model.heard_rescoring`; the refusal reads the greedy transcript, as the service's does) and answered. The
service also reads a heard question through the typed grammar (`model.questions`); here the transcript is
answered as it is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from model.api import MultimodalModel
from model.refusal_eval import hear
from model.scenes import HELD_OUT_SEED_START, Question, Scene, ask_any, make_scene, render
from model.understanding import default_criteria, refusal

SEED_START = HELD_OUT_SEED_START + 7_000_000  # apart from the image metrics' scenes


@dataclass(frozen=True)
class SpokenQuestions:
    """The evaluation's held-out scenes, a question about each, and the question spoken in a held-out voice."""

    scenes: list[Scene]
    questions: list[Question]
    voices: list[str]  # espeak-ng's accent+variant of each clip
    clips: list[np.ndarray]  # 16 kHz


def spoken_questions(n: int = 300, first_seed: int = SEED_START) -> SpokenQuestions:
    """The first `n` of them (each a pure function of its index; the benches in `bench/` read the same); another
    `first_seed`: other scenes and clips alike (`bench.blank_threshold`'s tuning questions)."""
    from model.train.speech import synthesise, utterance

    scenes = [make_scene(first_seed + i) for i in range(n)]
    questions = [ask_any(s, random.Random(first_seed + i)) for i, s in enumerate(scenes)]
    said = [utterance(first_seed + i, q.text, held_out_voice=True) for i, q in enumerate(questions)]
    return SpokenQuestions(
        scenes, questions, [u.voice for u in said], [synthesise(u, 16_000, i) for i, u in enumerate(said)]
    )


def spoken_vqa_metrics(model: MultimodalModel, n: int = 300, chunk: int = 50) -> dict[str, float]:
    """`vqa_typed`, `vqa_spoken` (refusals counted wrong) and `spoken_refused` on `n` held-out scenes."""
    asked_aloud = spoken_questions(n)
    questions = asked_aloud.questions
    images = [render(s) for s in asked_aloud.scenes]
    heard = hear(model, asked_aloud.clips, questions=True)  # rescored, as the service rescores them
    criteria = default_criteria()
    refused = [refusal(h, criteria) is not None for h in heard]
    typed: list[str] = []
    spoken: list[str] = []
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        typed += model.answer(images[part], [q.text for q in questions[part]])
        asked = [i for i in range(start, min(n, start + chunk)) if not refused[i]]
        answers = model.answer([images[i] for i in asked], [heard[i].text for i in asked]) if asked else []
        said = dict(zip(asked, answers, strict=True))
        spoken += [said.get(i, "") for i in range(start, min(n, start + chunk))]
    truth = [q.answer for q in questions]
    return {
        "vqa_typed": sum(a == t for a, t in zip(typed, truth, strict=True)) / n,
        "vqa_spoken_held_out_voices": sum(a == t and not r for a, t, r in zip(spoken, truth, refused, strict=True)) / n,
        "spoken_refused_held_out_voices": sum(refused) / n,
    }
