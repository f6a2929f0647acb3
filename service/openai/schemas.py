"""OpenAI's request and response shapes for /v1/models and /v1/embeddings (as the `openai` package types them).

Field validation answers in the service's usual 422; what mmserve understands but does not do
(`dimensions`, token-id input, image URLs that are not data URLs) is refused by the route with a 400
that names the parameter.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

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


# A text to embed: the schema says non-empty (the validator below says so to the client, with the index).
Text = Annotated[str, WithJsonSchema({"type": "string", "minLength": 1})]
InputItem = Text | ImageInput | int | list[int]


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": "mmserve-builtin", "input": ["a red circle", "a blue square"]}]},
    )

    input: Text | Annotated[list[InputItem], Field(min_length=1)] = Field(
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
