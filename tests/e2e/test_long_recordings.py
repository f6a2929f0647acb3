"""Long recordings over a real server with the shipped built-in model: cut at pauses, transcribed in chunks,
answered with segment times, as OpenAI's formats (verbose_json, srt, vtt) and streamed a segment at a time.

The recording is the tests' (`tests.support.recordings`): about two minutes of held-out scene sentences
read by espeak-ng in a training voice, 1-2 s pauses of known length over quiet noise. The transcript must
match the sentences (WER at most 0.05) and each segment's times the sentence's sound within 0.3 s. The
`mmserve transcribe` and `mmserve vqa --question-audio` client commands run against the same server.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import srt
import webvtt

from model.evaluate import word_error_rate
from model.train.speech import eval_sentences
from tests.support.audio import encode
from tests.support.recordings import RATE, Recording, long_recording, sentence
from tests.support.server import REPO_ROOT, ServerProcess, encode_image, error_of, noise_image, shipped_settings

pytestmark = [pytest.mark.slow]

VOICE = "en-gb"  # a training accent: the test is about chunking and times, not about unseen voices
LIMIT_S = 150  # MMSERVE_MAX_AUDIO_SECONDS for this server
TIME_TOLERANCE_S = 0.3


@pytest.fixture(scope="module")
def recording() -> Recording:
    """About two minutes: held-out sentences, 1-2 s apart."""
    pool, texts = eval_sentences(300), list[str]()
    while sum(sentence(t, VOICE).size for t in texts) / RATE + 1.5 * len(texts) < 110:
        texts.append(pool[len(texts)])
    pauses = list(np.random.default_rng(5).uniform(1.0, 2.0, len(texts) - 1))
    return long_recording(texts, pauses_s=pauses, voice=VOICE)


@pytest.fixture(scope="module")
def wav(recording: Recording) -> bytes:
    return encode(recording.samples, RATE)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    settings = shipped_settings(MMSERVE_MAX_AUDIO_SECONDS=str(LIMIT_S), MMSERVE_REQUEST_TIMEOUT_S="300")
    with ServerProcess(settings) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def transcriptions(server: ServerProcess, wav: bytes, **fields: Any) -> httpx.Response:
    data = {"model": "mmserve-builtin", **fields}
    return httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("r.wav", wav)}, data=data, timeout=300)


def check_times(recording: Recording, times: list[tuple[float, float]]) -> None:
    """One segment per sentence, each within the tolerance of the sentence's sound."""
    truth = [(s.start_s, s.end_s) for s in recording.speech]
    assert len(times) == len(truth), (times, truth)
    errors = [max(abs(a - c), abs(b - d)) for (a, b), (c, d) in zip(times, truth, strict=True)]
    assert max(errors) <= TIME_TOLERANCE_S, errors


def seconds(vtt_time: str) -> float:
    hours, minutes, rest = vtt_time.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)


def test_verbose_json_with_the_openai_package(client: openai.OpenAI, recording: Recording, wav: bytes) -> None:
    assert recording.seconds > 100
    model = client.models.list().data[0].id
    verbose = client.audio.transcriptions.create(
        model=model, file=("r.wav", wav), response_format="verbose_json", timestamp_granularities=["segment"]
    )
    reference = " ".join(s.text for s in recording.speech)
    assert word_error_rate([reference], [verbose.text]) <= 0.05, verbose.text
    assert verbose.duration == pytest.approx(recording.seconds, abs=0.01)
    segments = verbose.segments or []
    assert [s.id for s in segments] == list(range(len(segments)))
    assert " ".join(s.text for s in segments) == verbose.text
    check_times(recording, [(s.start, s.end) for s in segments])


def test_native_route_answers_segments_for_audio_longer_than_the_window(server: ServerProcess, wav: bytes) -> None:
    body = httpx.post(f"{server.url}/transcribe", files={"audio": ("r.wav", wav)}, timeout=300).json()
    verbose = transcriptions(server, wav, response_format="verbose_json").json()
    assert body["text"] == verbose["text"]
    assert [(s["start"], s["end"], s["text"]) for s in body["segments"]] == [
        (s["start"], s["end"], s["text"]) for s in verbose["segments"]
    ]
    assert body["timings"]["batch_size"] > 1  # the chunks decode together


def test_srt_and_vtt_parse_back_to_the_segments(server: ServerProcess, recording: Recording, wav: bytes) -> None:
    verbose = transcriptions(server, wav, response_format="verbose_json").json()
    as_srt = transcriptions(server, wav, response_format="srt")
    as_vtt = transcriptions(server, wav, response_format="vtt")
    assert as_srt.headers["content-type"].startswith("text/plain")
    assert as_vtt.headers["content-type"].startswith("text/plain")
    texts = [s["text"] for s in verbose["segments"]]
    times = [t for s in verbose["segments"] for t in (s["start"], s["end"])]
    subtitles = list(srt.parse(as_srt.text))
    assert [s.content for s in subtitles] == texts
    assert [t.total_seconds() for s in subtitles for t in (s.start, s.end)] == pytest.approx(times, abs=1e-3)
    captions = webvtt.from_buffer(io.StringIO(as_vtt.text)).captions
    assert [c.text for c in captions] == texts
    assert [seconds(t) for c in captions for t in (c.start, c.end)] == pytest.approx(times, abs=1e-3)
    check_times(recording, [(s.start.total_seconds(), s.end.total_seconds()) for s in subtitles])


