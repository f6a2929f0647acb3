"""POST /v1/embeddings: OpenAI's embeddings API over the same queues as /embed.

Texts go to the embed_text queue one item each, images (data URLs in `input`) to the embed_image queue;
both kinds come back in `input`'s order, in one space. `encoding_format: base64` gives each vector's
little-endian float32 bytes, which the `openai` package asks for by default and decodes with numpy.
"""

from __future__ import annotations

import asyncio
import base64
from contextlib import ExitStack
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from service.batching import Item
from service.errors import InvalidImage
from service.openai.errors import ModelNotFound, UnsupportedParameter
from service.openai.schemas import (
    CreateEmbeddingResponse,
    Embedding,
    EmbeddingRequest,
    ImageInput,
    OpenAIErrorResponse,
    Usage,
)
from service.routes.common import (
    ERROR_RESPONSES,
    RequestRecord,
    RuntimeDep,
    before_deadline,
    disconnect_waiter,
    json_body,
    observe,
    timings,
)
from service.runtime import Runtime
from service.schemas import _decode_base64
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
async def create_embeddings(request: Request, runtime: RuntimeDep) -> CreateEmbeddingResponse:
    """Embed texts and images (data URLs) in one space, in OpenAI's request and response shapes."""
    async with observe(runtime, "embed_text") as record:
        engine = runtime.ensure_ready()
        async with before_deadline(record):
            body = await read_json_body(request, EmbeddingRequest, runtime.settings, "images go in input as data URLs")
        _check_supported(runtime, body)
        items = body.items()
        texts = {i: item for i, item in enumerate(items) if isinstance(item, str)}
        images = {i: item for i, item in enumerate(items) if isinstance(item, ImageInput)}
        if not texts:
            record.task = "embed_image"
        with ExitStack() as stack:  # admission for both kinds first, then decoding, then queueing
            text_slots = stack.enter_context(runtime.admit("embed_text", len(texts))) if texts else None
            image_slots = stack.enter_context(runtime.admit("embed_image", len(images))) if images else None
            async with before_deadline(record):
                decoded = {i: await _decode(runtime, record, i, item) for i, item in images.items()}
                prepared = dict(
                    zip(texts, await runtime.prepare_texts("embed_text", list(texts.values())), strict=True)
                )
            queued: dict[int, Item[Any, Any]] = {}
            if text_slots is not None:
                queued.update({i: text_slots.submit(ids, record.deadline) for i, ids in prepared.items()})
            if image_slots is not None:
                queued.update({i: image_slots.submit(image, record.deadline) for i, image in decoded.items()})
        order = sorted(queued)
        vectors = await runtime.wait([queued[i] for i in order], record.deadline, disconnect_waiter(request))
        tokens = sum(await asyncio.to_thread(engine.count_tokens, list(texts.values())))
        timings(record, [queued[i] for i in order])  # kept on the record for the request log
        return CreateEmbeddingResponse(
            data=[
                Embedding(index=i, embedding=_encoded(vector, body.encoding_format))
                for i, vector in zip(order, vectors, strict=True)
            ],
            model=body.model,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )


def _check_supported(runtime: Runtime, body: EmbeddingRequest) -> None:
    """400 for what mmserve does not do; 404 for a model it does not serve."""
    if body.dimensions is not None:
        raise UnsupportedParameter(
            f"dimensions is not supported: the served embedding model ({runtime.model_name('embed_text')}) gives "
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
    served = {runtime.model_name("embed_text"), runtime.model_name("embed_image")}
    if body.model not in served:
        raise ModelNotFound(f"the model {body.model!r} is not served here; use {' or '.join(sorted(served))}")


async def _decode(runtime: Runtime, record: RequestRecord, index: int, item: ImageInput) -> Any:
    param = f"input[{index}].image_url.url"
    try:
        data = _decode_base64(item.image_url.url)
    except ValueError as e:
        raise InvalidImage(f"{param}: {e}", param=param) from e
    check_size(data, runtime.settings)
    try:
        return await runtime.prepare_image("embed_image", data)
    except InvalidImage as e:
        raise InvalidImage(f"{param}: {e.message}", param=param) from e


def _encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector.tolist()  # type: ignore[no-any-return]
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
