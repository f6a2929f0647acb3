"""Knowing when a transcript was not understood: its confidence, and the criteria that refuse it.

A transcript carries what Whisper's `verbose_json` segments carry: `avg_logprob` (the mean log-probability
of the decoder's chosen tokens, its end token included: `model.generate.DecodeState`), `no_speech_prob`
(from the voice-activity detector, `model.vad.no_speech_in`: one minus the highest speech probability,
smoothed over ~160 ms, over the clip's frames, heard peak-normalised) and `compression_ratio` (zlib's, as
Whisper computes it: a looping text compresses well). A spoken question is refused when a criterion says so;
each criterion is a function of the transcript that names its reason or says nothing, so that the service
(`MMSERVE_SPOKEN_*` settings) and the evaluation (`model.refusal_eval`) apply the same list and a further
criterion can be added to it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# The defaults (the service's `MMSERVE_SPOKEN_*` settings), chosen on held-out data (model/MODEL_CARD.md): the
# detector's no-speech probability of every in-domain question, in held-out voices and under babble at 0 dB
# or telephone-band audio, stays below 0.004, while noise and near-silence score above 0.9 and 39 of 40
# melodies above 0.01. `avg_logprob` of in-domain questions stays above -0.28; so does out-of-domain speech
# (the decoder hallucinates scene questions confidently), so -0.5 only catches transcripts unsure of themselves.
MAX_NO_SPEECH_PROB = 0.01
MIN_AVG_LOGPROB = -0.5
# The built-in model leaves a transcript blank (nothing understood: refused) only when the end is at least this
# likely at its first token (`model.generate.SequenceSpec.blank_min_prob`). Chosen on tuning clips apart from the
# evaluation's (`python -m bench.blank_threshold`): the lowest threshold of its sweep at which at most 0.02 of the
# tuning scene questions in unheard voices are refused (greedy: 0.030; at 0.8: 0.013), which lets the fewest
# out-of-domain clips through (0.950 -> 0.921 of the tuning speech refused; model/MODEL_CARD.md)
MIN_BLANK_PROB = 0.8


@dataclass(frozen=True)
class Heard:
    """A transcript and how sure the model and the voice-activity detector are of it."""

    text: str
    avg_logprob: float | None  # None: the model does not report it
    no_speech_prob: float | None  # None: not measured
    finish_reason: str | None = None  # "stop", "length" or "repetition" (a loop cut short), when known

    @property
    def compression_ratio(self) -> float:
        return compression_ratio(self.text)


Criterion = Callable[[Heard], str | None]  # the reason a transcript is refused, or None


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: the text's UTF-8 size over its zlib-compressed size (0 when empty)."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def no_speech(threshold: float) -> Criterion:
    """Refuse audio the voice-activity detector finds no speech in (`no_speech_prob` above `threshold`)."""

    def check(heard: Heard) -> str | None:
        p = heard.no_speech_prob
        return None if p is None or p <= threshold else f"no speech: no_speech_prob {p:.2f} above {threshold:g}"

    return check


def low_confidence(threshold: float) -> Criterion:
    """Refuse a transcript whose mean token log-probability is below `threshold`."""

    def check(heard: Heard) -> str | None:
        x = heard.avg_logprob
        return None if x is None or x >= threshold else f"avg_logprob {x:.2f} below {threshold:g}"

    return check


def nothing_understood(heard: Heard) -> str | None:
    """Refuse a blank transcript: the built-in model writes nothing for audio that is not a scene sentence
    (everyday speech, other languages, noise, music: its `hearing` training stage)."""
    return None if heard.text.strip() else "nothing in it was understood as a scene sentence"


def looped(heard: Heard) -> str | None:
    """Refuse a transcript cut short because it repeated itself (`model.loops`)."""
    return "the transcript repeated itself" if heard.finish_reason == "repetition" else None


def default_criteria(
    max_no_speech_prob: float = MAX_NO_SPEECH_PROB, min_avg_logprob: float = MIN_AVG_LOGPROB, loops: bool = True
) -> list[Criterion]:
    """The criteria a spoken question is refused by: no speech, nothing understood (a blank transcript), low
    confidence, and a loop (unless `loops` is off)."""
    return [
        no_speech(max_no_speech_prob),
        nothing_understood,
        low_confidence(min_avg_logprob),
        *([looped] if loops else []),
    ]


def refusal(heard: Heard, criteria: Sequence[Criterion]) -> str | None:
    """The first criterion's reason to refuse `heard`, or None: understood."""
    return next((reason for criterion in criteria if (reason := criterion(heard)) is not None), None)
