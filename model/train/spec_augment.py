"""SpecAugment (Park et al., 2019) on a batch of log-mel features: time and frequency bands masked at random.

Masked values are set to each utterance's mean, so a mask reads as a flat, featureless stretch rather than as
silence. Only the frames inside each utterance's length are masked; the padding stays as it was.
"""

from __future__ import annotations

import torch


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
