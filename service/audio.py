"""Safe audio decoding: bytes → float32 mono samples at the model's rate, with the limits enforced first.

The order matters, as for images: the byte limit is checked by the caller while reading; here the first
bytes say which container it is (only WAV, FLAC, Ogg and MP3 reach libsndfile; other audio is named in
a 415), the header is parsed (duration, rate and channels are refused before any sample is decoded), and
only then are the samples decoded, block by block and downmixed as they come (memory stays one mono
track), then resampled with soxr. Runs in the decode pool, never on the event loop.

Answers: 400 for bytes that are not audio, or a corrupt or truncated stream; 413 for audio longer than
the limit (`max_seconds`, and the model's window unless the recording is to be cut at pauses into chunks
that fit it: `chunked=True`, see `model.speech_chunks`); 415 for audio in a format or codec we do not
decode (M4A/AAC, WebM, AIFF, a WAV of AAC, ...);
422 (on the field) for audio that decodes but cannot be transcribed: no samples, silence only (peak
below -60 dBFS), non-finite samples, shorter than 50 ms (no word is that short, and a log-mel front end
needs a window's worth of samples: the built-in model's failed on under 13 ms), a sample rate outside
1 kHz to 384 kHz, more than 8 channels.
Up to 8 channels are downmixed to mono (their mean).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr
from fastapi.exceptions import RequestValidationError

from model import AudioSpec
from service.errors import InvalidAudio, PayloadTooLarge, UnsupportedAudioFormat

ACCEPTED_TEXT = "WAV, FLAC, Ogg (Vorbis, Opus or FLAC) or MP3"
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 8  # 7.1 surround; downmixed
SILENCE_PEAK = 10 ** (-60 / 20)  # -60 dBFS
MIN_SECONDS = 0.05  # shorter audio holds no word
_BLOCK_FRAMES = 64 * 1024
_STREAMED_WAV_SIZE = 0x7FFF0000  # a data chunk declaring this many bytes or more: a placeholder (see _wav_truncated)
_SLACK_FRAMES = 2 * 1152  # two MP3 frames: decoders may drop encoder padding at the end
# WAV codec tags libsndfile decodes: PCM, MS ADPCM, IEEE float, A-law, µ-law, IMA ADPCM, GSM 6.10, MPEG,
# MPEG Layer 3, and the extensible header (whose sub-format libsndfile checks itself).
_WAV_CODECS = frozenset({0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0x0031, 0x0050, 0x0055, 0xFFFE})
_OGG_CODECS = {b"\x01vorbis": "Vorbis", b"OpusHead": "Opus", b"\x7fFLAC": "FLAC"}
_OGG_OTHERS = {b"Speex   ": "Speex", b"\x80theora": "Theora video", b"fishead\x00": "Ogg Skeleton"}


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, at the model's rate
    seconds: float  # the duration as sent


def decode_audio(
    data: bytes, spec: AudioSpec, max_seconds: float, field: str = "audio", chunked: bool = False
) -> DecodedAudio:
    """Decode an upload for a model that takes `spec`; at most `max_seconds` (and the model's window, unless the
    recording is to be cut into chunks that fit it: `model.speech_chunks`)."""
    if not data:
        raise InvalidAudio(f"the audio is empty (0 bytes); send {ACCEPTED_TEXT}")
    container = _sniff(data, field)
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            rate, channels, declared = sound.samplerate, sound.channels, sound.frames
            max_frames = _check_header(rate, channels, declared, spec, max_seconds, field, chunked)
            mono = _read_mono(sound, max_frames + 1)
    except soundfile.LibsndfileError as e:
        if e.code == 4:  # SF_ERR_UNSUPPORTED_ENCODING
            raise UnsupportedAudioFormat(f"the {container} audio's encoding is not supported ({e.error_string})") from e
        raise InvalidAudio(f"the {container} audio is corrupt or truncated and cannot be decoded") from e
    if mono.size > max_frames:  # the header understated the length
        raise _too_long(mono.size / rate, spec, max_seconds, chunked)
    if mono.size + _SLACK_FRAMES < declared or _wav_truncated(data):
        raise InvalidAudio(f"the {container} audio is truncated: it ends before its header says")
    if mono.size == 0:
        raise _unprocessable(field, "empty_audio", "the audio holds no samples (0 s)")
    if not np.isfinite(mono).all():
        raise _unprocessable(field, "invalid_samples", "the audio holds samples that are not finite (NaN or inf)")
    if float(np.abs(mono).max()) < SILENCE_PEAK:
        raise _unprocessable(field, "silent_audio", "the audio is silent (its peak is below -60 dBFS)")
    seconds = mono.size / rate
    if seconds < MIN_SECONDS:
        message = f"the audio is {seconds * 1000:.0f} ms long; at least {MIN_SECONDS * 1000:.0f} ms is transcribed"
        raise _unprocessable(field, "too_short", message)
    if rate != spec.sampling_rate:
        mono = soxr.resample(mono, rate, spec.sampling_rate).astype(np.float32, copy=False)
        limit = max_seconds if chunked else min(max_seconds, spec.max_seconds)
        mono = mono[: math.floor(limit * spec.sampling_rate)]  # a rounded-up last sample at most
    return DecodedAudio(mono, seconds)


def language_code(language: str | None, spec: AudioSpec, field: str = "language") -> str | None:
    """The language code the model takes (lower-cased), None to let it detect; 422 for one it does not know."""
    if language is None:
        return None
    code = language.strip().lower()
    if code not in spec.languages:
        known = ", ".join(sorted(spec.languages)[:20]) + (", ..." if len(spec.languages) > 20 else "")
        message = f"the model does not know the language {language!r}; use one of {known}"
        raise _unprocessable(field, "language", message)
    return code


def _check_header(
    rate: int, channels: int, frames: int, spec: AudioSpec, max_seconds: float, field: str, chunked: bool
) -> int:
    """Refuse from the header alone; the most frames to decode."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise _unprocessable(
            field, "sample_rate", f"the sample rate {rate} Hz is outside {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"
        )
    if channels > MAX_CHANNELS:
        raise _unprocessable(
            field, "channels", f"the audio has {channels} channels; at most {MAX_CHANNELS} are downmixed to mono"
        )
    limit = max_seconds if chunked else min(max_seconds, spec.max_seconds)
    if frames / rate > limit:
        raise _too_long(frames / rate, spec, max_seconds, chunked)
    return math.floor(limit * rate)


