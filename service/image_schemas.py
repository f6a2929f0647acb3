"""Text-to-image's request fields, shared by /generate and /v1/images/generations: prompt, n, size, steps.

Limits that come from the settings (the prompt's length, the most steps) are checked here against the
settings at validation time (422 naming the field) and written into the OpenAPI document by
`service.openapi`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from service.engine import MAX_SEED
from service.schemas import RequestModel, Timings, _settings

MAX_IMAGES = 4  # images in one request
MAX_GUIDANCE_SCALE = 30.0
SIZE_PATTERN = r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$"


def parse_size(size: str | None) -> tuple[int, int] | None:
    """ "WxH" → (width, height); None stays None (the model's default size)."""
    if size is None:
        return None
    width, height = size.split("x")
    return int(width), int(height)


def format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


class PromptParams(RequestModel):
    """A prompt, and how many images of it."""

    prompt: str = Field(min_length=1, description="What to draw (bounded by the server's text limit)")
    n: int = Field(default=1, ge=1, le=MAX_IMAGES, description="Images to make (seeds seed, seed + 1, ...)")
    size: str | None = Field(
        default=None, pattern=SIZE_PATTERN, description="WIDTHxHEIGHT, one the model makes (400 lists them)"
    )

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("prompt is blank")
        limit = _settings(info).max_text_chars
        if len(value) > limit:
            raise ValueError(f"prompt is {len(value)} characters long; the limit is {limit}")
        return value


class GenerateJSON(PromptParams):
    """POST /generate."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"prompt": "a large red circle", "seed": 7, "steps": 8}]}
    )

    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Reproduces an image; none: random")
    steps: int | None = Field(default=None, ge=1, description="Denoising steps (the model's default if none)")
    guidance_scale: float | None = Field(
        default=None, ge=0, le=MAX_GUIDANCE_SCALE, description="Classifier-free guidance; <= 1: none"
    )
    stream: bool = Field(default=False, strict=True, description="Server-sent `progress` events, then `done`")
    preview_every: int = Field(default=0, ge=0, description="With `stream`: a preview PNG every k steps; 0: none")

    @field_validator("steps", "preview_every")
    @classmethod
    def _bounded(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = _settings(info).text_to_image_max_steps
        if value is not None and value > limit:
            raise ValueError(f"{info.field_name} must be at most {limit}")
        return value


class GeneratedImageBody(BaseModel):
    index: int
    seed: int = Field(description="The seed that made it: the same request with this seed makes it again")
    png: str = Field(description="The PNG file, base64")


class GenerateResponse(BaseModel):
    images: list[GeneratedImageBody]
    seeds: list[int]
    model: str
    steps: int
    guidance_scale: float
    size: str = Field(description="WIDTHxHEIGHT")
    timings: Timings
