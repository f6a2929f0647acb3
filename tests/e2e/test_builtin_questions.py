"""Which questions the shipped built-in model knows, over a real server: ordinary phrasings of its questions are
answered as the trained ones (issue 23's four: no question mark, American spelling, "how many shapes?"), any
other question is a 422 that lists the forms it knows (on /vqa, streamed or not, and on the chat route), and
its hidden scratchpad is never shown, even when it never ended. A spoken question goes through the same grammar:
what is heard and is no question it knows is a 422 that quotes it."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from model.questions import KNOWN_FORMS
from model.scenes import HELD_OUT_SEED_START, NUMBERS, Scene, make_scene, render
from tests.support.audio import encode, needs_espeak, speech
from tests.support.server import ServerProcess, encode_image, shipped_settings

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(shipped_settings(MMSERVE_GENERATE_MODEL="none")) as server:
        yield server


def scenes_with_a_circle_and_a_square(count: int) -> list[Scene]:
    """Held-out scenes where exactly one circle and one square stand (so "the circle" names one object)."""
    found = []
    for seed in range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + 1000):
        shapes = [o.shape for o in make_scene(seed).objects]
        if shapes.count("circle") == shapes.count("square") == 1:
            found.append(make_scene(seed))
        if len(found) == count:
            return found
    raise AssertionError("too few scenes")


def ask(server: ServerProcess, image: bytes, question: str, **fields: Any) -> httpx.Response:
    body = {"image": base64.b64encode(image).decode(), "question": question, **fields}
    return httpx.post(f"{server.url}/vqa", json=body, timeout=120)


def answer(server: ServerProcess, image: bytes, question: str) -> str:
    response = ask(server, image, question)
    assert response.status_code == 200, response.text
    text: str = response.json()["answer"]
    return text


def refusal(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    error: dict[str, str] = response.json()["error"]
    assert error["type"] == "question_not_understood", error
    return error


def test_ordinary_phrasings_are_answered_as_the_trained_questions(server: ServerProcess) -> None:
    for scene in scenes_with_a_circle_and_a_square(3):
        image = encode_image(render(scene))
        [circle] = [o.colour for o in scene.objects if o.shape == "circle"]
        [square] = [o.colour for o in scene.objects if o.shape == "square"]
        count = NUMBERS[len(scene.objects)]
        assert answer(server, image, "what colour is the circle?") == circle  # as trained
        assert answer(server, image, "what colour is the circle") == circle  # was "one one": the scratchpad
        assert answer(server, image, "what color is the square?") == square  # was a wrong colour
        assert answer(server, image, "What's the colour of the square") == square
        assert answer(server, image, "how many shapes are there?") == count
        assert answer(server, image, "how many shapes?") == count  # was "large"
        assert answer(server, image, "How many objects are there in the picture?") == count


@pytest.mark.parametrize("question", ["where is the square?", "what colour is the large circle?", "what?"])
def test_a_question_it_does_not_know_is_a_422_listing_what_it_knows(server: ServerProcess, question: str) -> None:
    image = encode_image(render(make_scene(HELD_OUT_SEED_START)))
    error = refusal(ask(server, image, question))  # "where is the square?" was answered ""
    assert error["param"] == "question"
    assert error["message"].startswith(f"{question!r} is not a question the built-in model (mmserve-builtin) knows")
    assert all(form in error["message"] for form in KNOWN_FORMS)
    streamed = ask(server, image, question, stream=True)  # refused before anything is queued: no stream
    assert refusal(streamed)["message"] == error["message"]
    multipart = httpx.post(
        f"{server.url}/vqa", files={"image": ("s.png", image)}, data={"question": question}, timeout=120
    )
    assert refusal(multipart)["message"] == error["message"]


def chat_completion(server: ServerProcess, image: bytes, text: str, **options: Any) -> Any:
    """The chat route's completion (or, with `stream=True`, its chunks) for `text` about `image`, through the
    `openai` package."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    content: list[Any] = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    messages: Any = [{"role": "user", "content": content}]
    return client.chat.completions.create(model="mmserve-builtin", messages=messages, **options)


def chat(server: ServerProcess, image: bytes, text: str, **options: Any) -> str | None:
    """The chat route's answer to `text` about `image`."""
    content: str | None = chat_completion(server, image, text, **options).choices[0].message.content
    return content


