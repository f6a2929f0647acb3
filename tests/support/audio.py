"""Test audio: speech synthesised with espeak-ng (a tone sweep when it is not installed), and encoders.

    speech("a red circle")              # float32 mono samples and their rate (espeak-ng speaks at 22,050 Hz)
    encode(samples, rate, "FLAC")       # the bytes of an audio file, as a client would upload them
"""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pytest
import soundfile

ESPEAK = shutil.which("espeak-ng")
NO_ESPEAK = "espeak-ng is not installed: apt-get install espeak-ng (.ci/run installs it)"
# For tests that need real speech (what the shipped model hears, speech training), not just audio.
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason=NO_ESPEAK)
# flite's voices (speakers of another kind, in the hearing stage's pool and two evaluation conditions)
needs_flite = pytest.mark.skipif(
    shutil.which("flite") is None, reason="flite is not installed: apt-get install flite (.ci/run installs it)"
)


def speech(text: str, voice: str = "en", speed: int = 160) -> tuple[np.ndarray, int]:
    """`text` spoken by espeak-ng (float32 mono, 22,050 Hz); without espeak-ng, a tone sweep as long as its words."""
    if ESPEAK is None:
        rate = 22_050
        t = np.arange(int(0.35 * len(text.split()) * rate)) / rate
        return (0.5 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32), rate
    wav = subprocess.run(
        [ESPEAK, "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True, timeout=60
    ).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return samples, rate


def encode(samples: np.ndarray, rate: int, format: str = "WAV", subtype: str | None = None) -> bytes:
    """An audio file's bytes (WAV 16-bit PCM by default; FLAC, OGG, MP3 as libsndfile writes them)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def tone(seconds: float, rate: int = 16_000, frequency: float = 440.0, channels: int = 1) -> np.ndarray:
    """A sine tone (the same in every channel), float32, shape (frames,) or (frames, channels)."""
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    return mono if channels == 1 else np.repeat(mono[:, None], channels, axis=1)
