"""POST /transcribe with a tiny Whisper: equal to the model called directly, batched, and each refusal alone.

The app serves the built-in model for the image tasks and Whisper for `transcribe`
(`MMSERVE_TRANSCRIBE_MODEL`); requests arrive together, so they share batches (`transcribe_max_wait_ms`).
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import soxr

from model.hf import load_hf_model
from tests.support.audio import encode, speech, tone
from tests.support.recordings import RATE, long_recording
from tests.support.server import error_of

pytestmark = pytest.mark.anyio

SENTENCES = ["a red circle", "two blue squares below a green triangle", "what colour is the circle?"]
LANGUAGES = [None, "en", "fr"]


@pytest.fixture(scope="module")
def clips() -> list[tuple[np.ndarray, int]]:
    return [speech(sentence) for sentence in SENTENCES]


@pytest.fixture(scope="module")
def expected(tiny_whisper_dir: Path, clips: list[tuple[np.ndarray, int]]) -> list[str]:
    """The model's own transcripts of the clips, resampled to 16 kHz with soxr as the service does."""
    model = load_hf_model(str(tiny_whisper_dir))
    audio = [soxr.resample(samples, rate, 16_000) for samples, rate in clips]
    return [model.transcribe([a], language)[0] for a, language in zip(audio, LANGUAGES, strict=True)]


@pytest.fixture(scope="module")
async def client(serve, tiny_whisper_dir: Path):  # type: ignore[no-untyped-def]
    # audio longer than the window (4 s) is cut at pauses; longer than 4.5 s is refused
    async with serve(
        transcribe_model=str(tiny_whisper_dir), transcribe_max_wait_ms=100, max_audio_seconds=4.5
    ) as client:
        yield client


def upload(data: bytes, language: str | None = None) -> dict[str, object]:
    return {"files": {"audio": ("speech.wav", data, "audio/wav")}, "data": {"language": language} if language else {}}


async def test_health_lists_transcribe(client: httpx.AsyncClient, tiny_whisper_dir: Path) -> None:
    health = (await client.get("/health")).json()
    assert "transcribe" in health["tasks"] and health["queues"]["transcribe"] == 0
    assert health["models"]["transcribe"] == str(tiny_whisper_dir)


async def test_transcripts_equal_the_model_in_shared_batches(
    client: httpx.AsyncClient, clips: list[tuple[np.ndarray, int]], expected: list[str], tiny_whisper_dir: Path
) -> None:
    files = [encode(samples, rate, subtype="FLOAT") for samples, rate in clips]
    responses = await asyncio.gather(
        *(client.post("/transcribe", **upload(f, lang)) for f, lang in zip(files, LANGUAGES, strict=True))  # type: ignore[arg-type]
    )
    assert [r.status_code for r in responses] == [200] * 3, [r.text for r in responses]
    bodies = [r.json() for r in responses]
    assert [b["text"] for b in bodies] == expected
    assert [b["language"] for b in bodies] == LANGUAGES
    assert bodies[0]["model"] == str(tiny_whisper_dir)
    assert [b["duration"] for b in bodies] == [round(len(s) / rate, 3) for s, rate in clips]
    assert max(b["timings"]["batch_size"] for b in bodies) > 1
    assert all(b["timings"]["decode_ms"] > 0 for b in bodies)
    metrics = (await client.get("/metrics")).text
    assert 'mmserve_requests_total{status="200",task="transcribe"}' in metrics
    assert 'mmserve_batch_size_count{task="transcribe"}' in metrics


async def test_json_base64_equals_multipart(
    client: httpx.AsyncClient, clips: list[tuple[np.ndarray, int]], expected: list[str]
) -> None:
    samples, rate = clips[2]
    audio = base64.b64encode(encode(samples, rate, subtype="FLOAT")).decode()
    response = await client.post("/transcribe", json={"audio": audio, "language": "fr"})
    assert response.status_code == 200, response.text
    assert response.json()["text"] == expected[2]


