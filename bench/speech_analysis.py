"""The model card's analyses of what the built-in model hears, beside `mmserve evaluate`'s metrics.

    python -m bench.speech_analysis [--model builtin|FOLDER] [--before FOLDER]

Prints, for each model: how sure it was of each transcript it left blank (P(end) at the first step, the
exp of a blank transcript's `avg_logprob`), for in-domain questions in held-out voices and for everyday
English, French and German (`model.refusal_eval`'s sets); held-out sentences heard word for word, captions
and questions apart, in training and held-out voices; and the `other_voices` condition's blanks and the
WER of the rest. `--before` a folder of earlier weights (e.g. `git show REV:model/weights/...`) to compare.
"""

from __future__ import annotations

import argparse
import math

import torch

from model import load_model
from model.api import MultimodalModel
from model.evaluate import word_error_rate
from model.refusal_eval import hear, in_domain_clips, out_of_domain_clips
from model.train.speech import condition_utterances, eval_utterances, synthesise


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
    others = condition_utterances("other_voices", 100)
    heard = transcribe(model, [synthesise(u, 16_000, i) for i, u in enumerate(others)])
    kept = [(u.text, h) for u, h in zip(others, heard, strict=True) if h.strip()]
    wer = word_error_rate([t for t, _ in kept], [h for _, h in kept])
    print(f"  other languages' voices: {100 - len(kept)} of 100 heard as nothing, WER of the rest {wer:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--before", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in [args.before, args.model] if args.before else [args.model]:
        print(name)
        analyse(load_model(name, "cpu"))


if __name__ == "__main__":
    main()
