"""/v1/chat/completions through the official `openai` package (sync and async) against a real server."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.server import ServerProcess, encode_image, noise_image

pytestmark = [pytest.mark.slow]

QUESTION = "what colour is the circle?"


@pytest.fixture(scope="module")
def server(base_settings: dict[str, str]) -> Iterator[ServerProcess]:
    with ServerProcess(base_settings) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_id(client: openai.OpenAI) -> str:
    [model] = client.models.list().data
    return model.id


@pytest.fixture(scope="module")
def image_url() -> str:
    return "data:image/png;base64," + base64.b64encode(encode_image(noise_image(11))).decode()


def user(image_url: str | None, text: str | None = None) -> list[Any]:
    content: list[dict[str, Any]] = []
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    if text is not None:
        content.append({"type": "text", "text": text})
    return [{"role": "system", "content": "You describe images."}, {"role": "user", "content": content}]


def native(server: ServerProcess, route: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/{route}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_an_image_alone_is_captioned_as_by_caption(
    server: ServerProcess, client: openai.OpenAI, model_id: str, image_url: str
) -> None:
    completion = client.chat.completions.create(model=model_id, messages=user(image_url), max_tokens=12)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == model_id
    [choice] = completion.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    expected = native(server, "caption", {"image": image_url, "max_new_tokens": 12})["caption"]
    assert choice.message.content == expected and expected
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 1  # [BOS]
    assert 1 <= completion.usage.completion_tokens <= 12
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


@pytest.mark.parametrize("question", [None, QUESTION])
def test_a_limit_of_one_token_ends_with_length(
    client: openai.OpenAI, model_id: str, image_url: str, question: str | None
) -> None:
    messages = user(image_url, question)
    completion = client.chat.completions.create(model=model_id, messages=messages, max_completion_tokens=1)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 1


def test_limits_above_the_servers_are_capped(client: openai.OpenAI, model_id: str, image_url: str) -> None:
    completion = client.chat.completions.create(model=model_id, messages=user(image_url, QUESTION), max_tokens=4096)
    assert completion.usage is not None and completion.usage.completion_tokens <= 16  # VQA_MAX_NEW_TOKENS


def test_an_image_and_text_is_answered_as_by_vqa(
    server: ServerProcess, client: openai.OpenAI, model_id: str, image_url: str
) -> None:
    completion = client.chat.completions.create(model=model_id, messages=user(image_url, QUESTION), seed=3, user="u")
    expected = native(server, "vqa", {"image": image_url, "question": QUESTION})["answer"]
    assert completion.choices[0].message.content == expected
    assert completion.usage is not None and completion.usage.prompt_tokens > 2  # [BOS] question [SEP]


def test_streamed_chunks_reassemble_the_whole_answer(client: openai.OpenAI, model_id: str, image_url: str) -> None:
    whole = client.chat.completions.create(model=model_id, messages=user(image_url), max_tokens=12)
    chunks = list(
        client.chat.completions.create(
            model=model_id, messages=user(image_url), max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert len([d for d in deltas if d]) > 1, "content arrives as several deltas"
    assert "".join(deltas) == whole.choices[0].message.content
    *_, last_choice, usage_chunk = chunks
    reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert reasons[-1] == whole.choices[0].finish_reason and not any(reasons[:-1])
    assert last_choice.choices[0].finish_reason is not None
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_without_include_usage_no_usage_chunk(client: openai.OpenAI, model_id: str, image_url: str) -> None:
    chunks = list(client.chat.completions.create(model=model_id, messages=user(image_url, QUESTION), stream=True))
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)


def test_stop_strings_cut_whole_and_streamed_answers_alike(
    client: openai.OpenAI, model_id: str, image_url: str
) -> None:
    full = client.chat.completions.create(model=model_id, messages=user(image_url), max_tokens=12)
    text = full.choices[0].message.content or ""
    words = text.split()
    assert len(words) >= 2, text
    stop = words[1]
    expected = text[: text.index(stop)]
    whole = client.chat.completions.create(model=model_id, messages=user(image_url), max_tokens=12, stop=[stop, "\n"])
    assert whole.choices[0].message.content == expected and whole.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(model=model_id, messages=user(image_url), max_tokens=12, stop=stop, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.anyio
async def test_async_client_whole_and_streamed(client: openai.OpenAI, server: ServerProcess, model_id: str,
                                               image_url: str) -> None:  # fmt: skip
    expected = client.chat.completions.create(model=model_id, messages=user(image_url, QUESTION))
    async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120) as aclient:
        whole = await aclient.chat.completions.create(model=model_id, messages=user(image_url, QUESTION))
        stream = await aclient.chat.completions.create(model=model_id, messages=user(image_url, QUESTION), stream=True)
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]
    assert whole.choices[0].message.content == expected.choices[0].message.content == "".join(pieces)


def error_of(error: openai.APIStatusError) -> dict[str, Any]:
    body = error.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"temperature": 0.7}, "temperature"),
        ({"top_p": 0.5}, "top_p"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_unsupported_parameters_are_400s_naming_them(
    client: openai.OpenAI, model_id: str, image_url: str, params: dict[str, Any], name: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id, messages=user(image_url), **params)
    error = error_of(caught.value)
    assert error["param"] == name and error["code"] == "unsupported_parameter" and name in error["message"]


def test_requests_the_model_cannot_answer(client: openai.OpenAI, model_id: str, image_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id, messages=user(None, "hello"))
    error = error_of(caught.value)
    assert error["param"] == "messages[1].content" and "needs an image" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id, messages=user("https://example.com/cat.png"))
    error = error_of(caught.value)
    assert error["code"] == "image_url_refused" and error["param"] == "messages[1].content[0].image_url.url"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id, messages=user("data:image/png;base64,aGVsbG8="))
    assert error_of(caught.value)["code"] == "invalid_image"
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=user(image_url))
    assert error_of(caught.value)["code"] == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=model_id, messages=user(image_url), max_tokens=0)
