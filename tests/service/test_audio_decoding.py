"""Audio decoding (service.audio) on its own: formats, downmixing, resampling, and each refusal's status."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile
import soxr
from fastapi.exceptions import RequestValidationError

import service.audio
from model import AudioSpec
from service.audio import decode_audio, language_code
from service.errors import InvalidAudio, PayloadTooLarge, ServiceError, UnsupportedAudioFormat
from tests.support.audio import encode, speech, tone
from tests.support.server import encode_image, noise_image

SPEC = AudioSpec(sampling_rate=16_000, max_seconds=4.0, languages=frozenset({"en", "fr"}))
SPEECH, SPEECH_RATE = speech("a red circle above a blue square")


def decode(data: bytes, max_seconds: float = 30.0) -> service.audio.DecodedAudio:
    return decode_audio(data, SPEC, max_seconds)


def refusal(data: bytes, max_seconds: float = 30.0) -> tuple[int, str]:
    """The status and the message (422s: their error type and message) that decoding `data` is refused with."""
    with pytest.raises((ServiceError, RequestValidationError)) as caught:
        decode(data, max_seconds)
    error = caught.value
    if isinstance(error, RequestValidationError):
        [problem] = error.errors()
        assert problem["loc"] == ("body", "audio")
        return 422, f"{problem['type']}: {problem['msg']}"
    assert isinstance(error, ServiceError)
    return error.status_code, error.message


def test_wav_is_downmixed_and_resampled_with_soxr() -> None:
    decoded = decode(encode(SPEECH, SPEECH_RATE, subtype="FLOAT"))
    assert decoded.samples.dtype == np.float32
    np.testing.assert_array_equal(decoded.samples, soxr.resample(SPEECH, SPEECH_RATE, 16_000))
    assert decoded.seconds == pytest.approx(len(SPEECH) / SPEECH_RATE)


def test_audio_at_the_models_rate_is_taken_as_it_is() -> None:
    samples = tone(1.0)
    np.testing.assert_array_equal(decode(encode(samples, 16_000, subtype="FLOAT")).samples, samples)


@pytest.mark.parametrize(("format", "subtype"), [("FLAC", None), ("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", None)])
def test_compressed_formats_decode_to_about_the_same_audio(format: str, subtype: str | None) -> None:
    rate = 16_000 if subtype == "OPUS" else SPEECH_RATE  # Opus takes 8, 12, 16, 24 or 48 kHz
    original = soxr.resample(SPEECH, SPEECH_RATE, rate) if rate != SPEECH_RATE else SPEECH
    decoded = decode(encode(original, rate, format, subtype))
    assert decoded.seconds == pytest.approx(len(original) / rate, abs=0.1)
    assert abs(decoded.samples).max() > 0.1


def test_eight_channels_are_downmixed_and_nine_refused() -> None:
    eight = decode(encode(tone(1.0, channels=8), 16_000, subtype="FLOAT"))
    np.testing.assert_allclose(eight.samples, tone(1.0), atol=1e-6)
    status, message = refusal(encode(tone(0.5, channels=9), 16_000))
    assert status == 422 and message.startswith("channels: the audio has 9 channels; at most 8")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the audio is empty (0 bytes)"),
        (b"hello, this is text and not audio at all", "the upload is not audio"),
        (encode_image(noise_image(1)), "the upload is not audio"),
        (b"RIFF\x00\x00\x00\x00WAVE" + bytes(100), "the WAV audio is corrupt or truncated"),
        (b"fLaC" + bytes(300), "the FLAC audio is corrupt or truncated"),
    ],
)
def test_bytes_that_are_not_audio_are_400(data: bytes, message: str) -> None:
    status, said = refusal(data)
    assert status == 400 and said.startswith(message)


@pytest.mark.parametrize("format", ["WAV", "FLAC", "MP3"])
def test_truncated_audio_is_400(format: str) -> None:
    whole = encode(SPEECH, SPEECH_RATE, format)
    status, message = refusal(whole[: len(whole) // 2])
    assert status == 400 and "truncated" in message


@pytest.mark.parametrize("placeholder", [0x7FFFF000, 0xFFFFFFFF])
def test_a_wav_written_to_a_pipe_is_whole(placeholder: int) -> None:
    """`espeak-ng --stdout` (and ffmpeg to a pipe) cannot seek back to write the lengths: they declare a
    placeholder, which is no truncation; a real length still is."""
    whole = encode(SPEECH, SPEECH_RATE)
    assert whole[36:40] == b"data"
    piped = bytearray(whole)
    piped[4:8] = struct.pack("<I", min(placeholder + 36, 0xFFFFFFFF))
    piped[40:44] = struct.pack("<I", placeholder)
    np.testing.assert_array_equal(decode(bytes(piped)).samples, decode(whole).samples)
    piped[40:44] = struct.pack("<I", len(whole) - 44 + 2)  # two bytes more than arrived
    assert refusal(bytes(piped)) == (400, "the WAV audio is truncated: it ends before its header says")


def _wav_with_codec(tag: int) -> bytes:
    wav = bytearray(encode(tone(0.5), 16_000))
    assert wav[12:16] == b"fmt "
    wav[20:22] = struct.pack("<H", tag)
    return bytes(wav)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (_wav_with_codec(0x00FF), "WAV with codec tag 0x00FF"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(64), "MP4/M4A (AAC or ALAC) audio"),
        (b"\x1aE\xdf\xa3" + bytes(64), "WebM/Matroska audio"),
        (encode(tone(0.5), 16_000, "AIFF"), "AIFF audio"),
        (b"OggS\x00\x02" + bytes(20) + b"\x01\x50" + b"Speex   " + bytes(72), "Ogg Speex"),
    ],
)
def test_audio_formats_and_codecs_we_do_not_decode_are_415(data: bytes, named: str) -> None:
    status, message = refusal(data)
    assert status == 415 and message.startswith(f"{named} is not supported; send WAV, FLAC, Ogg")


@pytest.mark.parametrize(
    ("samples", "rate", "kind"),
    [
        (np.zeros(0, dtype=np.float32), 16_000, "empty_audio"),
        (np.zeros(16_000, dtype=np.float32), 16_000, "silent_audio"),
        (np.full(1_000, 1e-4, dtype=np.float32), 16_000, "silent_audio"),  # -80 dBFS
        (tone(1.0, rate=500), 500, "sample_rate"),
        (tone(0.01, rate=1_000_000), 1_000_000, "sample_rate"),
        (np.array([0.5, np.nan, 0.5], dtype=np.float32), 16_000, "invalid_samples"),
        (tone(0.049), 16_000, "too_short"),
        (tone(0.049, rate=8_000), 8_000, "too_short"),
    ],
)
def test_audio_that_cannot_be_transcribed_is_422(samples: np.ndarray, rate: int, kind: str) -> None:
    status, message = refusal(encode(samples, rate, subtype="FLOAT"))
    assert status == 422 and message.startswith(f"{kind}: ")


def test_duration_is_refused_from_the_header_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object) -> None:
        raise AssertionError("samples were decoded")

    monkeypatch.setattr(service.audio, "_read_mono", no_decoding)
    status, message = refusal(encode(tone(60.0), 16_000, "FLAC"))
    assert status == 413
    assert message == "the audio is 60.0 s long; the model's window is 4 s (longer audio is refused, not chunked)"
    status, message = refusal(encode(tone(3.0), 16_000, "FLAC"), max_seconds=2.5)
    assert (status, message) == (413, "the audio is 3.0 s long; the limit is 2.5 s (MMSERVE_MAX_AUDIO_SECONDS)")


def test_exactly_the_window_is_taken() -> None:
    assert decode(encode(tone(4.0, rate=44_100), 44_100)).samples.size == 4 * 16_000


def test_a_recording_to_be_chunked_may_be_longer_than_the_window() -> None:
    """Past the model's 4 s window, up to the limit alone: the recording is cut at pauses afterwards."""
    decoded = decode_audio(encode(tone(10.0, rate=44_100), 44_100), SPEC, max_seconds=12.0, chunked=True)
    assert decoded.samples.size == 10 * 16_000 and decoded.seconds == 10.0
    with pytest.raises(PayloadTooLarge, match=r"^the audio is 13.0 s long; the limit is 12 s \(MMSERVE_MAX_AUDIO"):
        decode_audio(encode(tone(13.0), 16_000, "FLAC"), SPEC, max_seconds=12.0, chunked=True)


def test_languages_are_codes_the_model_knows() -> None:
    assert language_code(None, SPEC) is None
    assert language_code(" FR ", SPEC) == "fr"
    with pytest.raises(RequestValidationError) as caught:
        language_code("klingon", SPEC)
    [problem] = caught.value.errors()
    assert problem["loc"] == ("body", "language")
    assert problem["msg"] == "the model does not know the language 'klingon'; use one of en, fr"


def test_errors_are_typed() -> None:
    assert (InvalidAudio.status_code, UnsupportedAudioFormat.status_code, PayloadTooLarge.status_code) == (
        400,
        415,
        413,
    )
    assert soundfile.__libsndfile_version__ >= "1.1"  # MP3 and Opus need libsndfile 1.1 or later
