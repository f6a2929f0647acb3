"""The inference endpoints: /caption, /vqa, /embed. Each parses its request and formats serving's answer.

Serving (`service.serving`) runs the request's life: readiness (503) and task support (501), admission
(429, before the body is read; for JSON /embed just after, as the body says which task it is), then the
route's reading of the body here (415, 422, 413), decoding and preparing the input off the event loop (400,
413), queueing, and the answer (504), or its tokens as server-sent events (`stream=true`). /caption and
/vqa share one handler; they differ only in their fields and the name of the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from model import Task
from service.routes.common import ERROR_RESPONSES, ServingDep, disconnect_waiter, request_body
from service.routes.hearing import FIELD as QUESTION_AUDIO
from service.routes.hearing import SPOKEN_RESPONSES
from service.routes.streaming import token_events
from service.schemas import (
    CaptionJSON,
    CaptionParams,
    CaptionResponse,
    EmbedImageParams,
    EmbedJSON,
    EmbedResponse,
    StreamParam,
    VqaJSON,
    VqaParams,
    VqaResponse,
)
from service.serving import EmbedAsk, Embeddings, Generation, GenerationAsk, Serving
from service.uploads import BodyKind, body_kind, check_size, read_form, read_image_request, read_json

router = APIRouter(responses=ERROR_RESPONSES)

_SSE_EVENT = {  # one server-sent event: `token` ({"index", "text"}), then `done` (the JSON answer) or `error`
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["token", "done", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}
_SSE = {"text/event-stream": {"schema": _SSE_EVENT}}


@dataclass(frozen=True)
class GenerationRoute:
    """What differs between /caption and /vqa."""

    task: Task
    params: type[StreamParam]
    json_model: type[StreamParam]
    response: type[CaptionResponse] | type[VqaResponse]
    answer_field: str
    audio_fields: tuple[str, ...] = ()  # file fields besides the image (spoken input)


CAPTION = GenerationRoute("caption", CaptionParams, CaptionJSON, CaptionResponse, "caption")
VQA = GenerationRoute("vqa", VqaParams, VqaJSON, VqaResponse, "answer", audio_fields=(QUESTION_AUDIO,))


@router.post(
    "/caption",
    response_model=CaptionResponse,
    responses={200: {"content": _SSE, "description": "JSON, or server-sent events with `stream`"}},
    openapi_extra=request_body(CaptionJSON, CaptionParams),
)
async def caption(request: Request, serving: ServingDep) -> Response:
    """Caption one image: a multipart file field `image`, or JSON with a base64 `image`."""
    return await generate(request, serving, CAPTION)


@router.post(
    "/vqa",
    response_model=VqaResponse,
    responses={**SPOKEN_RESPONSES, 200: {"content": _SSE, "description": "JSON, or server-sent events with `stream`"}},
    openapi_extra=request_body(VqaJSON, VqaParams),
)
async def vqa(request: Request, serving: ServingDep) -> Response:
    """Answer a question about one image: multipart `image` + `question` (or a `question_audio` file), or JSON."""
    return await generate(request, serving, VQA)


async def generate(request: Request, serving: Serving, route: GenerationRoute) -> Response:
    """Caption or answer: the fields read, serving's answer as JSON, or its tokens as they come."""

    async def read() -> GenerationAsk:
        data, params = await read_image_request(
            request, body_kind(request), route.params, route.json_model, serving.settings,
            optional_files=route.audio_fields, offload=serving.in_pool,
        )  # fmt: skip
        question, spoken = getattr(params, "question", None), getattr(params, QUESTION_AUDIO, None)
        limit = getattr(params, "max_new_tokens", None)
        return GenerationAsk(route.task, data, question, spoken, limit, stream=params.stream)

    def reply(generated: Generation) -> dict[str, Any]:
        body = {route.answer_field: generated.text, "model": generated.model, "timings": generated.timings}
        return route.response.model_validate({**body, "heard": generated.heard}).model_dump()

    result = await serving.generate_as_asked(read, disconnect_waiter(request), route.task)
    if isinstance(result, Generation):
        return _json(_dumps(reply(result)))
    return token_events(result, reply)


@router.post(
    "/embed",
    response_model=EmbedResponse,
    openapi_extra=request_body(EmbedJSON, EmbedImageParams),
)
async def embed(request: Request, serving: ServingDep) -> Response:
    """Embed texts (JSON `input`: a text or a list) or one image (multipart or JSON `image`), in one space."""

    async def read() -> EmbedAsk:
        if body_kind(request) is BodyKind.MULTIPART:
            data, _ = await read_form(request, EmbedImageParams, serving.settings)
            return EmbedAsk([data])
        body = await read_json(request, EmbedJSON, serving.settings, serving.in_pool)
        if body.image is not None:
            check_size(body.image, serving.settings)
            return EmbedAsk([body.image])
        return EmbedAsk(body.texts())

    embedded = await serving.embed(read, disconnect_waiter(request))
    return _json(await serving.in_pool(lambda: _dumps(_embed_body(embedded))))


def _embed_body(embedded: Embeddings) -> dict[str, Any]:
    return {
        "data": [{"index": i, "embedding": vector} for i, vector in enumerate(embedded.vectors)],
        "model": embedded.model,
        "dim": len(embedded.vectors[0]),
        "timings": embedded.timings.model_dump(),
    }


def _json(content: bytes) -> Response:
    return Response(content, media_type="application/json")


def _dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
