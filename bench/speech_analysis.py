"""The model card's analyses of what the built-in model hears, beside `mmserve evaluate`'s metrics.

    python -m bench.speech_analysis [--model builtin|FOLDER] [--before FOLDER]

Prints, for each model: how sure it was of each transcript it left blank (P(end) at the first step, the
exp of a blank transcript's `avg_logprob`), for in-domain questions in held-out voices and for everyday
English, French and German (`model.refusal_eval`'s sets); held-out sentences heard word for word, captions
and questions apart, in training and held-out voices, and the held-out voices' WER by accent and variant;
the `other_voices` condition's blanks and the WER of the rest; and the spoken `/vqa` evaluation's losses.
`--before` a folder of earlier weights (e.g. `git show REV:model/weights/...`) to compare.
"""

from __future__ import annotations

import argparse
import math

import torch

from model import load_model
from model.api import MultimodalModel
from model.evaluate import word_error_rate
from model.refusal_eval import hear, in_domain_clips, out_of_domain_clips
from model.train.speech import condition_utterances, eval_utterances, is_held_out, synthesise


def transcribe(model: MultimodalModel, audios: list, batch: int = 32) -> list[str]:  # type: ignore[type-arg]
    return [text for i in range(0, len(audios), batch) for text in model.transcribe(audios[i : i + batch])]


def analyse(model: MultimodalModel) -> None:
    def blanks(clips: list) -> list[float]:  # type: ignore[type-arg]
        return sorted(round(math.exp(h.avg_logprob or 0.0), 3) for h in hear(model, clips) if not h.text.strip())

    inside = blanks(in_domain_clips(300))
    outside = blanks([c for lang in ("english", "french", "german") for c in out_of_domain_clips(lang)])
    print(f"  blank in-domain questions: {len(inside)} of 300, P(end) {inside}")
    print(f"  blank out-of-domain speech: {len(outside)} of 120, P(end) from {outside[:1]} up")
    for held_out in (False, True):
        utterances = eval_utterances(held_out)
        heard = transcribe(model, [synthesise(u, 16_000, i) for i, u in enumerate(utterances)])
        for kind, is_question in (("captions", False), ("questions", True)):
            pairs = [(h, u.text) for h, u in zip(heard, utterances, strict=True) if u.text.endswith("?") == is_question]
            exact = sum(h == t for h, t in pairs) / len(pairs)
            print(f"  {'held-out' if held_out else 'training'} voices, {kind} word for word: {exact:.3f}")
        if held_out:  # which held-out accent and variant the errors come from
            for part in (0, 1):
                for name in sorted({u.voice.split("+")[part] for u in utterances}):
                    mine = [
                        (u.text, h) for u, h in zip(utterances, heard, strict=True) if u.voice.split("+")[part] == name
                    ]
                    wer = word_error_rate([t for t, _ in mine], [h for _, h in mine])
                    print(f"  held-out voices, {name}: WER {wer:.3f} ({len(mine)} sentences)")
    others = condition_utterances("other_voices", 100)
    heard = transcribe(model, [synthesise(u, 16_000, i) for i, u in enumerate(others)])
    kept = [(u.text, h) for u, h in zip(others, heard, strict=True) if h.strip()]
    wer = word_error_rate([t for t, _ in kept], [h for _, h in kept])
    print(f"  other languages' voices: {100 - len(kept)} of 100 heard as nothing, WER of the rest {wer:.3f}")


def spoken_vqa_losses(model: MultimodalModel, n: int = 300) -> None:
    """The spoken `/vqa` evaluation's losses one by one (`model.spoken_vqa_eval`'s scenes, questions and voices):
    refused, or answered wrong as heard (rescored, as the service rescores it); each with its voice and whether
    its sentence is a held-out one."""
    from model.scenes import render
    from model.spoken_vqa_eval import spoken_questions
    from model.understanding import default_criteria, refusal

    asked = spoken_questions(n)
    heard = hear(model, asked.clips, questions=True)
    answers = model.answer([render(s) for s in asked.scenes], [h.text or "?" for h in heard])
    losses = 0
    for q, voice, h, a in zip(asked.questions, asked.voices, heard, answers, strict=True):
        refused = refusal(h, default_criteria()) is not None
        if refused or a != q.answer:
            losses += 1
            kind = "refused" if refused else f"answered {a!r} (truth {q.answer!r})"
            sentence = "held-out sentence" if is_held_out(q.text) else "trained sentence"
            print(f"  spoken /vqa loss, {voice}, {sentence}: {q.text!r} heard {h.text!r}, {kind}")
    print(f"  spoken /vqa: {losses} of {n} lost")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--before", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in [args.before, args.model] if args.before else [args.model]:
        print(name)
        model = load_model(name, "cpu")
        analyse(model)
        spoken_vqa_losses(model)


if __name__ == "__main__":
    main()
