"""Spoken questions the shipped model did not understand, over a real server: noise and near-silence on /vqa
get a 422 that says so and what was heard; a scene question in a voice training never used is answered; and
transcripts carry Whisper's confidence fields (`avg_logprob`, `no_speech_prob`, `compression_ratio`).

Fluent speech that is not a scene question (which confidence alone could not refuse) is refused too: the
hearing stage taught the model to write nothing for it (model/MODEL_CARD.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.support.audio import encode, needs_espeak, speech
from tests.support.server import ServerProcess, encode_image, error_of, noise_image, shipped_settings

pytestmark = [pytest.mark.slow, needs_espeak]

RATE = 16_000
IMAGE = encode_image(noise_image(3))
HELD_OUT_VOICE = "en-029+m7"  # an accent and a variant the speech stage never used (model/train/speech.py)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(shipped_settings(MMSERVE_GENERATE_MODEL="none")) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def ask(client: httpx.Client, audio: bytes) -> httpx.Response:
    files = {"image": ("i.png", IMAGE, "image/png"), "question_audio": ("q.wav", audio, "audio/wav")}
    return client.post("/vqa", files=files)


def hiss(seconds: float, peak_dbfs: float, seed: int) -> bytes:
    noise = np.random.default_rng(seed).uniform(-1, 1, int(seconds * RATE))
    return encode((noise * 10 ** (peak_dbfs / 20)).astype(np.float32), RATE)


@pytest.mark.parametrize(
    "audio",
    [hiss(2.0, -6, 0), hiss(1.5, -45, 1)],  # white noise; near-silence (above the -60 dBFS "silent" refusal)
    ids=["noise", "near-silence"],
)
def test_no_speech_is_refused_with_what_was_heard(client: httpx.Client, audio: bytes) -> None:
    response = ask(client, audio)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["type"] == "not_understood"
    assert error["message"].startswith("could not understand the spoken question (no speech: no_speech_prob ")
    assert 'above 0.01): heard "' in error["message"]


HELD_OUT_QUESTIONS = [
    ("what colour is the circle?", "what colour is the "),
    ("how many shapes are there?", "how many shapes are there?"),
    ("what shape is the red one?", "what shape is the "),
    ("is there a blue square?", "is there a "),
    ("what colour is the large triangle?", "what colour is the "),
    ("how many circles are there?", "how many "),
]


def test_scene_questions_in_held_out_voices_are_answered(client: httpx.Client) -> None:
    """Answered as the kind of question they are, not refused, in two voices training never used, all but at
    most one of twelve: the model card measures 0.010 of such questions heard as nothing (a 422 that says so),
    every one in the Caribbean accent, where "what colour is the circle?" is the question most often heard as
    nothing (the shipped weights leave it blank in en-029+m7: the end token 0.8 likely or more; greedy
    decoding without that threshold also left "what colour is the large triangle?" blank there). The words of
    an unheard voice are not pinned (WER 0.03 there)."""
    answered, refused = 0, []
    for voice in (HELD_OUT_VOICE, "en-us-nyc+f4"):
        for question, heard_as in HELD_OUT_QUESTIONS:
            response = ask(client, encode(*speech(question, voice=voice)))
            if response.status_code == 422:
                assert error_of(response)["type"] == "not_understood", response.text
                refused.append((voice, question))
                continue
            assert response.status_code == 200, response.text
            assert response.json()["heard"].startswith(heard_as), (voice, question, response.text)
            answered += 1
    assert answered >= 11, f"refused: {refused}"


@pytest.mark.parametrize(
    "sentence", ["please book a table for two at seven", "the red car is parked outside the station"]
)
def test_a_sentence_that_is_not_about_a_scene_is_refused(client: httpx.Client, sentence: str) -> None:
    """Fluent speech of another kind (a scene word in it or not): the hearing stage taught the model to write
    nothing for it, and nothing understood is a 422 that says so."""
    response = ask(client, encode(*speech(sentence)))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["type"] == "not_understood"
    assert "nothing in it was understood as a scene sentence" in error["message"]


def test_transcripts_carry_their_confidence(client: httpx.Client) -> None:
    """verbose_json segments and the native JSON: a clear sentence is confident, speech, and not repetitive."""
    samples, rate = speech("a small red circle and a large blue square")
    pause = np.zeros(rate, dtype=np.float32)
    wav = encode(np.concatenate([samples, pause, samples]), rate)
    verbose = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("s.wav", wav, "audio/wav")},
        data={"model": "mmserve-builtin", "response_format": "verbose_json"},
    )
    assert verbose.status_code == 200, verbose.text
    segments = verbose.json()["segments"]
    assert len(segments) == 2
    native = client.post("/transcribe", files={"audio": ("s.wav", wav)}, data={"segments": "true"}).json()
    for segment in [*segments, *native["segments"], native]:
        assert -0.5 < segment["avg_logprob"] <= 0.0, segment
        assert 0.0 <= segment["no_speech_prob"] < 0.01, segment
        assert 0.0 < segment["compression_ratio"] < 2.4, segment  # (Whisper falls back above 2.4: a loop)
