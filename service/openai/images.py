"""POST /v1/images/generations: OpenAI's image API over the same batcher as /generate.

The request is OpenAI's JSON: `prompt`, `model` (the served generator's id, as /v1/models lists it; left
out: the served one), `n`, `size` (`WIDTHxHEIGHT`, one the model makes, or `auto`: its default),
`response_format` (`b64_json`; `url` is refused with a 400: nothing is stored to link to), `output_format`
(`png`), `stream` with `partial_images` (0 to 3): server-sent `image_generation.partial_image` events (the
model's current estimate of the clean image, spread over the steps), then `image_generation.completed`.
A stream makes one image. `quality`, `style`, `background` (`auto`, `opaque`), `moderation` and `user`
are accepted and change nothing. Errors come in OpenAI's shape (`service.openai.errors`).
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service.image_schemas import PromptParams, format_size, parse_size
from service.openai.errors import ModelNotFound, UnsupportedParameter
from service.routes.common import ServingDep, disconnect_waiter, json_body
from service.routes.streaming import EventStream, stream_error
from service.serving.images import ImageAsk, Images, ImageStream
from service.uploads import read_json_body

router = APIRouter()


class ImageGenerationRequest(PromptParams):
    """OpenAI's image generation fields (those the `openai` package sends)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"prompt": "a large red circle", "n": 1}]}
    )

    model: str | None = Field(default=None, min_length=1, description="The generator's id, as /v1/models lists it")
    size: str | None = Field(
        default=None,
        pattern=r"^([1-9][0-9]{0,4}x[1-9][0-9]{0,4}|auto)$",
        description="WIDTHxHEIGHT, one the model makes (400 lists them), or auto",
    )
    response_format: Literal["b64_json", "url"] = Field(default="b64_json", description="url is refused: no storage")
    output_format: Literal["png", "jpeg", "webp"] = Field(default="png", description="Only png")
    stream: bool = Field(default=False, strict=True, description="partial_image events, then completed (n=1)")
    partial_images: int = Field(default=0, ge=0, le=3, description="Partial images in a stream")
    quality: Literal["auto", "low", "medium", "high", "standard", "hd"] | None = None
    style: Literal["vivid", "natural"] | None = None
    background: Literal["auto", "opaque", "transparent"] | None = None
    moderation: Literal["auto", "low"] | None = None
    user: str | None = None


class ImageData(BaseModel):
    b64_json: str = Field(description="The PNG file, base64")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: Literal["png"] = "png"
    size: str


_STREAM_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["image_generation.partial_image", "image_generation.completed", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


@router.post(
    "/v1/images/generations",
    response_model=ImagesResponse,
    responses={200: {"content": {"text/event-stream": {"schema": _STREAM_EVENT}}}},
    openapi_extra=json_body(ImageGenerationRequest),
)
async def create_image(request: Request, serving: ServingDep) -> Response:
    """Make images from a prompt, in OpenAI's request and response shapes."""
    form: ImageGenerationRequest | None = None

    async def read() -> ImageAsk:
        nonlocal form
        hint = 'a JSON body such as {"prompt": "a large red circle"}'
        form = await read_json_body(request, ImageGenerationRequest, serving.settings, hint, serving.in_pool)
        _check_supported(form, serving.model_name("text_to_image"))
        size = None if form.size in (None, "auto") else parse_size(form.size)
        return ImageAsk(form.prompt, form.n, size=size, previews=form.partial_images, stream=form.stream)

    result = await serving.images_as_asked(read, disconnect_waiter(request))
    assert form is not None
    if isinstance(result, ImageStream):
        return EventStream(_events(result, form.partial_images), result.stream)
    body = ImagesResponse(
        created=int(time.time()),
        data=[ImageData(b64_json=base64.b64encode(png).decode()) for png in result.pngs],
        size=format_size(result.size),
    )
    return Response(body.model_dump_json(), media_type="application/json")


async def _events(stream: ImageStream, partial_images: int) -> AsyncIterator[bytes]:
    """OpenAI's image stream: up to `partial_images` partial images, then the completed image."""
    sent = 0
    try:
        async for update in stream:
            if update.done is not None:
                yield _event("image_generation.completed", _completed(update.done))
            elif update.preview is not None and sent < partial_images:
                fields = {**_image_fields(update.preview, "auto"), "partial_image_index": sent}
                yield _event("image_generation.partial_image", fields)
                sent += 1
    except Exception as e:
        error = stream_error(e)
        yield _event("error", {"type": "error", "error": {"message": error["message"], "code": error["type"]}})


def _completed(images: Images) -> dict[str, Any]:
    usage = {
        "input_tokens": 0,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
        "output_tokens": 0,
        "total_tokens": 0,
    }
    return {**_image_fields(images.pngs[0], format_size(images.size)), "usage": usage}


def _image_fields(png: bytes, size: str) -> dict[str, Any]:
    return {
        "b64_json": base64.b64encode(png).decode(),
        "background": "opaque",
        "created_at": int(time.time()),
        "output_format": "png",
        "quality": "auto",
        "size": size,
    }


def _event(kind: str, body: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **body}) + b"\n\n"


def _check_supported(form: ImageGenerationRequest, served: str) -> None:
    """400 for what mmserve does not do; 404 for a model it does not serve."""
    refused = {
        "response_format": form.response_format == "url"
        and "url is not supported: images are not stored; use response_format b64_json",
        "output_format": form.output_format != "png" and "only png is made: leave output_format out or png",
        "background": form.background == "transparent" and "images are opaque: leave background out, auto or opaque",
        "n": form.stream and form.n > 1 and "a stream makes one image: n must be 1 with stream",
    }
    for param, reason in refused.items():
        if reason:
            raise UnsupportedParameter(str(reason), param=param)
    if form.model is not None and form.model != served:
        raise ModelNotFound(f"the model {form.model!r} is not served here; use {served}")
