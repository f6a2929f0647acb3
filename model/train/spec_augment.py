"""Augmenting a batch of log-mel features: SpecAugment's masks, and vocal tract length perturbation.

SpecAugment (Park et al., 2019): time and frequency bands masked at random. Masked values are set to each
utterance's mean, so a mask reads as a flat, featureless stretch rather than as silence. Only the frames inside
each utterance's length are masked; the padding stays as it was.

Vocal tract length perturbation (Jaitly and Hinton, 2013): a speaker with a shorter or longer vocal tract has
formants at frequencies scaled by a factor; `warp_frequencies` moves each utterance's spectrum along the
frequency axis by such a factor (0.88-1.12), reading each mel bin's value from where its centre frequency
divided by the factor falls, so a few dozen espeak-ng voices sound like many more speakers.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from transformers.audio_utils import hertz_to_mel, mel_to_hertz

WHISPER_MAX_HZ = 8000.0  # the front end's mel filters span 0-8 kHz (`model.audio`)


@cache
def _centres(n_mels: int) -> np.ndarray:
    """The centre frequencies (Hz) of the front end's `n_mels` mel filters (Slaney's scale, 0-8 kHz)."""
    points = np.linspace(0.0, float(hertz_to_mel(WHISPER_MAX_HZ, "slaney")), n_mels + 2)
    return np.asarray(mel_to_hertz(points[1:-1], "slaney"), dtype=np.float64)


def warp_index(n_mels: int, factor: float) -> torch.Tensor:
    """For each mel bin, the (fractional) bin whose value it takes when the spectrum is scaled by `factor`."""
    centres = _centres(n_mels)
    source = np.clip(centres / factor, centres[0], centres[-1])
    return torch.from_numpy(np.interp(source, centres, np.arange(n_mels, dtype=np.float64))).float()


def warp_frequencies(
    features: torch.Tensor,
    lengths: torch.Tensor,
    generator: torch.Generator,
    share: float = 0.5,
    low: float = 0.88,
    high: float = 1.12,
) -> torch.Tensor:
    """A copy of `features` (B, T, n_mels) where a `share` of the utterances have their spectrum scaled along
    frequency by a factor drawn from [`low`, `high`] (linear interpolation between mel bins); padding kept."""
    out = features.clone()
    n_mels = features.shape[2]
    for b in range(features.shape[0]):
        draw = torch.rand(2, generator=generator)
        if float(draw[0]) >= share:
            continue
        index = warp_index(n_mels, low + (high - low) * float(draw[1]))
        below = index.floor().long().clamp(max=n_mels - 1)
        above = (below + 1).clamp(max=n_mels - 1)
        weight = index - below
        length = int(lengths[b])
        rows = features[b, :length]
        out[b, :length] = rows[:, below] * (1 - weight) + rows[:, above] * weight
    return out


def spec_augment(
    features: torch.Tensor,
    lengths: torch.Tensor,
    generator: torch.Generator,
    freq_masks: int = 2,
    max_freq: int = 12,
    time_masks: int = 2,
    max_time_share: float = 0.08,
) -> torch.Tensor:
    """A copy of `features` (B, T, n_mels) with `freq_masks` bands of up to `max_freq` mel bins and `time_masks`
    stretches of up to `max_time_share` of each utterance's frames masked."""
    out = features.clone()
    batch, _, n_mels = features.shape

    def draw(high: int) -> int:
        return int(torch.randint(0, max(1, high), (1,), generator=generator))

    for b in range(batch):
        length = int(lengths[b])
        mean = out[b, :length].mean()
        for _ in range(freq_masks):
            width = draw(max_freq + 1)
            start = draw(n_mels - width + 1)
            out[b, :length, start : start + width] = mean
        for _ in range(time_masks):
            width = draw(int(max_time_share * length) + 1)
            start = draw(length - width + 1)
            out[b, start : start + width] = mean
    return out
