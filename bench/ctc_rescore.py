"""How much joint CTC/attention rescoring of heard questions gives spoken `/vqa`, and its weight (issue 23).

    python -m bench.ctc_rescore [--model builtin|FOLDER] [--weights 0 0.3 0.5 0.7 0.9 1]

The shipped rescoring (`model.heard_rescoring`): a heard question's candidates (its neighbours with one scene
word swapped, and the grammar's short questions) scored by weight x CTC + (1 - weight) x attention
log-likelihoods (the decoder's only over the `SHORTLIST` best by CTC, and the one heard), the best answered.
This bench scores every candidate of every question the service would not refuse once, then for each weight
(0: the decoder alone among the shortlist) prints spoken `/vqa` accuracy and questions heard word for word,
with the neighbours alone and with the short questions too, on two sets of 300 spoken questions in held-out
voices:

- tuning: other scenes and clips (`bench.blank_threshold`'s, seeds from 18,000,000), where `CTC_WEIGHT` was
  chosen (the weight with the most tuning questions answered right; a tie goes to the lower weight);
- evaluation: `model.spoken_vqa_eval`'s (what `mmserve evaluate` reports), read after the choice.

The checkpoint's CTC head (`ctc_head.safetensors`, `python -m model.train.ctc_head`) must exist.

`--alternatives`: two other corrections of the decoder's prior, measured first and not shipped, on the
neighbours alone: attention + lambda x the answer's mean log-probability given the image (is a question about
an object the image lacks answered less surely?), and attention - lambda x the decoder's internal language
model (its log-likelihood with the audio replaced by one zero token; Meng et al., 2021).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from PIL import Image

from bench.blank_threshold import SEED_START as TUNING_SEED_START
from model import load_model
from model.api import Update
from model.evaluate import normalise_words
from model.generate import generate_all_updates
from model.heard_rescoring import attention_scores, candidates, choose, ctc_scores, neighbours, shortlist
from model.multimodal import BuiltinModel
from model.refusal_eval import hear
from model.scenes import render
from model.spoken_vqa_eval import SEED_START, SpokenQuestions, spoken_questions
from model.understanding import Heard, default_criteria, refusal


def same(a: str, b: str) -> bool:
    return normalise_words(a) == normalise_words(b)


def answers_scored(model: BuiltinModel, images: list[Image.Image], questions: list[str]) -> list[Update]:
    """Each answer's finished update (its text and mean log-probability)."""
    encodings = model.encode_images(model._prepared(images))
    specs = [model.sequence("vqa", q or "?", 16) for q in questions]
    return generate_all_updates(model.new_state(len(specs), once=True), specs, encodings)


@torch.inference_mode()
def internal_lm(model: BuiltinModel, rows: list[list[int]]) -> torch.Tensor:
    """The decoder's log-likelihood of each row with the audio replaced by one zero token."""
    return attention_scores(model.module.decoder, torch.zeros(1, model.module.config.vision.dim), rows)


def heard_set(
    model: BuiltinModel, first_seed: int, n: int
) -> tuple[SpokenQuestions, list[Heard], list[Image.Image], list[bool]]:
    """The set's questions, each heard as it is (not rescored: the candidates come from this), its image, and
    whether the service refuses it."""
    asked = spoken_questions(n, first_seed)
    heard = hear(model, asked.clips)
    refused = [refusal(h, default_criteria()) is not None for h in heard]
    return asked, heard, [render(s) for s in asked.scenes], refused


def alternatives(model: BuiltinModel, name: str, first_seed: int, n: int = 300) -> None:
    asked, heard, images, refused = heard_set(model, first_seed, n)
    rows_of = []
    for i, (clip, h, r) in enumerate(zip(asked.clips, heard, refused, strict=True)):
        if r or not h.text:
            rows_of.append(None)
            continue
        options = neighbours(h.text)
        rows = model.transcript_rows(options)
        [encoding] = model.encode_audios([clip])
        assert encoding.tokens is not None
        attention = attention_scores(model.module.decoder, encoding.tokens, rows, encoding.cross_kv)
        answers = answers_scored(model, [images[i]] * len(options), options)
        confidence = torch.tensor([u.avg_logprob or -99.0 for u in answers])
        rows_of.append((attention, confidence, internal_lm(model, rows), [u.text for u in answers]))
    for label, sign, weights in (
        ("answer confidence", 1.0, (0, 1, 4, 16, 50)),
        ("internal LM", -1.0, (0, 0.1, 0.3, 0.5, 0.7)),
    ):
        for weight in weights:
            right = 0
            for q, row in zip(asked.questions, rows_of, strict=True):
                if row is not None:
                    other = row[1] if sign > 0 else row[2]
                    right += row[3][int((row[0] + sign * weight * other).argmax())] == q.answer
            print(f"{name}, {label}, weight {weight:g}: spoken /vqa {right} of {n} right", flush=True)


def report(model: BuiltinModel, name: str, first_seed: int, weights: Sequence[float], n: int = 300) -> None:
    assert model.ctc_head is not None
    asked, heard, images, refused = heard_set(model, first_seed, n)
    for label, make in (("neighbours", neighbours), ("neighbours + short questions", candidates)):
        scored: list[tuple[list[str], torch.Tensor, torch.Tensor, list[int]] | None] = []
        for clip, h, r in zip(asked.clips, heard, refused, strict=True):
            if r or not h.text:
                scored.append(None)
                continue
            options = make(h.text)
            rows = model.transcript_rows(options)
            [encoding] = model.encode_audios([clip])
            assert encoding.tokens is not None
            ctc = ctc_scores(model.ctc_head, encoding.tokens, rows)
            # the decoder scores all here; the choice is among the shortlist, as the model's (`rescore_heard`)
            attention = attention_scores(model.module.decoder, encoding.tokens, rows, encoding.cross_kv)
            scored.append((options, ctc, attention, shortlist(ctc, options.index(h.text))))
        for weight in weights:
            texts = [
                h.text if s is None else s[0][s[3][choose(s[1][s[3]], s[2][s[3]], weight)]]
                for h, s in zip(heard, scored, strict=True)
            ]
            answers = model.answer(images, [t or "?" for t in texts])
            right = sum(a == q.answer and not r for a, q, r in zip(answers, asked.questions, refused, strict=True))
            exact = sum(same(t, q.text) for t, q in zip(texts, asked.questions, strict=True))
            print(
                f"{name}, {label}, CTC weight {weight:g}: spoken /vqa {right} of {n} right "
                f"({n - sum(refused)} not refused), heard word for word {exact}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 0.9, 1.0])
    parser.add_argument("--alternatives", action="store_true", help="the two corrections measured, not shipped")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.model, "cpu")
    assert isinstance(model, BuiltinModel) and model.ctc_head is not None, "a built-in checkpoint with a CTC head"
    run = alternatives if args.alternatives else lambda m, name, seed: report(m, name, seed, args.weights)
    run(model, "tuning", TUNING_SEED_START)
    run(model, "evaluation", SEED_START)


if __name__ == "__main__":
    main()
