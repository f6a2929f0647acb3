"""The official `openai` package's audio.transcriptions against a real server serving a tiny Whisper."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import openai
import pytest

from tests.support.audio import encode, speech
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tiny_whisper_dir: Path) -> Iterator[ServerProcess]:
    settings = {"MMSERVE_MODEL": str(tiny_whisper_dir), "MMSERVE_DEVICE": "cpu", "MMSERVE_TORCH_THREADS": "1"}
    settings["MMSERVE_GENERATE_MODEL"] = "none"  # Whisper alone: /v1/models lists it only
    with ServerProcess(settings) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def wav() -> bytes:
    return encode(*speech("a small yellow square left of a red circle"))


def test_json_text_and_verbose_json_agree_with_the_native_route(
    server: ServerProcess, client: openai.OpenAI, tiny_whisper_dir: Path, wav: bytes
) -> None:
    native = httpx.post(
        f"{server.url}/transcribe", files={"audio": ("s.wav", wav)}, data={"language": "en"}, timeout=120
    ).json()
    model = str(tiny_whisper_dir)
    assert [m.id for m in client.models.list().data] == [model]
    as_json = client.audio.transcriptions.create(model=model, file=("s.wav", wav), language="en")
    assert as_json.text == native["text"]
    as_text = client.audio.transcriptions.create(
        model=model, file=("s.wav", wav), language="en", response_format="text"
    )
    assert as_text == native["text"]
    verbose = client.audio.transcriptions.create(
        model=model, file=("s.wav", wav), language="en", response_format="verbose_json"
    )
    # segment times: the clip is cut at pauses, as the native route's with `segments`
    timed = httpx.post(
        f"{server.url}/transcribe", files={"audio": ("s.wav", wav)}, data={"language": "en", "segments": "true"},
        timeout=120,
    ).json()  # fmt: skip
    assert (verbose.text, verbose.language, verbose.duration) == (timed["text"], "en", native["duration"])
    assert [(s.id, s.start, s.end, s.text) for s in verbose.segments or []] == [
        (s["id"], s["start"], s["end"], s["text"]) for s in timed["segments"]
    ]


def test_errors_in_openai_shape(client: openai.OpenAI, tiny_whisper_dir: Path, wav: bytes) -> None:
    model = str(tiny_whisper_dir)
    with pytest.raises(openai.NotFoundError) as missing:
        client.audio.transcriptions.create(model="whisper-1", file=("s.wav", wav))
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as temperature:
        client.audio.transcriptions.create(model=model, file=("s.wav", wav), temperature=0.5)
    assert temperature.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as not_audio:
        client.audio.transcriptions.create(model=model, file=("s.wav", b"plain text, not audio"))
    assert not_audio.value.body["code"] == "invalid_audio"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as language:
        client.audio.transcriptions.create(model=model, file=("s.wav", wav), language="xx")
    assert language.value.body["param"] == "language"  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as image_task:  # the Whisper server does no image task
        client.embeddings.create(model=model, input="a red circle")
    assert image_task.value.status_code == 501


@pytest.mark.parametrize("granularities", [["word"], ["word", "segment"]])
def test_timestamps_asked_once_or_repeated_are_the_documented_400(
    server: ServerProcess,
    client: openai.OpenAI,
    tiny_whisper_dir: Path,
    wav: bytes,
    granularities: list[Literal["word", "segment"]],
) -> None:
    """The `openai` package sends `timestamp_granularities[]` once per value; once or repeated, it is refused by
    name (a 400), not a 422 about the field's type."""
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(
            model=str(tiny_whisper_dir), file=("s.wav", wav), response_format="verbose_json",
            timestamp_granularities=granularities,
        )  # fmt: skip
    assert refused.value.body["param"] == "timestamp_granularities[]"  # type: ignore[index]
    fields = {"model": str(tiny_whisper_dir), "timestamp_granularities[]": granularities}  # a list: repeated
    raw = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("s.wav", wav)}, data=fields, timeout=120)
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "timestamp_granularities[]", raw.text


def test_a_streamed_transcript_equals_the_whole_one(
    server: ServerProcess, client: openai.OpenAI, tiny_whisper_dir: Path, wav: bytes
) -> None:
    """`stream=true`: OpenAI's `transcript.text.delta` events, then `transcript.text.done`; natively, `token`
    events then `done`, as /caption streams."""
    model = str(tiny_whisper_dir)
    whole = client.audio.transcriptions.create(model=model, file=("s.wav", wav), language="en").text
    events = list(client.audio.transcriptions.create(model=model, file=("s.wav", wav), language="en", stream=True))
    assert [event.type for event in events][-1] == "transcript.text.done"
    assert {event.type for event in events[:-1]} <= {"transcript.text.delta"}
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == whole  # type: ignore[union-attr]
    native = httpx.post(
        f"{server.url}/transcribe", files={"audio": ("s.wav", wav)}, data={"language": "en", "stream": "true"},
        timeout=120,
    )  # fmt: skip
    assert native.headers["content-type"].startswith("text/event-stream")
    blocks = [dict(line.split(": ", 1) for line in b.splitlines()) for b in native.text.strip().split("\n\n")]
    assert blocks[-1]["event"] == "done" and {b["event"] for b in blocks[:-1]} <= {"token"}
    done = json.loads(blocks[-1]["data"])
    assert done["text"] == whole and done["language"] == "en" and done["duration"] > 0
    assert "".join(json.loads(b["data"])["text"] for b in blocks[:-1]) == whole
