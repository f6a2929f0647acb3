"""Long test recordings: espeak-ng sentences joined by pauses of known length, over low background noise.

    recording = long_recording(["a red circle", "what colour is the square?"], pauses_s=[1.5])
    recording.samples, recording.speech   # 16 kHz float32 samples; each sentence's (start_s, end_s, text)

A sentence's times are where its sound is (espeak-ng's own leading and trailing silence excluded), so a
test can say how close a detected boundary is to the truth.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import soxr

from tests.support.audio import ESPEAK, speech

RATE = 16_000
NOISE_RMS = 0.003  # about -50 dBFS: a quiet room
_SOUND = 0.01  # a sample this loud is sound, not espeak-ng's silence


@dataclass(frozen=True)
class Spoken:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Recording:
    samples: np.ndarray  # float32 mono at RATE
    speech: list[Spoken]  # in order of time

    @property
    def seconds(self) -> float:
        return self.samples.size / RATE


@functools.cache
def sentence(text: str, voice: str = "en", speed: int = 160) -> np.ndarray:
    """`text` spoken at RATE, trimmed to its sound (read-only: shared between recordings)."""
    if ESPEAK is None:  # tests.support.audio's tone sweep has no pauses to find: say so rather than fail oddly
        raise RuntimeError("long test recordings are espeak-ng speech: apt-get install espeak-ng")
    samples, rate = speech(text, voice, speed)
    samples = soxr.resample(samples, rate, RATE).astype(np.float32)
    loud = np.flatnonzero(np.abs(samples) > _SOUND)
    trimmed = samples[loud[0] : loud[-1] + 1]
    trimmed.flags.writeable = False
    return trimmed


def long_recording(
    texts: Sequence[str], pauses_s: Sequence[float], lead_s: float = 1.0, seed: int = 0, voice: str = "en"
) -> Recording:
    """`texts` spoken one after another, `pauses_s[i]` of silence after the i-th, `lead_s` before the first and
    after the last, all over background noise."""
    assert len(pauses_s) == len(texts) - 1
    parts, spoken, at = [np.zeros(round(lead_s * RATE), np.float32)], [], round(lead_s * RATE)
    for i, text in enumerate(texts):
        said = sentence(text, voice)
        spoken.append(Spoken(at / RATE, (at + said.size) / RATE, text))
        gap = round((pauses_s[i] if i < len(pauses_s) else lead_s) * RATE)
        parts += [said, np.zeros(gap, np.float32)]
        at += said.size + gap
    samples = np.concatenate(parts)
    samples += np.random.default_rng(seed).normal(0, NOISE_RMS, samples.size).astype(np.float32)
    return Recording(samples, spoken)
