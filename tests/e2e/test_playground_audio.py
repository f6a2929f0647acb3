"""The playground's speech in a real browser (Debian's chromium via Playwright), against a real server on the
built-in model: a recording from the microphone (Chromium's fake device, playing a sentence espeak-ng spoke)
and an audio file, transcribed and asked about the image, give what the API gives for the same audio.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from model.scenes import make_scene, render
from tests.support.audio import encode, needs_espeak, speech
from tests.support.browser import browser_page, fake_microphone, needs_chromium, sync_api
from tests.support.server import ServerProcess, shipped_settings

pytestmark = [pytest.mark.slow]

QUESTION = "what colour is the circle?"
SCENE = make_scene(10_000_003)  # the README's scene: a large orange circle and a small yellow square
LEAD_S, TAIL_S = 0.3, 4.0  # silence around the spoken question in the microphone's file


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(shipped_settings()) as server:
        yield server


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The question spoken, with silence around it (16-bit WAV), and how long its speech ends after its start."""
    samples, rate = speech(QUESTION)
    silence = np.zeros(int(rate * LEAD_S), np.float32), np.zeros(int(rate * TAIL_S), np.float32)
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    path.write_bytes(encode(np.concatenate([silence[0], samples, silence[1]]), rate))
    return path, LEAD_S + len(samples) / rate


def transcribed(server: ServerProcess, wav: Path, **fields: str) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/transcribe", files={"audio": wav.read_bytes()}, data=fields, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def record(page: sync_api.Page, button: str, clock: str, seconds: float) -> None:
    """Clicks `button`, waits until the page's clock says `seconds` have been recorded, and clicks it again."""
    page.click(button)
    sync_api.expect(page.locator(f"{button}[data-state=recording]")).to_have_text("Stop")
    page.wait_for_function(f"Number(document.querySelector('{clock}').dataset.seconds) >= {seconds}")
    page.click(button)


@needs_chromium
@needs_espeak
def test_recorded_and_chosen_speech_is_transcribed_and_asked(
    server: ServerProcess, spoken: tuple[Path, float], tmp_path: Path
) -> None:
    wav, speech_ends_s = spoken
    expected = transcribed(server, wav)["text"]
    assert expected == QUESTION  # the built-in model hears espeak's default voice
    image = tmp_path / "scene.png"
    render(SCENE).save(image)
    with browser_page(1180, 900, fake_microphone(wav)) as page:
        page.goto(f"{server.url}/")
        transcript = page.locator("#transcript[data-state=done]")

        record(page, "#transcribe-record", "#transcribe-clock", speech_ends_s + 1.0)
        sync_api.expect(transcript).to_have_text(expected)  # recorded as WebM/Opus, sent as a 16 kHz WAV
        sync_api.expect(page.locator("#transcribe-clock")).to_contain_text("recorded")
        sync_api.expect(page.locator("#transcribe-timings")).to_contain_text("s of audio")

        page.check("#transcribe-segments")
        page.set_input_files("#transcribe-file", str(wav))  # a file: sent as it is, here with segment times
        sync_api.expect(page.locator("#transcribe-clock")).to_have_text("speech.wav")
        segments = transcribed(server, wav, segments="true")["segments"]
        assert [s["text"] for s in segments] == [QUESTION]
        times = [f"{s['start']:.2f} s – {s['end']:.2f} s{s['text']}" for s in segments]
        sync_api.expect(page.locator("#segments li")).to_have_text(times)
        sync_api.expect(transcript).to_have_text(expected)

        page.click("#vqa-record")  # nothing to ask about yet: it says so, and does not record
        sync_api.expect(page.locator("#error")).to_have_text("pick an image first")
        assert page.locator("#vqa-record").get_attribute("data-state") is None
        page.set_input_files("#file", str(image))
        sync_api.expect(page.locator("#caption[data-state=done]")).to_have_text(SCENE.caption)
        record(page, "#vqa-record", "#vqa-clock", speech_ends_s + 1.0)  # the microphone's file plays anew
        sync_api.expect(page.locator("#answer")).to_have_text("orange")
        sync_api.expect(page.locator("#heard")).to_have_text(f"heard: “{QUESTION}”")
        assert page.locator("#question").input_value() == QUESTION

        page.locator("#answer").evaluate("a => { a.textContent = ''; }")
        page.set_input_files("#vqa-audio", str(wav))
        sync_api.expect(page.locator("#answer")).to_have_text("orange")

        routes = page.locator("#log tbody tr td:first-child").all_inner_texts()
        assert routes[:2] == ["/vqa (spoken)", "/vqa (spoken)"]
        assert routes.count("/transcribe (stream)") == 2
        assert page.locator("#error").is_hidden()
