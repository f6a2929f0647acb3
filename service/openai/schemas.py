"""OpenAI's request and response shapes for /v1/models and /v1/embeddings (as the `openai` package types them).

Field validation answers in the service's usual 422; what mmserve understands but does not do
(`dimensions`, token-id input, image URLs that are not data URLs) is refused by the route with a 400
that names the parameter.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, WithJsonSchema, model_validator

from service.schemas import _settings


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="A data URL: data:image/png;base64,...")


class ImageInput(BaseModel):
    """An image item of `input`, as vLLM takes it: embedded in the same space as the texts."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["image_url"]
    image_url: ImageURL


# Documented as non-empty; the model validator says which item is empty (as the native /embed does).
Text = Annotated[str, WithJsonSchema({"type": "string", "minLength": 1})]
InputItem = Text | ImageInput | int | list[int]


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": "mmserve-builtin", "input": ["a red circle", "a blue square"]}]},
    )

    input: Text | Annotated[list[InputItem], Field(json_schema_extra={"minItems": 1})] = Field(
        description="A text, or a list of texts and image items {type: image_url, image_url: {url: data URL}}"
    )
    model: str = Field(description="The embedding model's id, as GET /v1/models lists it")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: each vector's little-endian float32 bytes"
    )
    dimensions: int | None = Field(default=None, ge=1, description="Refused: the served models cannot truncate")
    user: str | None = Field(default=None, description="Accepted and ignored")

    @model_validator(mode="after")
    def _bounded(self, info: ValidationInfo) -> Self:
        settings = _settings(info)
        items = self.items()
        if not items:
            raise ValueError("input must not be an empty list")
        if len(items) > settings.max_embed_inputs:
            raise ValueError(f"input has {len(items)} items; the limit is {settings.max_embed_inputs}")
        for i, item in enumerate(items):
            if isinstance(item, str) and not item:
                raise ValueError(f"input[{i}] is an empty string")
            if isinstance(item, str) and len(item) > settings.max_text_chars:
                raise ValueError(f"input[{i}] is {len(item)} characters long; the limit is {settings.max_text_chars}")
        return self

    def items(self) -> list[InputItem]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The vector, or its float32 little-endian bytes in base64")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="The embedding model's tokens over all texts (images count none)")
    total_tokens: int


class CreateEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When this server loaded it (Unix seconds)")
    owned_by: str = "mmserve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorDetail


OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorResponse, "description": description}
    for status, description in {
        400: "A parameter mmserve does not support (named in `param`), or an input the model cannot take",
        404: "The model is not served here",
        413: "The body or an image is over the limit",
        415: "The content type is not application/json",
        422: "A missing or malformed field",
        429: "The task's queue is full; retry after the Retry-After header's seconds",
        501: "The configured model cannot do this task",
        503: "The model is still loading, or the server is shutting down",
        504: "The request did not complete within the request timeout",
    }.items()
}


def json_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `openapi_extra` for a JSON body read by the route itself, `model`'s schema with its $defs inlined."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                siblings = {key: value for key, value in node.items() if key != "$ref"}
                return inline({**definitions[reference.removeprefix("#/$defs/")], **siblings})
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
