"""The built-in model that hears, over a real server: /transcribe, OpenAI's /v1/audio/transcriptions and spoken
questions on /vqa, each equal to the model called in this process on the samples the service decodes.

The server's only model is a tiny random `tiny+audio` checkpoint (no MMSERVE_TRANSCRIBE_MODEL): the one
decoder captions, answers and transcribes. The expected transcripts come from `decode_audio`, as the
service decodes uploads, then `transcribe`; a spoken question's answer from `answer` on that transcript.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import orjson
import pytest
import torch

from model import MultimodalModel, load_model
from service.audio import decode_audio
from service.settings import Settings
from tests.support.audio import encode, speech, tone
from tests.support.server import ServerProcess, encode_image, error_of, noise_image, validation_messages

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SENTENCES = ["a red circle", "two blue squares below a green triangle", "what colour is the circle?"]
QUESTIONS = ["what colour is the square?", "how many shapes are there?", "is there a red circle?"]
IMAGE = encode_image(noise_image(7))


@pytest.fixture(scope="module")
def hearing(tiny_audio_checkpoint_dir: Path) -> MultimodalModel:
    torch.set_num_threads(1)
    return load_model(str(tiny_audio_checkpoint_dir), "cpu")


@pytest.fixture(scope="module")
def server(tiny_audio_checkpoint_dir: Path) -> Iterator[ServerProcess]:
    settings = {
        "MMSERVE_MODEL": str(tiny_audio_checkpoint_dir),
        "MMSERVE_DEVICE": "cpu",
        "MMSERVE_TORCH_THREADS": "1",
        "MMSERVE_TRANSCRIBE_MAX_WAIT_MS": "50",  # requests sent together share batches
        # a random model is unsure of everything: these tests are about the path a spoken question takes
        # (refusals are tests/e2e/test_spoken_refusals.py's, with the shipped model)
        "MMSERVE_SPOKEN_MIN_AVG_LOGPROB": "-1000",
        "MMSERVE_SPOKEN_MAX_NO_SPEECH_PROB": "1",
        "MMSERVE_SPOKEN_REFUSE_LOOPS": "false",
    }
    with ServerProcess(settings) as server:
        yield server


def wavs(texts: list[str]) -> list[bytes]:
    return [encode(*speech(text)) for text in texts]


def heard(model: MultimodalModel, wav: bytes) -> str:
    """What the model hears in an upload, decoded as the service decodes it."""
    assert model.audio is not None
    samples = decode_audio(wav, model.audio, Settings().max_audio_seconds).samples
    return model.transcribe([samples])[0]


def spoken(wav: bytes, **fields: str) -> dict[str, object]:
    return {
        "files": {"image": ("i.png", IMAGE, "image/png"), "question_audio": ("q.wav", wav, "audio/wav")},
        "data": fields,
    }


@pytest.fixture(scope="module")
async def client(server: ServerProcess):  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        yield client


async def test_health_lists_transcribe_served_by_the_builtin_model(
    client: httpx.AsyncClient, hearing: MultimodalModel
) -> None:
    health = (await client.get("/health")).json()
    assert "transcribe" in health["tasks"] and "vqa" in health["tasks"]
    assert health["models"]["transcribe"] == health["models"]["vqa"] == hearing.name


async def test_transcripts_equal_the_model(client: httpx.AsyncClient, hearing: MultimodalModel) -> None:
    files = wavs(SENTENCES)
    expected = [heard(hearing, wav) for wav in files]
    assert len(set(expected)) > 1  # the transcript depends on the audio
    responses = await asyncio.gather(
        *(client.post("/transcribe", files={"audio": ("s.wav", wav)}, data={"language": "en"}) for wav in files)
    )
    assert [r.status_code for r in responses] == [200] * len(files), [r.text for r in responses]
    bodies = [r.json() for r in responses]
    assert [b["text"] for b in bodies] == expected
    assert {(b["model"], b["language"]) for b in bodies} == {(hearing.name, "en")}
    as_json = await client.post("/transcribe", json={"audio": base64.b64encode(files[0]).decode()})
    assert as_json.status_code == 200 and as_json.json()["text"] == expected[0]
    french = await client.post("/transcribe", files={"audio": ("s.wav", files[0])}, data={"language": "fr"})
    assert french.status_code == 422 and "'fr'" in validation_messages(french)


def test_openai_transcriptions_equal_the_model(server: ServerProcess, hearing: MultimodalModel) -> None:
    [wav] = wavs(SENTENCES[1:2])
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    transcript = client.audio.transcriptions.create(model=hearing.name, file=("s.wav", wav), language="en")
    assert transcript.text == heard(hearing, wav)


async def test_spoken_questions_are_answered_as_the_model_answers_them(
    client: httpx.AsyncClient, hearing: MultimodalModel
) -> None:
    files = wavs(QUESTIONS)
    transcripts = [heard(hearing, wav) for wav in files]
    image = noise_image(7)
    expected = [hearing.answer([image], [t])[0] for t in transcripts]
    responses = await asyncio.gather(*(client.post("/vqa", **spoken(wav)) for wav in files))  # type: ignore[arg-type]
    assert [r.status_code for r in responses] == [200] * len(files), [r.text for r in responses]
    assert [(r.json()["heard"], r.json()["answer"]) for r in responses] == list(zip(transcripts, expected, strict=True))
    as_json = await client.post(
        "/vqa", json={"image": base64.b64encode(IMAGE).decode(), "question_audio": base64.b64encode(files[0]).decode()}
    )
    assert as_json.status_code == 200, as_json.text
    assert (as_json.json()["heard"], as_json.json()["answer"]) == (transcripts[0], expected[0])
    typed = await client.post("/vqa", files={"image": ("i.png", IMAGE)}, data={"question": transcripts[0]})
    assert typed.status_code == 200 and typed.json() | {"timings": None} == {
        "answer": expected[0], "model": hearing.name, "heard": None, "timings": None
    }  # fmt: skip


async def test_a_streamed_spoken_question_says_what_was_heard(
    client: httpx.AsyncClient, hearing: MultimodalModel
) -> None:
    [wav] = wavs(QUESTIONS[2:3])
    transcript = heard(hearing, wav)
    answer = hearing.answer([noise_image(7)], [transcript])[0]
    async with client.stream("POST", "/vqa", **spoken(wav, stream="true")) as response:  # type: ignore[arg-type]
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [event async for event in _events(response)]
    assert events[-1][0] == "done"
    done = events[-1][1]
    assert (done["heard"], done["answer"]) == (transcript, answer)
    assert "".join(data["text"] for kind, data in events if kind == "token") == answer


async def _events(response: httpx.Response):  # type: ignore[no-untyped-def]
    kind = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield kind, orjson.loads(line.removeprefix("data: "))


async def test_bad_spoken_questions_fail_alone_next_to_a_good_one(
    client: httpx.AsyncClient, hearing: MultimodalModel
) -> None:
    [wav] = wavs(QUESTIONS[:1])
    transcript = heard(hearing, wav)
    answer = hearing.answer([noise_image(7)], [transcript])[0]
    flac = encode(*speech(QUESTIONS[2]), "FLAC")
    bad: dict[str, tuple[dict[str, object], int, str]] = {
        "not audio": (spoken(b"GIF89a not audio at all"), 400, "not audio"),
        "truncated": (spoken(flac[: len(flac) // 2]), 400, "truncated"),
        "too long": (spoken(encode(tone(11.0), 16_000)), 413, "the model's window is 10 s"),
        "m4a": (spoken(b"\x00\x00\x00\x20ftypM4A " + bytes(64)), 415, "MP4/M4A"),
        "silent": (spoken(encode(np.zeros(16_000, dtype=np.float32), 16_000)), 422, "silent"),
        "both": (spoken(wav, question="what colour?"), 422, "not both"),
        "neither": ({"files": {"image": ("i.png", IMAGE)}}, 422, "neither was sent"),
        "text field": ({"files": {"image": ("i.png", IMAGE)}, "data": {"question_audio": "hi"}}, 422, "file upload"),
        "bad image": (
            {"files": {"image": ("i.png", b"not an image"), "question_audio": ("q.wav", wav)}},
            400,
            "not an image",
        ),
    }
    requests = [spoken(wav), *(kwargs for kwargs, _, _ in bad.values()), spoken(wav)]
    responses = await asyncio.gather(*(client.post("/vqa", **kwargs) for kwargs in requests))  # type: ignore[arg-type]
    assert [r.status_code for r in responses] == [200, *(status for _, status, _ in bad.values()), 200], [
        r.text for r in responses
    ]
    for good in (responses[0], responses[-1]):
        assert (good.json()["heard"], good.json()["answer"]) == (transcript, answer)
    for (name, (_, status, text)), response in zip(bad.items(), responses[1:-1], strict=True):
        message = validation_messages(response) if status == 422 else error_of(response)["message"]
        assert text in message, (name, message)
    silent = responses[1 + list(bad).index("silent")].json()["detail"][0]
    assert silent["loc"] == ["body", "question_audio"] and silent["type"] == "silent_audio"
