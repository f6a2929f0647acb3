"""Spoken questions on /vqa, in process: what is heard must be a question, the transcribe task must be served,
and the request's deadline covers hearing as well as answering.

The app serves the tiny random `tiny+audio` checkpoint; where a test needs the model to hear something in
particular (nothing, or a very long question), its `transcribe` is replaced on the loaded instance.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from model.api import Update
from service.engine import Engine
from tests.service.conftest import LoadModel, Serve
from tests.support.audio import encode, speech, tone
from tests.support.server import encode_image, error_of, noise_image, validation_messages

pytestmark = pytest.mark.anyio

IMAGE = encode_image(noise_image(3))

# Tests that say what was heard (`hears`) test what follows hearing, not the voice-activity detector: it is
# off for them, so that they hold where espeak-ng is missing and `speech` falls back to a tone.
HEARD_AS_MOCKED = 1.0


@pytest.fixture(scope="module")
def wav() -> bytes:
    return encode(*speech("what colour is the circle?"))


def spoken(wav: bytes) -> dict[str, Any]:
    return {"files": {"image": ("i.png", IMAGE, "image/png"), "question_audio": ("q.wav", wav, "audio/wav")}}


def hears(
    monkeypatch: pytest.MonkeyPatch, load_once: LoadModel, checkpoint: Path, text: str, delay_s: float = 0
) -> None:
    """Make the (shared) loaded model hear `text` in any audio, confidently, after `delay_s` on the inference
    thread (its transcriptions then run as whole batches, through the replaced `transcribe_scored`, not step by
    step)."""
    model = load_once(str(checkpoint), torch.device("cpu"), None)

    def transcribe_scored(audios: Sequence[Any], language: Any = None, progress: Any = None) -> list[Update]:
        time.sleep(delay_s)
        return [Update("", True, "stop", text, len(text.split()), avg_logprob=-0.01)] * len(audios)

    monkeypatch.setattr(model, "transcribe_scored", transcribe_scored)
    stepwise = Engine.stepwise
    monkeypatch.setattr(Engine, "stepwise", lambda self, task: None if task == "transcribe" else stepwise(self, task))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("what colour " * 50, "the question heard in question_audio is 600 characters long; the limit is 500"),
    ],
)
async def test_what_is_heard_must_be_a_question(
    serve: Serve,
    load_once: LoadModel,
    tiny_audio_checkpoint_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    wav: bytes,
    text: str,
    message: str,
) -> None:
    hears(monkeypatch, load_once, tiny_audio_checkpoint_dir, text)
    async with serve(model=str(tiny_audio_checkpoint_dir), spoken_max_no_speech_prob=HEARD_AS_MOCKED) as client:
        response = await client.post("/vqa", **spoken(wav))
        assert message in validation_messages(response)
        assert response.json()["detail"][0]["loc"] == ["body", "question_audio"]
        typed = await client.post("/vqa", files={"image": ("i.png", IMAGE)}, data={"question": "what colour?"})
        assert typed.status_code == 200 and typed.json()["heard"] is None


@pytest.mark.parametrize("text", ["", "   "])
async def test_a_blank_transcript_is_not_understood(
    serve: Serve,
    load_once: LoadModel,
    tiny_audio_checkpoint_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    wav: bytes,
    text: str,
) -> None:
    """The built-in model writes nothing for audio that is not a scene sentence: a 422 that says so."""
    hears(monkeypatch, load_once, tiny_audio_checkpoint_dir, text)
    async with serve(model=str(tiny_audio_checkpoint_dir), spoken_max_no_speech_prob=HEARD_AS_MOCKED) as client:
        response = await client.post("/vqa", **spoken(wav))
        assert response.status_code == 422, response.text
        error = error_of(response)
        assert error["type"] == "not_understood"
        assert error["message"].startswith("could not understand the spoken question (nothing in it was understood")


async def test_the_heard_question_is_answered(
    serve: Serve, load_once: LoadModel, tiny_audio_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch, wav: bytes
) -> None:
    hears(monkeypatch, load_once, tiny_audio_checkpoint_dir, "how many shapes are there?")
    async with serve(model=str(tiny_audio_checkpoint_dir), spoken_max_no_speech_prob=HEARD_AS_MOCKED) as client:
        heard = await client.post("/vqa", **spoken(wav))
        typed = await client.post(
            "/vqa", files={"image": ("i.png", IMAGE)}, data={"question": "how many shapes are there?"}
        )
        assert heard.status_code == typed.status_code == 200, heard.text
        assert heard.json()["heard"] == "how many shapes are there?"
        assert heard.json()["answer"] == typed.json()["answer"]
        metrics = (await client.get("/metrics")).text
        assert 'mmserve_batch_size_count{task="transcribe"} 1.0' in metrics  # heard through the transcribe queue
        assert 'mmserve_requests_total{status="200",task="vqa"} 2.0' in metrics


async def test_a_heard_question_the_model_does_not_know_is_422_saying_what_was_heard(
    serve: Serve, load_once: LoadModel, tiny_audio_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch, wav: bytes
) -> None:
    """A trained built-in model knows only its grammar's questions (`closed_questions`): the transcript goes
    through it as a typed question does, refused with what was heard and the questions the model knows; heard
    in another spelling, it is answered as the trained question."""
    monkeypatch.setattr(load_once(str(tiny_audio_checkpoint_dir), torch.device("cpu"), None), "closed_questions", True)
    hears(monkeypatch, load_once, tiny_audio_checkpoint_dir, "where is the square")
    async with serve(model=str(tiny_audio_checkpoint_dir), spoken_max_no_speech_prob=HEARD_AS_MOCKED) as client:
        response = await client.post("/vqa", **spoken(wav))
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["type"] == "question_not_understood" and error["param"] == "question_audio"
        assert "the question heard in question_audio, 'where is the square'," in error["message"]
        assert "how many shapes are there?" in error["message"] and "is there a <colour> <shape>?" in error["message"]
        metrics = (await client.get("/metrics")).text
        assert 'mmserve_requests_total{status="422",task="vqa"} 1.0' in metrics
    hears(monkeypatch, load_once, tiny_audio_checkpoint_dir, "What color is the circle")
    async with serve(model=str(tiny_audio_checkpoint_dir), spoken_max_no_speech_prob=HEARD_AS_MOCKED) as client:
        heard = await client.post("/vqa", **spoken(wav))
        typed = await client.post(
            "/vqa", files={"image": ("i.png", IMAGE)}, data={"question": "what colour is the circle?"}
        )
        assert heard.status_code == typed.status_code == 200, heard.text
        assert heard.json()["heard"] == "What color is the circle"  # what was heard, as it was heard
        assert heard.json()["answer"] == typed.json()["answer"]


async def test_the_deadline_covers_hearing(
    serve: Serve, load_once: LoadModel, tiny_audio_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch, wav: bytes
) -> None:
    hears(monkeypatch, load_once, tiny_audio_checkpoint_dir, "what colour?", delay_s=1.5)
    async with serve(model=str(tiny_audio_checkpoint_dir), request_timeout_s=0.5) as client:
        response = await client.post("/vqa", **spoken(wav))
        assert response.status_code == 504, response.text
        assert error_of(response)["type"] == "timeout"


async def test_a_model_that_cannot_transcribe_is_501(serve: Serve, wav: bytes) -> None:
    """The default app serves the `tiny` checkpoint, which has no audio tower."""
    async with serve() as client:
        assert "transcribe" not in (await client.get("/health")).json()["tasks"]
        response = await client.post("/vqa", **spoken(wav))
        assert response.status_code == 501
        assert "MMSERVE_TRANSCRIBE_MODEL" in error_of(response)["message"]
        typed = await client.post("/vqa", files={"image": ("i.png", IMAGE)}, data={"question": "what colour?"})
        assert typed.status_code == 200


async def test_the_shortest_audio_the_builtin_model_hears(serve: Serve, tiny_audio_checkpoint_dir: Path) -> None:
    """Under 50 ms is refused (422) before the model sees it: its log-mel front end failed (a 500) on under
    13 ms; 50 ms is transcribed, on /transcribe and as a spoken question (where a tone, no speech, is then
    refused with what was heard)."""
    short, shortest = encode(tone(0.009), 16_000), encode(tone(0.05), 16_000)
    async with serve(model=str(tiny_audio_checkpoint_dir)) as client:
        refused = await client.post("/transcribe", files={"audio": ("a.wav", short)})
        assert "the audio is 9 ms long; at least 50 ms is transcribed" in validation_messages(refused)
        spoken_short = await client.post("/vqa", **spoken(short))
        assert spoken_short.json()["detail"][0]["loc"] == ["body", "question_audio"]
        assert spoken_short.json()["detail"][0]["type"] == "too_short"
        assert (await client.post("/transcribe", files={"audio": ("a.wav", shortest)})).status_code == 200
        heard = await client.post("/vqa", **spoken(shortest))
        assert heard.status_code == 422 and error_of(heard)["type"] == "not_understood", heard.text
        assert "(no speech: no_speech_prob 1.00 above 0.01): heard " in error_of(heard)["message"]


async def test_a_bad_image_is_a_400_before_anything_is_transcribed(
    serve: Serve, load_once: LoadModel, tiny_audio_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch, wav: bytes
) -> None:
    """The image is decoded while the audio is prepared, and its 400 comes before the question is transcribed."""
    hears(monkeypatch, load_once, tiny_audio_checkpoint_dir, "what colour is it?")
    model = load_once(str(tiny_audio_checkpoint_dir), torch.device("cpu"), None)
    heard: list[int] = []
    hearing = model.transcribe_scored

    def transcribe_scored(audios: Sequence[Any], language: Any = None, progress: Any = None) -> list[Update]:
        heard.append(len(audios))
        return hearing(audios, language, progress)

    monkeypatch.setattr(model, "transcribe_scored", transcribe_scored)
    async with serve(model=str(tiny_audio_checkpoint_dir), spoken_max_no_speech_prob=HEARD_AS_MOCKED) as client:
        heard.clear()  # the warm-up's
        files = {"image": ("i.png", b"not an image", "image/png"), "question_audio": ("q.wav", wav, "audio/wav")}
        response = await client.post("/vqa", files=files)
        assert response.status_code == 400 and error_of(response)["type"] == "invalid_image"
        assert heard == []
        assert (await client.post("/vqa", **spoken(wav))).status_code == 200
        assert heard == [1]
