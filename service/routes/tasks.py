"""The inference endpoints: /caption, /vqa, /embed.

Each route runs the same steps in the same order: readiness (503) and task support (501), content
type (415), admission (429, before the body is read; for JSON /embed just after, as the body says
which task it is), reading and validating the fields (422, 413), decoding the image off the event
loop (400, 413), queueing, and waiting for the answer (504).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image

from service.batching import Item
from service.engine import CaptionInput, VqaInput
from service.routes.common import (
    ERROR_RESPONSES,
    RequestRecord,
    RuntimeDep,
    before_deadline,
    disconnect_waiter,
    observe,
    request_body,
    timings,
)
from service.runtime import Runtime
from service.schemas import (
    CaptionJSON,
    CaptionParams,
    CaptionResponse,
    Embedding,
    EmbedImageParams,
    EmbedJSON,
    EmbedResponse,
    VqaJSON,
    VqaParams,
    VqaResponse,
)
from service.uploads import BodyKind, body_kind, check_size, read_form, read_image_request, read_json

router = APIRouter(responses=ERROR_RESPONSES)

@router.post(
    "/caption",
    response_model=CaptionResponse,
    openapi_extra=request_body(CaptionJSON, CaptionParams),
)
async def caption(request: Request, runtime: RuntimeDep) -> CaptionResponse:
    """Caption one image: a multipart file field `image`, or JSON with a base64 `image`."""
    async with observe(runtime, "caption") as record:
        batcher = runtime.admit("caption")
        kind = body_kind(request)
        with batcher.reserve() as slot:
            async with before_deadline(record):
                data, params = await read_image_request(request, kind, CaptionParams, CaptionJSON, runtime.settings)
                image = await _decode(runtime, record, data)
            max_new_tokens = params.max_new_tokens or runtime.settings.default_max_new_tokens
            item = slot.submit(CaptionInput(image, max_new_tokens), record.deadline)
        [text] = await runtime.wait([item], record.deadline, disconnect_waiter(request))
        return CaptionResponse(caption=text, model=runtime.model_name("caption"), timings=timings(record, [item]))


@router.post(
    "/vqa",
    response_model=VqaResponse,
    openapi_extra=request_body(VqaJSON, VqaParams),
)
async def vqa(request: Request, runtime: RuntimeDep) -> VqaResponse:
    """Answer a question about one image: multipart `image` + `question`, or JSON."""
    async with observe(runtime, "vqa") as record:
        batcher = runtime.admit("vqa")
        kind = body_kind(request)
        with batcher.reserve() as slot:
            async with before_deadline(record):
                data, params = await read_image_request(request, kind, VqaParams, VqaJSON, runtime.settings)
                image = await _decode(runtime, record, data)
            item = slot.submit(VqaInput(image, params.question), record.deadline)
        [answer] = await runtime.wait([item], record.deadline, disconnect_waiter(request))
        return VqaResponse(answer=answer, model=runtime.model_name("vqa"), timings=timings(record, [item]))


@router.post(
    "/embed",
    response_model=EmbedResponse,
    openapi_extra=request_body(EmbedJSON, EmbedImageParams),
)
async def embed(request: Request, runtime: RuntimeDep) -> EmbedResponse:
    """Embed texts (JSON `input`: a text or a list) or one image (multipart or JSON `image`), in one space."""
    async with observe(runtime, "embed_text") as record:
        runtime.ensure_ready()
        kind = body_kind(request)
        if kind is BodyKind.MULTIPART:
            return await _embed_image_upload(request, runtime, record)
        # A JSON body must be read to know the task and the number of texts, so admission comes after.
        async with before_deadline(record):
            body = await read_json(request, EmbedJSON, runtime.settings)
        if body.image is not None:
            record.task = "embed_image"
            check_size(body.image, runtime.settings)
            with runtime.admit("embed_image").reserve() as slot:
                async with before_deadline(record):
                    image = await _decode(runtime, record, body.image)
                items = [slot.submit(image, record.deadline)]
        else:
            texts = body.texts()
            with runtime.admit("embed_text").reserve(len(texts)) as slots:
                items = [slots.submit(text, record.deadline) for text in texts]
        vectors = await runtime.wait(items, record.deadline, disconnect_waiter(request))
        return _embed_response(runtime, record, items, vectors)


async def _embed_image_upload(request: Request, runtime: Runtime, record: RequestRecord) -> EmbedResponse:
    record.task = "embed_image"
    with runtime.admit("embed_image").reserve() as slot:
        async with before_deadline(record):
            data, _ = await read_form(request, EmbedImageParams, runtime.settings)
            image = await _decode(runtime, record, data)
        items = [slot.submit(image, record.deadline)]
    vectors = await runtime.wait(items, record.deadline, disconnect_waiter(request))
    return _embed_response(runtime, record, items, vectors)


def _embed_response(
    runtime: Runtime, record: RequestRecord, items: Sequence[Item[Any, Any]], vectors: list[list[float]]
) -> EmbedResponse:
    return EmbedResponse(
        data=[Embedding(index=i, embedding=vector) for i, vector in enumerate(vectors)],
        model=runtime.model_name(record.task),
        dim=len(vectors[0]),
        timings=timings(record, items),
    )


async def _decode(runtime: Runtime, record: RequestRecord, data: bytes) -> Image.Image:
    started = time.monotonic()
    image = await runtime.decode(data)
    record.decode_s = time.monotonic() - started
    return image