def _read_mono(sound: soundfile.SoundFile, max_frames: int) -> np.ndarray:
    """At most `max_frames` frames, each block downmixed as it is decoded (one mono track in memory).

    `read` returns only the frames the decoder produced (`blocks` would pad a short stream to its header's
    length with zeros, hiding a truncation).
    """
    blocks: list[np.ndarray] = []
    remaining = max_frames
    while remaining > 0:
        block = sound.read(min(_BLOCK_FRAMES, remaining), dtype="float32", always_2d=True)
        if not len(block):
            break
        blocks.append(block.mean(axis=1, dtype=np.float32))
        remaining -= len(block)
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def _too_long(seconds: float, spec: AudioSpec, max_seconds: float, chunked: bool) -> PayloadTooLarge:
    if spec.max_seconds <= max_seconds and not chunked:
        reason = f"the model's window is {spec.max_seconds:g} s (longer audio is refused, not chunked)"
    else:
        reason = f"the limit is {max_seconds:g} s (MMSERVE_MAX_AUDIO_SECONDS)"
    return PayloadTooLarge(f"the audio is {seconds:.1f} s long; {reason}")


def _unprocessable(field: str, kind: str, message: str) -> RequestValidationError:
    """A 422 on the audio field, in FastAPI's validation shape (the content is the field's value)."""
    return RequestValidationError([{"type": kind, "loc": ("body", field), "msg": message, "input": None}])


def _sniff(data: bytes, field: str) -> str:
    """The container, from the first bytes: one we decode, else 415 naming another audio format, else 400."""
    head = data[:64]
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        tag = _wav_codec(data)
        if tag is not None and tag not in _WAV_CODECS:
            raise UnsupportedAudioFormat(f"WAV with codec tag 0x{tag:04X} is not supported; send {ACCEPTED_TEXT}")
        return "WAV"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        _check_ogg_codec(data)
        return "Ogg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06):
        return "MP3"
    other = _other_audio(head)
    if other:
        raise UnsupportedAudioFormat(f"{other} audio is not supported; send {ACCEPTED_TEXT}")
    raise InvalidAudio(f"the upload is not audio; send {ACCEPTED_TEXT}")


def _other_audio(head: bytes) -> str | None:
    """Audio (or media) formats we recognise and do not decode."""
    if head[4:8] == b"ftyp":
        return "MP4/M4A (AAC or ALAC)"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "WebM/Matroska"
    if head[:5] == b"#!AMR":
        return "AMR"
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "AAC (ADTS)"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI video"
    return {b".snd": "AU", b"caff": "CAF", b"MThd": "MIDI", b"wvpk": "WavPack", b"MAC ": "Monkey's Audio"}.get(head[:4])


def _riff_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(id, data offset, declared size) of each top-level RIFF chunk, as far as the bytes go."""
    chunks, offset = [], 12
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset + 4 : offset + 8], "big" if data[:4] == b"RIFX" else "little")
        chunks.append((data[offset : offset + 4], offset + 8, size))
        offset += 8 + size + (size & 1)
    return chunks


def _wav_codec(data: bytes) -> int | None:
    for chunk, start, _ in _riff_chunks(data):
        if chunk == b"fmt " and start + 2 <= len(data):
            return int.from_bytes(data[start : start + 2], "big" if data[:4] == b"RIFX" else "little")
    return None


def _wav_truncated(data: bytes) -> bool:
    """A RIFF WAV whose data chunk declares more bytes than arrived.

    A WAV written to a pipe cannot go back to fill in its length, so it declares a placeholder instead:
    0xFFFFFFFF (ffmpeg), or just under 2 GiB (`espeak-ng --stdout` declares 0x7FFFF000): those are not
    truncations (a real WAV that long is far over any upload limit). (A WAV declaring 0 bytes holds no
    samples for libsndfile: a 422.)"""
    if data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        return False
    for chunk, start, size in _riff_chunks(data):
        if chunk == b"data":
            return 0 < size < _STREAMED_WAV_SIZE and start + size > len(data)
    return False


def _check_ogg_codec(data: bytes) -> None:
    """An Ogg stream's first packet names its codec: 415 for the ones libsndfile does not decode."""
    if len(data) < 27:
        return
    packet = data[27 + data[26] :][:8]
    for magic, name in _OGG_OTHERS.items():
        if packet.startswith(magic):
            raise UnsupportedAudioFormat(f"Ogg {name} is not supported; send {ACCEPTED_TEXT}")
