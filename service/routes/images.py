"""POST /generate: text to image. JSON in; a PNG, JSON with base64 PNGs, or server-sent progress out.

    {"prompt": "a large red circle", "n": 1, "seed": 7, "steps": 8, "guidance_scale": 3, "size": "32x32"}

`Accept: image/png` with `n` 1 answers the PNG file itself (its seed in `X-Seed`); otherwise JSON with each
image's PNG in base64, the seeds used and the timings. `stream: true` answers server-sent events: a
`progress` event per denoising step of each image (`{"index", "step", "steps"}`, with a `preview` PNG in
base64 every `preview_every` steps), then `done` (the JSON answer), or `error`.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.image_schemas import GenerateJSON, GenerateResponse, format_size, parse_size
from service.routes.common import ERROR_RESPONSES, ServingDep, disconnect_waiter, json_body
from service.routes.streaming import EventStream, sse, stream_error
from service.serving.images import ImageAsk, Images, ImageStream
from service.uploads import read_json_body

router = APIRouter(responses=ERROR_RESPONSES)

_SSE_EVENT = {  # one server-sent event: `progress` ({"index", "step", "steps", "preview"?}), then `done` or `error`
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["progress", "done", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}
PNG = "image/png"


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={
        200: {
            "content": {
                "text/event-stream": {"schema": _SSE_EVENT},
                PNG: {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "JSON; the PNG itself with `Accept: image/png` and n=1; server-sent events with `stream`",
        }
    },
    openapi_extra=json_body(GenerateJSON),
)
async def generate_images(request: Request, serving: ServingDep) -> Response:
    """Make images from a text prompt (JSON): `prompt`, `n`, `seed`, `steps`, `guidance_scale`, `size`, `stream`."""
    wants_png = PNG in request.headers.get("accept", "")

    async def read() -> ImageAsk:
        hint = 'a JSON body such as {"prompt": "a large red circle"}'
        body = await read_json_body(request, GenerateJSON, serving.settings, hint, serving.in_pool)
        size, every = parse_size(body.size), body.preview_every
        guidance = body.guidance_scale
        return ImageAsk(body.prompt, body.n, body.seed, body.steps, guidance, size, every, stream=body.stream)

    result = await serving.images_as_asked(read, disconnect_waiter(request))
    if isinstance(result, ImageStream):
        return EventStream(_events(result), result.stream)
    if wants_png and len(result.pngs) == 1:
        return Response(result.pngs[0], media_type=PNG, headers={"X-Seed": str(result.seeds[0])})
    return Response(orjson.dumps(body_of(result)), media_type="application/json")


def body_of(images: Images) -> dict[str, Any]:
    """The JSON answer (and the stream's `done` event)."""
    return {
        "images": [
            {"index": i, "seed": seed, "png": base64.b64encode(png).decode()}
            for i, (seed, png) in enumerate(zip(images.seeds, images.pngs, strict=True))
        ],
        "seeds": images.seeds,
        "model": images.model,
        "steps": images.steps,
        "guidance_scale": images.guidance_scale,
        "size": format_size(images.size),
        "timings": images.timings.model_dump(),
    }


async def _events(stream: ImageStream) -> AsyncIterator[bytes]:
    try:
        async for update in stream:
            if update.done is not None:
                yield sse("done", body_of(update.done))
                continue
            progress: dict[str, Any] = {"index": update.index, "step": update.step, "steps": update.steps}
            if update.preview is not None:
                progress["preview"] = base64.b64encode(update.preview).decode()
            yield sse("progress", progress)
    except Exception as e:
        yield sse("error", {"error": stream_error(e)})
