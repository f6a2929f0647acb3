"""Reading request bodies: the content type, then JSON or multipart, into validated fields and file bytes.

Each image endpoint (and /transcribe, with `audio` for `image`) takes either `multipart/form-data` (a file
field `image` plus plain fields) or `application/json` (a base64 `image` plus the same fields). Both end
in the same pydantic models, so a malformed field reads the same either way: FastAPI's 422 shape.
Nothing here decodes pixels or samples. A JSON body over `JSON_ON_LOOP_BYTES` (a base64 image or audio) is
checked, parsed and base64-decoded off the event loop (`offload`: the decode pool, from serving), so a
13 MB body never holds the loop; a repeated form field is kept whole when its field is a list (the
`openai` package sends `timestamp_granularities[]` once per value).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Protocol, TypeVar, get_args, get_origin

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from service.errors import PayloadTooLarge, UnsupportedMediaType
from service.settings import Settings

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

MAX_FORM_FIELDS = 16
JSON_ON_LOOP_BYTES = 64 * 1024  # larger JSON bodies are parsed (and their base64 decoded) off the event loop


class Offload(Protocol):
    """Runs a function off the event loop (serving's `in_pool`: the decode pool)."""

    def __call__(self, work: Callable[[], T], /) -> Awaitable[T]: ...


def to_thread(work: Callable[[], T]) -> Awaitable[T]:
    """The default `Offload`: asyncio's thread pool."""
    return asyncio.to_thread(work)


class BodyKind(StrEnum):
    JSON = "application/json"
    MULTIPART = "multipart/form-data"


def body_kind(request: Request, file_field: str = "image") -> BodyKind:
    """JSON or multipart, from the Content-Type header alone (415 otherwise)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    for kind in BodyKind:
        if media_type == kind.value:
            return kind
    shown = media_type or "none"
    raise UnsupportedMediaType(
        f"unsupported content type {shown}; send multipart/form-data (a file field '{file_field}') or application/json"
    )


def validation_error(error: ValidationError) -> RequestValidationError:
    """A pydantic error on the body, in FastAPI's shape (locations under "body")."""
    errors = error.errors(include_url=False, include_context=False)
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors])


def missing(field: str, message: str = "Field required") -> RequestValidationError:
    return RequestValidationError([{"type": "missing", "loc": ("body", field), "msg": message, "input": None}])


async def read_json(request: Request, model: type[M], settings: Settings, offload: Offload = to_thread) -> M:
    """The JSON body validated against `model` (the settings give the limits); a large one off the loop."""
    body = await request.body()
    if len(body) > JSON_ON_LOOP_BYTES:
        return await offload(lambda: parse_json(body, model, settings))
    return parse_json(body, model, settings)


def parse_json(body: bytes, model: type[M], settings: Settings) -> M:
    """A JSON body (UTF-8, 422 otherwise) validated against `model`, its base64 fields decoded."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        message = f"the body is not valid UTF-8 (byte {e.start}); JSON must be UTF-8"
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": message}]) from e
    try:
        return model.model_validate_json(body, context={"settings": settings})
    except ValidationError as e:
        raise validation_error(e) from e


async def read_json_body(
    request: Request, model: type[M], settings: Settings, hint: str, offload: Offload = to_thread
) -> M:
    """A body that must be JSON (415 otherwise, saying `hint`), validated against `model`."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != BodyKind.JSON.value:
        raise UnsupportedMediaType(f"send application/json: {hint}")
    return await read_json(request, model, settings, offload)


async def read_form(
    request: Request,
    params: type[M],
    settings: Settings,
    file_field: str = "image",
    optional_files: tuple[str, ...] = (),
    limit: int | None = None,
) -> tuple[bytes, M]:
    """The uploaded file (`file_field`: "image", "audio", ...) and the other fields, validated against `params`.

    `optional_files` are further file fields `params` takes as bytes (e.g. /vqa's spoken `question_audio`).
    `limit`: the file's most bytes (else `max_upload_bytes`; the optional files always have that).
    """
    form = await request.form(max_files=1 + len(optional_files), max_fields=MAX_FORM_FIELDS)
    try:
        data = await _read_file(form, file_field, settings, limit)
        lists = _list_fields(params)
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key in lists:
                fields.setdefault(key, []).append(value)
            elif key != file_field:
                fields[key] = value
        for name in optional_files:
            if name in fields:
                fields[name] = await _read_file(form, name, settings)
        try:
            return data, params.model_validate(fields, context={"settings": settings})
        except ValidationError as e:
            raise validation_error(e) from e
    finally:
        await form.close()


def _list_fields(params: type[BaseModel]) -> set[str]:
    """The names (aliases) of `params`' fields that take a list: a repeated form field gives all its values."""
    names = set()
    for name, field in params.model_fields.items():
        types = [field.annotation, *get_args(field.annotation)]
        if any(get_origin(t) is list or t is list for t in types):
            names.add(field.alias or name)
    return names


async def _read_file(form: FormData, name: str, settings: Settings, limit: int | None = None) -> bytes:
    """The bytes of the file field `name` (422 when it is missing or a text field; 413 over the limit)."""
    upload = form.get(name)
    if upload is None:
        raise missing(name, f"Field required: a file field named '{name}'")
    if not isinstance(upload, UploadFile):
        raise missing(name, f"{name} must be a file upload, not a text field")
    data = await upload.read((limit or settings.max_upload_bytes) + 1)
    check_size(data, settings, name, limit)
    return data


async def read_image_request(
    request: Request,
    kind: BodyKind,
    params: type[M],
    json_model: type[M],
    settings: Settings,
    file_field: str = "image",
    optional_files: tuple[str, ...] = (),
    offload: Offload = to_thread,
    limit: int | None = None,
) -> tuple[bytes, M]:
    """File bytes and fields from either body kind; `json_model` is `params` plus the base64 `file_field`
    (and base64 `optional_files`). `limit`: the file's most bytes, as `read_form`'s."""
    if kind is BodyKind.MULTIPART:
        return await read_form(request, params, settings, file_field, optional_files, limit)
    body = await read_json(request, json_model, settings, offload)
    data: bytes = getattr(body, file_field)
    for name in (file_field, *optional_files):
        if (value := getattr(body, name)) is not None:
            check_size(value, settings, name, limit if name == file_field else None)
    return data, body


def check_size(data: bytes, settings: Settings, what: str = "image", limit: int | None = None) -> None:
    """413 for an upload (an image, an audio file) over the upload limit (`limit`, else `max_upload_bytes`)."""
    most = limit or settings.max_upload_bytes
    if len(data) > most:
        raise PayloadTooLarge(f"the {what} is larger than the limit of {most} bytes")