async def test_bad_audio_fails_alone_next_to_good_audio(
    client: httpx.AsyncClient, clips: list[tuple[np.ndarray, int]], expected: list[str]
) -> None:
    good = encode(clips[0][0], clips[0][1], subtype="FLOAT")
    flac = encode(clips[1][0], clips[1][1], "FLAC")
    bad = {
        "truncated": flac[: len(flac) // 2],
        "silent": encode(np.zeros(16_000, dtype=np.float32), 16_000),
        "not audio": b"GIF89a not audio at all",
        "too long": encode(tone(5.0), 16_000),
        "m4a": b"\x00\x00\x00\x20ftypM4A " + bytes(64),
    }
    requests = [good, *bad.values(), good]
    responses = await asyncio.gather(*(client.post("/transcribe", **upload(data)) for data in requests))  # type: ignore[arg-type]
    assert [r.status_code for r in responses] == [200, 400, 422, 400, 413, 415, 200]
    assert responses[0].json()["text"] == responses[-1].json()["text"] == expected[0]
    assert error_of(responses[1])["type"] == "invalid_audio"
    assert responses[2].json()["detail"][0]["type"] == "silent_audio"
    assert error_of(responses[4])["message"] == (
        "the audio is 5.0 s long; the limit is 4.5 s (MMSERVE_MAX_AUDIO_SECONDS)"
    )
    assert error_of(responses[5])["type"] == "unsupported_audio_format"


async def test_fields_are_validated(client: httpx.AsyncClient, clips: list[tuple[np.ndarray, int]]) -> None:
    wav = encode(*clips[0])
    unknown = await client.post("/transcribe", **upload(wav, "xx"))  # type: ignore[arg-type]
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "language"]
    no_file = await client.post("/transcribe", files={"image": ("a.wav", wav, "audio/wav")})
    assert no_file.status_code == 422 and no_file.json()["detail"][0]["loc"] == ["body", "audio"]
    assert (await client.post("/transcribe", content=wav, headers={"content-type": "audio/wav"})).status_code == 415
    assert (await client.post("/transcribe", json={"audio": "not base64!"})).status_code == 422


async def test_a_builtin_checkpoint_without_an_audio_tower_cannot_transcribe(serve) -> None:  # type: ignore[no-untyped-def]
    """The default app serves the `tiny` checkpoint (no audio tower; `tiny+audio` has one: tests/e2e)."""
    async with serve() as client:
        assert "transcribe" not in (await client.get("/health")).json()["tasks"]
        response = await client.post("/transcribe", **upload(encode(tone(1.0), 16_000)))
        assert response.status_code == 501
        assert "MMSERVE_TRANSCRIBE_MODEL" in error_of(response)["message"]


async def test_segments_asked_within_the_window_whole_and_streamed(client: httpx.AsyncClient) -> None:
    """`segments`: a clip within the window is cut at its pause too; streamed, a `segment` event per piece, in
    order, equal to the whole answer's segments, then `done` with that answer."""
    recording = long_recording(["a red circle", "a blue square"], pauses_s=[1.0], lead_s=0.3)
    wav = encode(recording.samples, RATE)
    whole = await client.post("/transcribe", files={"audio": ("r.wav", wav)}, data={"segments": "true"})
    assert whole.status_code == 200, whole.text
    segments = whole.json()["segments"]
    assert segments, "a random tiny Whisper says something for each sentence"
    for segment in segments:  # each piece is one sentence's speech (one heard as nothing gives no segment)
        assert any(
            abs(segment["start"] - s.start_s) <= 0.3 and abs(segment["end"] - s.end_s) <= 0.3 for s in recording.speech
        ), (segment, recording.speech)
    plain = (await client.post("/transcribe", files={"audio": ("r.wav", wav)})).json()
    assert "segments" not in plain  # heard whole
    streamed = await client.post(
        "/transcribe", files={"audio": ("r.wav", wav)}, data={"segments": "true", "stream": "true"}
    )
    blocks = [dict(line.split(": ", 1) for line in b.splitlines()) for b in streamed.text.strip().split("\n\n")]
    assert [b["event"] for b in blocks] == ["segment"] * len(segments) + ["done"]
    assert [json.loads(b["data"]) for b in blocks[:-1]] == segments
    assert json.loads(blocks[-1]["data"])["text"] == whole.json()["text"]


async def test_audio_uploads_have_their_own_byte_limit(serve, tiny_whisper_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """`max_audio_upload_bytes` bounds a file on the transcription routes, multipart or base64 JSON; images (and
    everything else) keep `max_upload_bytes`."""
    wav = encode(*speech("a red circle"))  # ~60 KB of float WAV at the espeak rate
    small, large = len(wav) // 2, len(wav) * 2
    settings = {"transcribe_model": str(tiny_whisper_dir), "max_upload_bytes": small, "max_audio_upload_bytes": large}
    async with serve(**settings) as client:
        assert (await client.post("/transcribe", **upload(wav))).status_code == 200
        audio = base64.b64encode(wav).decode()
        assert (await client.post("/transcribe", json={"audio": audio})).status_code == 200
        image = await client.post("/caption", files={"image": ("a.png", bytes(small + 1), "image/png")})
        assert image.status_code == 413
        too_large = await client.post("/transcribe", **upload(wav + bytes(large)))
        assert too_large.status_code == 413
