"""Spoken questions against typed ones: how much of `/vqa`'s accuracy is lost between the voice and the answer.

Held-out scenes (`HELD_OUT_SEED_START` on), one question each (any family the scene allows), asked typed and
spoken (espeak-ng, a held-out voice: an accent and a variant training never used). A spoken question is heard
(`transcribe_scored`), refused when the service's criteria refuse it (`model.understanding.default_criteria`:
counted wrong, as the client gets no answer), else answered as heard. The service also reads a heard question
through the typed grammar (`model.questions`); here the transcript is answered as it is.
"""

from __future__ import annotations

import random

from model.api import MultimodalModel
from model.refusal_eval import hear
from model.scenes import HELD_OUT_SEED_START, ask_any, make_scene, render
from model.understanding import default_criteria, refusal

SEED_START = HELD_OUT_SEED_START + 7_000_000  # apart from the image metrics' scenes


def spoken_vqa_metrics(model: MultimodalModel, n: int = 300, chunk: int = 50) -> dict[str, float]:
    """`vqa_typed`, `vqa_spoken` (refusals counted wrong) and `spoken_refused` on `n` held-out scenes."""
    from model.train.speech import synthesise, utterance

    scenes = [make_scene(SEED_START + i) for i in range(n)]
    questions = [ask_any(s, random.Random(SEED_START + i)) for i, s in enumerate(scenes)]
    images = [render(s) for s in scenes]
    clips = [
        synthesise(utterance(SEED_START + i, q.text, held_out_voice=True), 16_000, i) for i, q in enumerate(questions)
    ]
    heard = hear(model, clips)
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