def chat_refusal(server: ServerProcess, image: bytes, text: str, **options: Any) -> dict[str, Any]:
    """The chat route's 422 for `text` (OpenAI's error shape; `code` is ours)."""
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        chat(server, image, text, **options)
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "question_not_understood", error
    return error


def test_the_chat_route_refuses_it_too(server: ServerProcess) -> None:
    image = encode_image(render(scenes_with_a_circle_and_a_square(1)[0]))
    assert chat(server, image, "what color is the square") == answer(server, image, "what colour is the square?")
    assert "how many shapes are there?" in chat_refusal(server, image, "where is the square?")["message"]


def test_an_unfinished_scratchpad_is_never_shown(server: ServerProcess) -> None:
    """With one token allowed (the chat route's `max_tokens`), a colour question's answer, after its scratchpad
    (the object's column), is never reached: a 422, not the column ("three"). A count, answered directly, fits."""
    scene = scenes_with_a_circle_and_a_square(1)[0]
    image = encode_image(render(scene))
    assert chat(server, image, "how many shapes are there?", max_tokens=1) == NUMBERS[len(scene.objects)]
    error = chat_refusal(server, image, "what colour is the circle?", max_tokens=1)
    assert "wrote no answer to 'what colour is the circle?' within the tokens allowed" in error["message"]


@needs_espeak
def test_a_spoken_sentence_that_is_no_question_is_a_422_quoting_what_was_heard(server: ServerProcess) -> None:
    """A caption spoken (espeak-ng, a training accent) is heard as a caption, not a question: refused, and the
    message quotes the transcript, which /transcribe gives for the same audio."""
    image = encode_image(render(scenes_with_a_circle_and_a_square(1)[0]))
    wav = encode(*speech("a large red circle and a small blue square", "en-gb"))
    heard = httpx.post(f"{server.url}/transcribe", files={"audio": ("q.wav", wav)}, timeout=120).json()["text"]
    files = {"image": ("s.png", image), "question_audio": ("q.wav", wav)}
    error = refusal(httpx.post(f"{server.url}/vqa", files=files, timeout=120))
    assert error["param"] == "question_audio"
    assert error["message"].startswith(f"the question heard in question_audio, {heard!r}, is not a question")
    spoken = encode(*speech("what color is the square", "en-gb"))  # the American spelling, heard as trained
    files = {"image": ("s.png", image), "question_audio": ("q.wav", spoken)}
    answered = httpx.post(f"{server.url}/vqa", files=files, timeout=120)
    assert answered.status_code == 200, answered.text
    assert answered.json()["answer"] == answer(server, image, "what colour is the square?")


# Questions about objects a scene lacks, which made the weights shipped before the hearing stage's flite leg write
# their scratchpad twice ("zero left [SEP] zero right [SEP] yes"; today's write it once): a stream showed the text
# after the first [SEP] ("zero right"), the answer is what follows the last ("yes"). The streamed pieces must add
# up to the answer, on /vqa and on the chat route.
TWICE_SCRATCHPADS = [(1, "is the circle right of the square?"), (1, "is the square left of the triangle?")]


def streamed_vqa(server: ServerProcess, image: bytes, question: str) -> tuple[list[str], str]:
    """The `token` events' texts of a streamed /vqa, and its `done` event's answer."""
    body = {"image": base64.b64encode(image).decode(), "question": question, "stream": True}
    with httpx.stream("POST", f"{server.url}/vqa", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        events, kind = [], None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    assert [kind for kind, _ in events][-1] == "done", events
    return [data["text"] for kind, data in events if kind == "token"], events[-1][1]["answer"]


@pytest.mark.parametrize(("seed", "question"), TWICE_SCRATCHPADS)
def test_streamed_pieces_add_up_to_the_answer_when_the_scratchpad_comes_twice(
    server: ServerProcess, seed: int, question: str
) -> None:
    image = encode_image(render(make_scene(seed)))
    whole = answer(server, image, question)
    pieces, done = streamed_vqa(server, image, question)
    assert "".join(pieces) == done == whole
    assert whole in ("yes", "no")  # a yes/no question's answer, never its scratchpad's columns and relation
    chunks = chat_completion(server, image, question, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == whole
