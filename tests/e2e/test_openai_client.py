"""The official `openai` package, sync and async, against a real server: models, embeddings, errors."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import openai
import pytest
import torch

from model import MultimodalModel
from tests.support.server import ServerProcess, encode_image, noise_image

pytestmark = [pytest.mark.slow]

KEY = "sk-test-openai-0123456789"
TEXTS = ["a red circle", "a large orange circle and a small yellow square", "three blue triangles"]


@pytest.fixture(scope="module")
def server(base_settings: dict[str, str]) -> Iterator[ServerProcess]:
    with ServerProcess({**base_settings, "MMSERVE_API_KEYS": KEY}) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_id(client: openai.OpenAI) -> str:
    [model] = client.models.list().data
    return model.id


def native_embeddings(server: ServerProcess, body: dict[str, object]) -> torch.Tensor:
    response = httpx.post(f"{server.url}/embed", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert response.status_code == 200, response.text
    return torch.tensor([item["embedding"] for item in response.json()["data"]])


def test_models_list_in_openai_shape(server: ServerProcess, client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [model.object for model in models.data] == ["model"]
    model = models.data[0]
    assert model.owned_by == "mmserve"
    assert model.created > 1_700_000_000
    health = httpx.get(f"{server.url}/health").json()
    assert model.id == health["models"]["embed_text"]


def test_float_embeddings_equal_the_native_ones(
    server: ServerProcess, client: openai.OpenAI, model_id: str, reference: MultimodalModel
) -> None:
    response = client.embeddings.create(model=model_id, input=TEXTS, encoding_format="float")
    assert response.object == "list" and response.model == model_id
    assert [item.index for item in response.data] == [0, 1, 2]
    assert all(item.object == "embedding" for item in response.data)
    vectors = torch.tensor([item.embedding for item in response.data])
    torch.testing.assert_close(vectors, native_embeddings(server, {"input": TEXTS}), atol=1e-5, rtol=0)
    tokens = sum(reference.count_tokens(TEXTS))
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    assert reference.count_tokens(TEXTS[:1]) == [5]  # [CLS] a red circle [SEP]


def test_the_default_base64_is_little_endian_float32(client: openai.OpenAI, model_id: str) -> None:
    raw = client.embeddings.with_raw_response.create(model=model_id, input=TEXTS)
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str), "the package asks for base64 when no format is given"
    decoded = raw.parse()  # what a caller of client.embeddings.create(...) gets
    as_floats = client.embeddings.create(model=model_id, input=TEXTS, encoding_format="float")
    for got, expected in zip(decoded.data, as_floats.data, strict=True):
        assert len(got.embedding) == len(expected.embedding)
        torch.testing.assert_close(torch.tensor(got.embedding), torch.tensor(expected.embedding), atol=1e-5, rtol=0)
    assert len(base64.b64decode(encoded)) == 4 * len(as_floats.data[0].embedding)


@pytest.mark.anyio
async def test_async_client(server: ServerProcess, client: openai.OpenAI, model_id: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120) as aclient:
        response = await aclient.embeddings.create(model=model_id, input="a red circle")
        [listed] = (await aclient.models.list()).data
    assert listed.id == model_id
    [single] = response.data
    expected = client.embeddings.create(model=model_id, input=["a red circle"], encoding_format="float").data[0]
    torch.testing.assert_close(torch.tensor(single.embedding), torch.tensor(expected.embedding), atol=1e-5, rtol=0)


def test_an_image_in_input_is_embedded_in_the_same_space(
    server: ServerProcess, client: openai.OpenAI, model_id: str
) -> None:
    png = encode_image(noise_image(7))
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    image_item = {"type": "image_url", "image_url": {"url": data_url}}
    response = client.embeddings.create(
        model=model_id, input=["a red circle", image_item], encoding_format="float"  # type: ignore[list-item]
    )
    text_vector, image_vector = (torch.tensor(item.embedding) for item in response.data)
    torch.testing.assert_close(
        image_vector, native_embeddings(server, {"image": data_url})[0], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(text_vector, native_embeddings(server, {"input": "a red circle"})[0], atol=1e-5, rtol=0)
    assert response.usage.prompt_tokens == 5  # images count no tokens


def error_body(error: openai.APIStatusError) -> dict[str, object]:
    body = error.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


def test_dimensions_is_refused_by_name(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=model_id, input="a red circle", dimensions=64)
    error = error_body(caught.value)
    assert error["param"] == "dimensions" and error["code"] == "unsupported_parameter"
    assert error["type"] == "invalid_request_error"
    assert "not trained to be truncated" in str(error["message"])


def test_unsupported_inputs_are_400s_naming_the_item(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=model_id, input=[[101, 2003, 102]])
    assert error_body(caught.value)["param"] == "input[0]"
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=model_id, input=["ok", remote])  # type: ignore[list-item]
    error = error_body(caught.value)
    assert error["param"] == "input[1].image_url.url" and "data URL" in str(error["message"])
    broken = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}  # "hello"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=model_id, input=[broken])  # type: ignore[list-item]
    error = error_body(caught.value)
    assert error["code"] == "invalid_image" and error["param"] == "input[0].image_url.url"


def test_malformed_fields_keep_the_native_422(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.embeddings.create(model=model_id, input=["fine", ""])
    error = error_body(caught.value)
    assert error["type"] == "invalid_request_error" and "input[1] is an empty string" in str(error["message"])
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.embeddings.create(model=model_id, input="x", encoding_format="binary")  # type: ignore[arg-type]
    assert error_body(caught.value)["param"] == "encoding_format"


def test_unknown_model_and_bad_key(server: ServerProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="a red circle")
    assert error_body(caught.value)["code"] == "model_not_found"
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    error = error_body(caught.value)
    assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
    assert caught.value.response.headers["www-authenticate"].startswith("Bearer")
    assert caught.value.request_id  # the X-Request-ID header, on errors too
