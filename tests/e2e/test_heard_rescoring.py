"""A spoken question is rescored among its neighbours before it is answered, over a real server on the shipped
model, with either scheduler (continuous batching rescores where the transcript finishes; whole batches after
the batch): "what shape is the yellow one?" (a phrase no training sentence has) in a voice training never used
is heard by greedy decoding as "... the blue one?", which `/transcribe` of the same clip still reports, while
`/vqa` answers "... the yellow one?" (`model.heard_rescoring`: the CTC head shipped beside the weights)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.audio import encode, needs_espeak, speech
from tests.support.server import ServerProcess, encode_image, noise_image, shipped_settings

pytestmark = [pytest.mark.slow, needs_espeak]

QUESTION = "what shape is the yellow one?"
VOICE = "en-029+m7"  # a held-out accent and variant (model/train/speech.py)


@pytest.fixture(scope="module", params=["continuous", "static"])
def client(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    settings = shipped_settings(MMSERVE_GENERATE_MODEL="none", MMSERVE_SCHEDULER=request.param)
    with ServerProcess(settings) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def test_a_spoken_question_is_answered_as_rescored_and_a_transcript_stays_as_heard(client: httpx.Client) -> None:
    wav = encode(*speech(QUESTION, voice=VOICE))
    transcript = client.post("/transcribe", files={"audio": ("q.wav", wav, "audio/wav")})
    assert transcript.status_code == 200, transcript.text
    assert transcript.json()["text"] == "what shape is the blue one?"  # greedy: a trained neighbour
    files = {
        "image": ("i.png", encode_image(noise_image(4)), "image/png"),
        "question_audio": ("q.wav", wav, "audio/wav"),
    }
    answered = client.post("/vqa", files=files)
    assert answered.status_code == 200, answered.text
    assert answered.json()["heard"] == QUESTION