def test_word_timestamps_and_too_long_audio_are_refused_clearly(
    server: ServerProcess, recording: Recording, wav: bytes
) -> None:
    word = transcriptions(server, wav, response_format="verbose_json", **{"timestamp_granularities[]": ["word"]})
    assert word.status_code == 400
    assert word.json()["error"]["param"] == "timestamp_granularities[]"
    assert "word timestamps are not produced" in word.json()["error"]["message"]
    longer = encode(np.tile(recording.samples, 2), RATE)  # over the limit: refused from the header
    too_long = httpx.post(f"{server.url}/transcribe", files={"audio": ("r.wav", longer)}, timeout=300)
    assert too_long.status_code == 413
    assert error_of(too_long)["message"].endswith(f"the limit is {LIMIT_S} s (MMSERVE_MAX_AUDIO_SECONDS)")


def test_streamed_a_segment_at_a_time(
    server: ServerProcess, client: openai.OpenAI, recording: Recording, wav: bytes
) -> None:
    whole = transcriptions(server, wav, response_format="verbose_json").json()
    model = client.models.list().data[0].id
    events = list(client.audio.transcriptions.create(model=model, file=("r.wav", wav), stream=True))
    assert [e.type for e in events] == ["transcript.text.delta"] * len(whole["segments"]) + ["transcript.text.done"]
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == whole["text"]  # type: ignore[union-attr]
    native = httpx.post(
        f"{server.url}/transcribe", files={"audio": ("r.wav", wav)}, data={"stream": "true"}, timeout=300
    )
    blocks = [dict(line.split(": ", 1) for line in b.splitlines()) for b in native.text.strip().split("\n\n")]
    assert [b["event"] for b in blocks] == ["segment"] * len(whole["segments"]) + ["done"]
    segments = [json.loads(b["data"]) for b in blocks[:-1]]
    fields = ("id", "start", "end", "text", "avg_logprob", "no_speech_prob", "compression_ratio")
    assert segments == [{k: s[k] for k in fields} for s in whole["segments"]]
    assert json.loads(blocks[-1]["data"])["text"] == whole["text"]


def mmserve(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MMSERVE_")}
    command = [sys.executable, "-m", "service", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)


def test_the_cli_transcribes_in_each_format(server: ServerProcess, wav: bytes, tmp_path: Path) -> None:
    path = tmp_path / "recording.wav"
    path.write_bytes(wav)
    verbose = transcriptions(server, wav, response_format="verbose_json").json()
    text = mmserve("transcribe", str(path), "--url", server.url)
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip() == verbose["text"]
    as_json = mmserve("transcribe", str(path), "--format", "json", "--url", server.url)
    body = json.loads(as_json.stdout)
    assert [s["text"] for s in body["segments"]] == [s["text"] for s in verbose["segments"]]
    for form in ("srt", "vtt"):
        done = mmserve("transcribe", str(path), "--format", form, "--url", server.url)
        assert done.returncode == 0, done.stderr
        assert done.stdout == transcriptions(server, wav, response_format=form).text
    missing = mmserve("transcribe", str(tmp_path / "missing.wav"), "--url", server.url)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_the_cli_asks_a_spoken_question(server: ServerProcess, tmp_path: Path) -> None:
    question = "what colour is the circle?"
    image, audio = tmp_path / "scene.png", tmp_path / "question.wav"
    image.write_bytes(encode_image(noise_image(3)))
    audio.write_bytes(encode(sentence(question, VOICE), RATE))
    done = mmserve("vqa", str(image), "--question-audio", str(audio), "--url", server.url, "--json")
    assert done.returncode == 0, done.stderr
    spoken = json.loads(done.stdout)
    assert word_error_rate([question], [spoken["heard"]]) <= 0.2, spoken["heard"]
    typed = httpx.post(
        f"{server.url}/vqa", files={"image": ("s.png", image.read_bytes())}, data={"question": spoken["heard"]}
    ).json()
    assert spoken["answer"] == typed["answer"]
    readable = mmserve("vqa", str(image), "--question-audio", str(audio), "--url", server.url)
    assert readable.stdout.strip() == spoken["answer"] and f"heard: {spoken['heard']}" in readable.stderr
    both = mmserve("vqa", str(image), question, "--question-audio", str(audio), "--url", server.url)
    assert both.returncode == 2 and "one of them" in both.stderr
