"""POST /v1/embeddings: OpenAI's embeddings API over the same queues as /embed.

Texts go to the embed_text queue one item each, images (data URLs in `input`) to the embed_image queue;
both kinds come back in `input`'s order, in one space. `encoding_format: base64` gives each vector's
little-endian float32 bytes, which the `openai` package asks for by default and decodes with numpy.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.errors import InvalidImage
from service.openai.errors import ModelNotFound, UnsupportedParameter
from service.openai.schemas import CreateEmbeddingResponse, EmbeddingRequest, ImageInput, OpenAIErrorResponse
from service.routes.common import ERROR_RESPONSES, ServingDep, disconnect_waiter, json_body
from service.schemas import _decode_base64
from service.serving import EmbedAsk, Embeddings, Serving
from service.settings import Settings
from service.uploads import check_size, read_json_body

router = APIRouter()

# The native statuses, in OpenAI's error shape (a field error too: 422), and 404 for a model not served.
OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorResponse, "description": response["description"]}
    for status, response in {**ERROR_RESPONSES, 404: {"description": "The model is not served here"}}.items()
}


@router.post(
    "/v1/embeddings",
    response_model=CreateEmbeddingResponse,
    responses=OPENAI_ERROR_RESPONSES,
    openapi_extra=json_body(EmbeddingRequest),
)
async def create_embeddings(request: Request, serving: ServingDep) -> Response:
    """Embed texts and images (data URLs) in one space, in OpenAI's request and response shapes."""
    body: EmbeddingRequest | None = None

    async def read() -> EmbedAsk:
        nonlocal body
        hint = "images go in input as data URLs"
        body = parsed = await read_json_body(request, EmbeddingRequest, serving.settings, hint, serving.in_pool)
        _check_supported(serving, parsed)
        inputs = await serving.in_pool(lambda: _inputs(parsed.items(), serving.settings))  # base64 off the loop
        return EmbedAsk(inputs, image_param="input[{}].image_url.url")

    embedded = await serving.embed(read, disconnect_waiter(request))
    assert body is not None
    model, encoding = body.model, body.encoding_format
    content = await serving.in_pool(lambda: _response(embedded, model, encoding))  # orjson, off the loop
    return Response(content, media_type="application/json")


def _check_supported(serving: Serving, body: EmbeddingRequest) -> None:
    """400 for what mmserve does not do; 404 for a model it does not serve."""
    if body.dimensions is not None:
        raise UnsupportedParameter(
            f"dimensions is not supported: the served embedding model ({serving.model_name('embed_text')}) gives "
            "fixed-size embeddings and was not trained to be truncated; leave dimensions out",
            param="dimensions",
        )
    for i, item in enumerate(body.items()):
        if isinstance(item, int | list):
            raise UnsupportedParameter(
                "token-id input is not supported: send the texts themselves", param=f"input[{i}]"
            )
        if isinstance(item, ImageInput) and not item.image_url.url.startswith("data:"):
            raise UnsupportedParameter(
                "image URLs are not fetched: send the image as a data URL (data:image/png;base64,...)",
                param=f"input[{i}].image_url.url",
            )
    served = {serving.model_name("embed_text"), serving.model_name("embed_image")}
    if body.model not in served:
        raise ModelNotFound(f"the model {body.model!r} is not served here; use {' or '.join(sorted(served))}")


def _inputs(items: list[Any], settings: Settings) -> list[str | bytes]:
    """The texts as they are, the images' data URLs decoded (400 when not base64, 413 over the limit)."""
    inputs: list[str | bytes] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            inputs.append(item)
            continue
        param = f"input[{i}].image_url.url"
        try:
            data = _decode_base64(item.image_url.url)
        except ValueError as e:
            raise InvalidImage(f"{param}: {e}", param=param) from e
        check_size(data, settings)
        inputs.append(data)
    return inputs


def _response(embedded: Embeddings, model: str, encoding_format: str) -> bytes:
    """OpenAI's response body, serialised by orjson (called in the decode pool: vectors can be many)."""
    tokens = embedded.text_tokens
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encoded(vector, encoding_format)}
                for i, vector in enumerate(embedded.vectors)
            ],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def _encoded(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    if encoding_format == "float":
        return np.asarray(vector, dtype=np.float32)
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
