"""Voice activity: Silero VAD's network, run over a whole recording at once.

Silero VAD (PyPI `silero-vad`, MIT) ships its model in the wheel: `silero_vad.jit`, the TorchScript model
its `load_silero_vad()` loads by default (2.3 MB, 8 and 16 kHz). This is the same 16 kHz network in plain
PyTorch, its weights read from that file, so that nothing is downloaded and neither onnxruntime nor
torchaudio is needed. (The wheel's `silero_vad_16k.safetensors` holds other weights than the default
model's, so it is not used.) Its output is one speech probability per 32 ms frame
(512 samples at 16 kHz), equal to the reference TorchScript model fed frame by frame (a test checks it).

The reference runs one frame per call and carries the LSTM's state in Python, 18,750 calls for ten
minutes of audio. Here every frame goes through the convolutional encoder at once (a frame sees only its
own 512 samples and the 64 before them), and the LSTM runs across all frames in one call. The module holds
no state between calls, so the decode pool's threads can share one copy. (The `silero_vad` package itself
is never imported here: importing it sets torch's thread count to 1 for the whole process.)
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLING_RATE = 16_000  # Hz, the only rate these weights take
FRAME_SAMPLES = 512  # 32 ms: one probability per frame
CONTEXT_SAMPLES = 64  # each frame is heard with the 64 samples before it (zeros before the first)
_BLOCK_FRAMES = 2_048  # frames through the encoder at a time (~65 s; bounds the memory of long recordings)


class SileroVAD(nn.Module):
    """Silero VAD v5+ at 16 kHz: an STFT as a convolution, four convolutions, an LSTM across frames, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stft = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)  # 129 real + 129 imaginary bins
        self.encoder = nn.Sequential(
            nn.Conv1d(129, 128, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(128, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(64, 128, 3, padding=1),
            nn.ReLU(),
        )
        self.rnn = nn.LSTM(128, 128, batch_first=True)
        self.head = nn.Conv1d(128, 1, 1)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(F, CONTEXT + FRAME) samples → (F, 128): each frame on its own."""
        x = F.pad(frames, (0, 64), mode="reflect").unsqueeze(1)  # (F, 1, 640)
        x = self.stft(x)  # (F, 258, 4)
        magnitude = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()  # (F, 129, 4)
        encoded: torch.Tensor = self.encoder(magnitude)  # (F, 128, 1)
        return encoded.squeeze(-1)  # (F, 128)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        """(N,) samples at 16 kHz → (ceil(N / 512),) speech probabilities, one per frame."""
        frames = _frames(samples)  # (F, 576)
        encoded = torch.cat([self.encode(block) for block in frames.split(_BLOCK_FRAMES)])  # (F, 128)
        hidden, _ = self.rnn(encoded.unsqueeze(0))  # (1, F, 128)
        logits: torch.Tensor = self.head(F.relu(hidden).transpose(1, 2))  # (1, 1, F)
        return torch.sigmoid(logits).flatten()


def speech_probabilities(samples: np.ndarray) -> np.ndarray:
    """One speech probability per 32 ms frame of float32 mono samples at 16 kHz (the last frame zero-padded)."""
    if samples.size == 0:
        return np.zeros(0, dtype=np.float32)
    with torch.inference_mode():
        probabilities: np.ndarray = _vad()(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))).numpy()
    return probabilities


SMOOTHING_FRAMES = 5  # ~160 ms: one loud frame in noise is not speech, a syllable lasts longer


def no_speech_probability(probabilities: np.ndarray) -> float:
    """How sure the detector is that audio holds no speech, from its frames' speech probabilities: one minus
    the highest probability averaged over `SMOOTHING_FRAMES` frames (1.0 for no frames)."""
    if probabilities.size == 0:
        return 1.0
    width = min(SMOOTHING_FRAMES, probabilities.size)
    smoothed = np.convolve(probabilities, np.ones(width) / width, mode="valid")
    return float(1.0 - smoothed.max())


NORMALISED_PEAK = 0.5  # the level `no_speech_in` hears a clip at


def no_speech_in(samples: np.ndarray, sampling_rate: int) -> float:
    """`no_speech_probability` of a whole clip of float32 mono samples at any rate: resampled to 16 kHz and
    peak-normalised to `NORMALISED_PEAK` for the detector, whose output depends on the level (speech at
    -50 dB of full scale looks like silence to it; normalised, a quiet clip is heard as a loud one, and a
    faint hiss becomes a loud hiss, still no speech)."""
    import soxr

    heard = samples if sampling_rate == SAMPLING_RATE else soxr.resample(samples, sampling_rate, SAMPLING_RATE)
    heard = np.asarray(heard, dtype=np.float32)
    peak = float(np.abs(heard).max()) if heard.size else 0.0
    return no_speech_probability(speech_probabilities(heard * (NORMALISED_PEAK / peak) if peak > 0 else heard))


def weights_path() -> Path:
    """The TorchScript model inside the installed `silero-vad` wheel (found without importing the package)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the voice-activity detector needs the `silero-vad` package (pip install silero-vad)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.jit"


@functools.cache
def _vad() -> SileroVAD:
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the wheel ships its weights in it
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        reference = torch.jit.load(str(weights_path()), map_location="cpu").state_dict()  # type: ignore[no-untyped-call]
    ours = {"stft.weight": reference["_model.stft.forward_basis_buffer"]}
    for i in range(4):  # the reference's conv blocks (conv, identity, ReLU) are our encoder's 0, 2, 4, 6
        for param in ("weight", "bias"):
            ours[f"encoder.{2 * i}.{param}"] = reference[f"_model.encoder.{i}.reparam_conv.{param}"]
    for param in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):  # an LSTMCell's: a one-layer LSTM's
        ours[f"rnn.{param}_l0"] = reference[f"_model.decoder.rnn.{param}"]
    for param in ("weight", "bias"):
        ours[f"head.{param}"] = reference[f"_model.decoder.decoder.2.{param}"]
    model = SileroVAD()
    model.load_state_dict(ours)
    return model.eval().requires_grad_(False)


def _frames(samples: torch.Tensor) -> torch.Tensor:
    """(N,) → (F, CONTEXT + FRAME): the samples in 512-sample frames, each after the last 64 samples before it."""
    padded = F.pad(samples, (CONTEXT_SAMPLES, -samples.numel() % FRAME_SAMPLES))  # zeros before and after
    count = (padded.numel() - CONTEXT_SAMPLES) // FRAME_SAMPLES
    return padded.unfold(0, CONTEXT_SAMPLES + FRAME_SAMPLES, FRAME_SAMPLES)[:count]  # (F, 576)
