"""Listening conditions a recording meets on its way: speed, a room, a telephone line, a codec, other talkers.

Each is a pure function of the waveform (float32 mono) and its parameters, so that training (which draws the
parameters at random: `model.train.speech`) and evaluation (which fixes them: `model.evaluate`) apply the
same conditions. A random room is drawn from a `numpy.random.Generator` the caller seeds.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import soxr

TELEPHONE_RATE = 8_000  # Hz: the narrow band of a telephone line


def change_speed(samples: np.ndarray, factor: float) -> np.ndarray:
    """Played `factor` times as fast, pitch and formants moving with it (Kaldi's speed perturbation)."""
    # read as if recorded at rate * factor, then resampled back to the rate: factor times fewer samples
    out: np.ndarray = soxr.resample(samples, 16_000 * factor, 16_000).astype(np.float32)
    return out


def telephone(samples: np.ndarray, rate: int) -> np.ndarray:
    """Through a telephone line: band-limited to 8 kHz sampling, 8-bit μ-law (G.711), and back to `rate`."""
    narrow = np.clip(soxr.resample(samples, rate, TELEPHONE_RATE), -1.0, 1.0)
    mu = 255.0
    coded = np.round(np.sign(narrow) * np.log1p(mu * np.abs(narrow)) / np.log1p(mu) * 127) / 127  # 8 bits
    decoded = np.sign(coded) * ((1 + mu) ** np.abs(coded) - 1) / mu
    out: np.ndarray = soxr.resample(decoded.astype(np.float32), TELEPHONE_RATE, rate).astype(np.float32)
    return out


def compressed(samples: np.ndarray, rate: int, quality: float = 0.9) -> np.ndarray:
    """Through MP3 at a low bit rate (libsndfile's `compression_level` 0-1: 0.9 is about 24 kbit/s at 16 kHz)."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="MP3", compression_level=quality)
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    out = np.zeros_like(samples)  # the codec's frames add a little at the ends: keep the length
    n = min(len(out), len(decoded))
    out[:n] = decoded[:n]
    return out


def room_response(rt60: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response: a direct path, then noise decaying 60 dB in `rt60` seconds."""
    length = max(1, int(rt60 * rate))
    t = np.arange(length) / rate
    tail = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)  # ln(1000) = 6.9: -60 dB at rt60
    tail[: int(0.002 * rate)] = 0.0  # the first reflections arrive a little after the direct sound
    response: np.ndarray = (0.3 * tail / np.sqrt(np.sum(tail**2) + 1e-12)).astype(np.float32)
    response[0] = 1.0
    return response


def reverberate(samples: np.ndarray, rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Spoken in a room with reverberation time `rt60` (seconds); the level of the dry speech kept."""
    response = room_response(rt60, rate, rng)
    size = len(samples) + len(response) - 1
    n = 1 << (size - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(samples, n) * np.fft.rfft(response, n), n)[: len(samples)]
    peak = float(np.abs(samples).max()) or 1.0
    out: np.ndarray = (wet * peak / max(1e-6, float(np.abs(wet).max()))).astype(np.float32)
    return out


def with_talkers(samples: np.ndarray, others: list[np.ndarray], snr_db: float) -> np.ndarray:
    """Other talkers (`others`, mixed and looped to the length) `snr_db` below the speech; clipped to ±1."""
    if not others:
        return samples
    babble = np.zeros_like(samples)
    for other in others:
        if len(other) == 0:
            continue
        babble += np.resize(other, len(samples))  # np.resize repeats what is too short
    speech_power = float(np.mean(samples**2))
    babble_power = float(np.mean(babble**2))
    if speech_power <= 0 or babble_power <= 0:
        return samples
    babble *= np.sqrt(speech_power / babble_power / 10 ** (snr_db / 10))
    out: np.ndarray = np.clip(samples + babble, -1.0, 1.0).astype(np.float32)
    return out
