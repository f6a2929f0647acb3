"""Would a second look at a blank transcript rescue in-domain questions? (issue 23; the answer was no)

    python -m bench.second_look [--model builtin|FOLDER]

The built-in model writes nothing for audio it does not take for a scene sentence, and so refuses some
in-domain spoken questions too. Whisper keeps a transcript the no-speech check would drop when its decode
is confident; the same here: every blank transcript is decoded again with the end token barred at the
first step, and kept when that decode's `avg_logprob` (its forced first token included, or without it:
"cont") clears a threshold. For a tuning set (in-domain questions 300-899 in held-out voices, out-of-domain
clips 40-119) and the evaluation's own set (`model.refusal_eval`: 0-299, 0-39), it prints how many blanks
each threshold rescues, how many of those are heard word for word and their WER, the in-domain refusal rate
that would follow, and how many out-of-domain blanks it would let through. The barring is done here, by
wrapping `DecodeState`'s greedy choice during the prefill (the first token); the product has no such path.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from model import load_model
from model.evaluate import word_error_rate
from model.generate import DecodeState
from model.multimodal import BuiltinModel
from model.refusal_eval import OUT_OF_DOMAIN, hear, in_domain_clips, out_of_domain_clips
from model.tokenizer import EOS
from model.train.speech import eval_utterances

SPLITS = {"tune": (300, 900, 40, 120), "eval": (0, 300, 0, 40)}  # in-domain and out-of-domain index ranges


def second_look(model: BuiltinModel, clips: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Each clip decoded with the end token barred at the first step: text, avg_logprob with and without the
    forced token, finish reason."""
    eos = model._ids[EOS]
    greedy, prefill = DecodeState._greedy, DecodeState.prefill
    saved = DecodeState.__dict__["_greedy"], DecodeState.__dict__["prefill"]  # as the class holds them
    first: list[float] = []
    barring = [False]

    def barred(logits: torch.Tensor) -> Any:
        if not barring[0]:
            return greedy(logits)
        logprobs = logits.float().log_softmax(-1)
        ids = logits.clone().index_fill_(1, torch.tensor([eos]), float("-inf")).argmax(-1)
        chosen = logprobs.gather(1, ids[:, None])[:, 0]
        first.extend(chosen.tolist())
        return ids, torch.stack([ids.float(), chosen], 1)

    def first_step(self: DecodeState, *args: Any, **kwargs: Any) -> Any:
        barring[0] = True
        try:
            return prefill(self, *args, **kwargs)
        finally:
            barring[0] = False

    DecodeState._greedy = staticmethod(barred)  # type: ignore[method-assign]
    DecodeState.prefill = first_step  # type: ignore[method-assign]
    try:
        updates = [u for i in range(0, len(clips), 16) for u in model.transcribe_scored(clips[i : i + 16])]
    finally:
        DecodeState._greedy, DecodeState.prefill = saved  # type: ignore[method-assign]
    rows = []
    for update, forced in zip(updates, first, strict=True):
        scored = update.tokens + (1 if update.finish_reason == "stop" else 0)
        avg = update.avg_logprob or 0.0
        rows.append(
            {
                "text": update.text or "",
                "avg": avg,
                "cont": (avg * scored - forced) / max(1, scored - 1),
                "stop": update.finish_reason == "stop",
            }
        )
    return rows


def blanks(model: BuiltinModel, clips: Sequence[np.ndarray], refs: Sequence[str] | None) -> list[dict[str, Any]]:
    """The blank transcripts among `clips` (speech by the voice-activity detector), looked at again."""
    heard = hear(model, clips)
    index = [i for i, h in enumerate(heard) if not h.text.strip() and (h.no_speech_prob or 0.0) <= 0.01]
    rows = second_look(model, [clips[i] for i in index]) if index else []
    for i, row in zip(index, rows, strict=True):
        row["ref"] = refs[i] if refs is not None else None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="builtin")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.model, "cpu")
    assert isinstance(model, BuiltinModel), "the second look needs the built-in model's decoder"
    questions = [u.text for u in eval_utterances(True, 1800) if u.text.endswith("?")]
    for split, (lo, hi, out_lo, out_hi) in SPLITS.items():
        inside = blanks(model, in_domain_clips(hi)[lo:hi], questions[lo:hi])
        outside = [r for c in OUT_OF_DOMAIN for r in blanks(model, out_of_domain_clips(c, out_hi)[out_lo:out_hi], None)]
        n_out = len(OUT_OF_DOMAIN) * (out_hi - out_lo)
        print(f"{split}: {len(inside)} of {hi - lo} in-domain questions blank; {len(outside)} of {n_out} out-of-domain")
        for key in ("avg", "cont"):
            for threshold in (-0.3, -0.4, -0.5, -0.6):
                kept = [r for r in inside if r["stop"] and r[key] >= threshold]
                wrongly = sum(r["stop"] and r[key] >= threshold for r in outside)
                exact = sum(r["text"] == r["ref"] for r in kept)
                wer = word_error_rate([r["ref"] for r in kept], [r["text"] for r in kept]) if kept else 0.0
                print(
                    f"  {key} >= {threshold}: rescues {len(kept)} ({exact} word for word, WER {wer:.3f}), "
                    f"in-domain refused {(len(inside) - len(kept)) / (hi - lo):.3f}; "
                    f"out-of-domain let through {wrongly} of {n_out}"
                )


if __name__ == "__main__":
    main()
