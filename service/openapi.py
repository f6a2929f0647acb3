"""The OpenAPI document, with the limits that come from the settings written into its request schemas.

The request models check these limits against the settings at validation time, which pydantic's
schema generation cannot see; without them the document would promise more than the routes accept
(a 129-token caption, a 600-character question), and every client or fuzzer generated from it would
be misled.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI

from service.settings import Settings

# Request field → (the JSON type the limit applies to, the schema keyword, the setting).
_LIMITS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "max_new_tokens": (("integer", "maximum", "max_new_tokens_limit"),),
    "question": (("string", "maxLength", "max_question_chars"),),
    "input": (("string", "maxLength", "max_text_chars"), ("array", "maxItems", "max_embed_inputs")),
    "prompt": (("string", "maxLength", "max_text_chars"),),  # text-to-image
    "steps": (("integer", "maximum", "text_to_image_max_steps"),),
    "preview_every": (("integer", "maximum", "text_to_image_max_steps"),),
}


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve FastAPI's document for `app`, with the settings' limits in it (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_limits(FastAPI.openapi(app), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_limits(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A copy of `document` whose request bodies carry the limits of `settings`."""
    document = copy.deepcopy(document)
    for path in document.get("paths", {}).values():
        for operation in path.values():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                for name, field in media.get("schema", {}).get("properties", {}).items():
                    for json_type, keyword, setting in _LIMITS.get(name, ()):
                        for schema in _subschemas(field):
                            if schema.get("type") == json_type:
                                schema[keyword] = getattr(settings, setting)
    return document


def _subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`schema`, its `anyOf`/`oneOf` branches and its array items, recursively."""
    yield schema
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        yield from _subschemas(branch)
    if isinstance(schema.get("items"), dict):
        yield from _subschemas(schema["items"])
