"""The audio tower: Whisper's log-mel front end, then a small Transformer encoder with convolutional subsampling.

Its tokens feed the same decoder that captions images, through the same cross-attention: the decoder
reads `[BOS]` and writes what was said. Audio has a length, unlike an image, so the tokens come with a
validity mask (`valid`) that the decoder's cross-attention honours.

The front end is transformers' `WhisperFeatureExtractor` (80 mel bins, 25 ms windows every 10 ms, log10,
clamped to 8 below the utterance's peak and scaled), computed per utterance, so an utterance's features
never depend on what it is batched with. Two stride-2 convolutions make a token of every 40 ms; padded
frames are zeroed before each convolution, so a padded row computes what it would alone.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperFeatureExtractor

from model.config import AudioConfig
from model.layers import Block, init_weights, scale_residual_init

HOP = 160  # samples between frames at 16 kHz: 10 ms


@cache
def _extractor(sampling_rate: int, n_mels: int, max_seconds: float) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(
        feature_size=n_mels,
        sampling_rate=sampling_rate,
        hop_length=HOP,
        n_fft=400,
        chunk_length=int(np.ceil(max_seconds)),
    )


def log_mel(samples: np.ndarray, config: AudioConfig) -> torch.Tensor:
    """Float32 mono samples at `config.sampling_rate` → log-mel features (frames, n_mels), float32."""
    extractor = _extractor(config.sampling_rate, config.n_mels, config.max_seconds)
    samples = np.asarray(samples, dtype=np.float32)
    if len(samples) <= extractor.n_fft:  # the STFT's reflection padding needs more samples than a window
        samples = np.pad(samples, (0, extractor.n_fft + 1 - len(samples)))
    features = extractor(
        samples, sampling_rate=config.sampling_rate, padding="longest",
        return_tensors="np",
    )["input_features"][0]  # (n_mels, frames)
    return torch.from_numpy(np.ascontiguousarray(features.T))


def pad_features(features: list[torch.Tensor], pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames_i, n_mels) features → zero-padded (B, T, n_mels) and their lengths (B,); `pin`: the batch in
    page-locked memory, so that its copy to a CUDA device is really asynchronous."""
    lengths = torch.tensor([f.shape[0] for f in features])
    shape = (len(features), int(lengths.max()), features[0].shape[1])
    batch = torch.zeros(shape, dtype=features[0].dtype, pin_memory=pin)
    for i, f in enumerate(features):
        batch[i, : f.shape[0]] = f
    return batch, lengths


def sincos_1d(length: int, dim: int) -> torch.Tensor:
    """Fixed sine-cosine positions (length, dim), as in the original Transformer."""
    half = dim // 2
    omega = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class AudioEncoder(nn.Module):
    """Log-mel features (B, T, n_mels) with lengths (B,) → tokens (B, N, out_dim) and their validity (B, N)."""

    pos: torch.Tensor  # (max_tokens, dim), a buffer

    def __init__(self, config: AudioConfig, out_dim: int) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv1d(config.n_mels, config.dim, 3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(config.dim, config.dim, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.ln = nn.LayerNorm(config.dim)
        self.out = nn.Linear(config.dim, out_dim)
        self.register_buffer("pos", sincos_1d(config.max_tokens, config.dim), persistent=False)
        self.apply(init_weights)
        scale_residual_init(self, config.depth)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, valid = self.embed(features, lengths)
        mask = valid[:, None, None, :]  # keys: the valid tokens (every row has one: no audio is empty)
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.finish(x), valid

    # The parts of `forward`, for an encoding run a block at a time (`model.multimodal.AudioEncoding`).
    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolutions and positions: (B, N, dim) before the blocks, and the tokens' validity (B, N)."""
        x = features.transpose(1, 2)  # (B, n_mels, T)
        for conv in (self.conv1, self.conv2):
            x = x * (torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None])[:, None].to(x.dtype)
            x = F.gelu(conv(x))
            lengths = (lengths + 1) // 2
        valid = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]  # (B, N)
        return x.transpose(1, 2) + self.pos[: x.shape[2]].to(x.dtype), valid

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """After the blocks: the tokens (B, N, out_dim)."""
        tokens: torch.Tensor = self.out(self.ln(x))
        return tokens
