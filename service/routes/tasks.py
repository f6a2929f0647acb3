"""The inference endpoints: /caption, /vqa, /embed.

Each route runs the same steps in the same order: readiness (503) and task support (501), content
type (415), admission (429, before the body is read; for JSON /embed just after, as the body says
which task it is), reading and validating the fields (422, 413), decoding and preparing the input off
the event loop (400, 413), queueing, and waiting for the answer (504), or streaming it (`stream=true`).
/caption and /vqa share one handler; they differ only in their fields and the name of the answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from model import Task
from service.batching import Item
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
from service.routes.hearing import FIELD as QUESTION_AUDIO
from service.routes.hearing import SPOKEN_RESPONSES, hear_question
from service.routes.streaming import event_stream, first_update
from service.runtime import Runtime
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
_INLINE_TOKENIZE_CHARS = 4096  # texts shorter than this in all are tokenised on the event loop (faster than a hop)


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
async def caption(request: Request, runtime: RuntimeDep) -> Response:
    """Caption one image: a multipart file field `image`, or JSON with a base64 `image`."""
    return await generate(request, runtime, CAPTION)


@router.post(
    "/vqa",
    response_model=VqaResponse,
    responses={**SPOKEN_RESPONSES, 200: {"content": _SSE, "description": "JSON, or server-sent events with `stream`"}},
    openapi_extra=request_body(VqaJSON, VqaParams),
)
async def vqa(request: Request, runtime: RuntimeDep) -> Response:
    """Answer a question about one image: multipart `image` + `question` (or a `question_audio` file), or JSON."""
    return await generate(request, runtime, VQA)


async def generate(request: Request, runtime: Runtime, route: GenerationRoute) -> Response:
    """Caption or answer: admit, read, prepare, queue; then the answer, or its tokens as they come."""
    async with observe(runtime, route.task) as record:
        kind = body_kind(request)
        with runtime.admit(route.task) as slot:
            async with before_deadline(record):
                data, params = await read_image_request(
                    request, kind, route.params, route.json_model, runtime.settings, optional_files=route.audio_fields
                )
            question, heard, hearing = getattr(params, "question", None), None, []
            if (spoken := getattr(params, "question_audio", None)) is not None:
                heard, heard_item = await hear_question(request, runtime, record, spoken)
                question, hearing = heard, [heard_item]
            async with before_deadline(record):
                started = time.monotonic()
                payload = await runtime.prepare_generation(
                    route.task, data, question=question, max_new_tokens=_max_new_tokens(route, params, runtime)
                )
                record.decode_s += time.monotonic() - started
            sink = runtime.stream_sink() if params.stream else None
            item = slot.submit(payload, record.deadline, sink[1] if sink else None)
        model = runtime.model_name(route.task)

        def reply(text: str) -> dict[str, Any]:
            body: dict[str, Any] = {
                route.answer_field: text,
                "model": model,
                "timings": timings(record, [item], hearing),
            }
            if route.task == "vqa":
                body["heard"] = heard
            return route.response.model_validate(body).model_dump()

        if sink is None:
            [generated] = await runtime.wait([item], record.deadline, disconnect_waiter(request))
            return _json(_dumps(reply(generated.text)))
        updates = runtime.stream(item, sink[0], record.deadline)
        first = await first_update(updates, disconnect_waiter(request))  # errors so far keep their status
        return StreamingResponse(
            event_stream(first, updates, reply),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _max_new_tokens(route: GenerationRoute, params: StreamParam, runtime: Runtime) -> int | None:
    """A caption's limit (asked, or the default); answers have the server's (`vqa_max_new_tokens`)."""
    if route.task == "vqa":
        return None
    return getattr(params, "max_new_tokens", None) or runtime.settings.default_max_new_tokens


@router.post(
    "/embed",
    response_model=EmbedResponse,
    openapi_extra=request_body(EmbedJSON, EmbedImageParams),
)
async def embed(request: Request, runtime: RuntimeDep) -> Response:
    """Embed texts (JSON `input`: a text or a list) or one image (multipart or JSON `image`), in one space."""
    async with observe(runtime, "embed_text") as record:
        runtime.ensure_ready()
        kind = body_kind(request)
        if kind is BodyKind.MULTIPART:
            record.task = "embed_image"
            with runtime.admit("embed_image") as slot:
                async with before_deadline(record):
                    data, _ = await read_form(request, EmbedImageParams, runtime.settings)
                    items = [slot.submit(await _prepare_image(runtime, record, data), record.deadline)]
            return await _embed(request, runtime, record, items)
        # A JSON body must be read to know the task and the number of texts, so admission comes after.
        async with before_deadline(record):
            body = await read_json(request, EmbedJSON, runtime.settings)
        if body.image is not None:
            record.task = "embed_image"
            check_size(body.image, runtime.settings)
            with runtime.admit("embed_image") as slot:
                async with before_deadline(record):
                    items = [slot.submit(await _prepare_image(runtime, record, body.image), record.deadline)]
            return await _embed(request, runtime, record, items)
        texts = body.texts()
        with runtime.admit("embed_text", len(texts)) as slots:
            if sum(map(len, texts)) < _INLINE_TOKENIZE_CHARS:
                payloads = [runtime.ensure_ready().prepare_text("embed_text", text) for text in texts]
            else:
                async with before_deadline(record):
                    payloads = await runtime.prepare_texts("embed_text", texts)
            items = [slots.submit(payload, record.deadline) for payload in payloads]
        return await _embed(request, runtime, record, items)


async def _prepare_image(runtime: Runtime, record: RequestRecord, data: bytes) -> Any:
    started = time.monotonic()
    prepared = await runtime.prepare_image("embed_image", data)
    record.decode_s = time.monotonic() - started
    return prepared


async def _embed(
    request: Request, runtime: Runtime, record: RequestRecord, items: Sequence[Item[Any, Any]]
) -> Response:
    """Wait for the vectors and answer them, encoded by orjson straight from numpy (off the loop when large)."""
    vectors = await runtime.wait(items, record.deadline, disconnect_waiter(request))
    body = {
        "data": [{"index": i, "embedding": vector} for i, vector in enumerate(vectors)],
        "model": runtime.model_name(record.task),
        "dim": len(vectors[0]),
        "timings": timings(record, items).model_dump(),
    }
    if len(vectors) > 16:
        return _json(await asyncio.to_thread(_dumps, body))
    return _json(_dumps(body))


def _json(content: bytes) -> Response:
    return Response(content, media_type="application/json")


def _dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
