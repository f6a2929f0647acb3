"""What the task routes share: the serving dependency, the client's disconnect waiter, OpenAPI bits."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel

from service.runtime import Runtime
from service.schemas import ErrorResponse, ValidationErrorResponse
from service.serving import Disconnected, Serving


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_serving(request: Request) -> Serving:
    """The app's serving layer (made on first use for the runtime its lifespan started)."""
    state = request.app.state
    serving: Serving | None = getattr(state, "serving", None)
    if serving is None or serving.runtime is not state.runtime:
        serving = state.serving = Serving(state.runtime)
    return serving


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ServingDep = Annotated[Serving, Depends(get_serving)]


def disconnect_waiter(request: Request) -> Disconnected:
    """A coroutine function that returns when the client disconnects (call it after reading the body)."""

    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {  # type: ignore[assignment]  # (the union's key types)
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "The bytes are not a decodable image, or the format is not supported",
        413: "The upload or the image (in pixels) is over the limit",
        415: "The content type is neither multipart/form-data nor application/json",
        429: "The task's queue is full; retry after the Retry-After header's seconds",
        501: "The configured model cannot do this task",
        503: "The model is still loading, the server is shutting down, or it is unhealthy (a stuck or failed device)",
        504: "The request did not complete within the request timeout",
        507: "The input does not fit in the device's memory, even in a batch of its own",
    }.items()
} | {422: {"model": ValidationErrorResponse, "description": "A missing or malformed field, or a body that is not JSON"}}


def request_body(json_model: type[BaseModel], form_model: type[BaseModel], file_field: str = "image") -> dict[str, Any]:
    """OpenAPI for a body that is either JSON (a base64 file) or multipart (a file `file_field` and `form_model`'s
    fields).

    Limits that come from the settings are added when the app serves its document (`service.openapi`).
    """
    form = form_model.model_json_schema()
    fields = {name: _not_null(field) for name, field in form.get("properties", {}).items()}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_model.model_json_schema()},
                "multipart/form-data": {"schema": _form_schema(form, fields, file_field)},
            },
        }
    }


def _form_schema(form: dict[str, Any], fields: dict[str, Any], file_field: str) -> dict[str, Any]:
    """A multipart body's schema; a form whose fields are alternatives (a `oneOf` of required fields, as /vqa's
    `question` and `question_audio`) is one closed schema per alternative, each without the others' fields."""
    properties = {file_field: {"type": "string", "format": "binary"}, **fields}
    required = [file_field, *form.get("required", [])]
    alternatives = [branch["required"] for branch in form.get("oneOf", [])]
    if not alternatives:
        return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}
    others = {name for names in alternatives for name in names}
    return {
        "type": "object",
        "properties": properties,
        "oneOf": [
            {
                "type": "object",
                "required": [*required, *names],
                "properties": {k: v for k, v in properties.items() if k not in others or k in names},
                "additionalProperties": False,
            }
            for names in alternatives
        ]
    }


def _not_null(field: dict[str, Any]) -> dict[str, Any]:
    """A form field's schema: a multipart field is text, never JSON null (leaving it out gives the default)."""
    branches = [branch for branch in field.get("anyOf", []) if branch.get("type") != "null"]
    others = {key: value for key, value in field.items() if key != "anyOf" and not (key == "default" and value is None)}
    return {**branches[0], **others} if len(branches) == 1 else others


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a JSON body read by the route itself (so FastAPI does not document it), refs inlined."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
