"""OpenAI's request and response shapes for /v1/chat/completions (as the `openai` package types them).

Malformed fields get the service's usual 422. Parameters mmserve understands but does not do are
declared loosely here and refused by the route with a 400 that names them (`temperature` other than 0,
`top_p` other than 1, `n` other than 1, `logprobs`, `tools`, `response_format` other than text, ...);
`seed`, `user` and other bookkeeping fields are accepted and ignored; anything unknown is a 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOPS = 4  # as OpenAI's API
StopString = Annotated[str, Field(min_length=1)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ImageURLField(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="A data URL (data:image/png;base64,...); http(s) only where the server allows it")
    detail: Literal["auto", "low", "high"] | None = Field(default=None, description="Accepted and ignored")


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["image_url"]
    image_url: ImageURLField


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    """One message; only its role and content matter here (names and tool bookkeeping are ignored)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def parts(self) -> list[TextPart | ImagePart]:
        if self.content is None:
            return []
        if isinstance(self.content, str):
            return [TextPart(type="text", text=self.content)]
        return list(self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    include_obfuscation: bool | None = Field(default=None, description="Accepted and ignored")


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A served model's id, as GET /v1/models lists it")
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOPS)] | None = Field(
        default=None, description=f"Up to {MAX_STOPS} strings; the text ends before the first one found"
    )
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2, description="0 only: decoding is greedy")
    # Accepted and ignored.
    seed: int | None = None
    user: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    parallel_tool_calls: bool | None = None
    # Refused by name unless at their neutral values.
    top_p: float | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: Any = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def unsupported(self) -> tuple[str, str] | None:
        """The first parameter set to something mmserve does not do, and why; None when all are fine."""
        greedy = "decoding is greedy (deterministic)"
        checks: list[tuple[str, bool, str]] = [
            ("temperature", self.temperature not in (None, 0), f"{greedy}: temperature must be 0 or left out"),
            ("top_p", self.top_p not in (None, 1), f"{greedy}: top_p must be 1 or left out"),
            ("n", self.n not in (None, 1), "one choice per request: n must be 1 or left out"),
            ("logprobs", bool(self.logprobs), "log probabilities are not returned"),
            ("top_logprobs", self.top_logprobs not in (None, 0), "log probabilities are not returned"),
            ("frequency_penalty", self.frequency_penalty not in (None, 0), f"{greedy}: no penalties"),
            ("presence_penalty", self.presence_penalty not in (None, 0), f"{greedy}: no penalties"),
            ("logit_bias", bool(self.logit_bias), "logit_bias is not supported"),
            ("tools", bool(self.tools), "tool calls are not supported"),
            ("tool_choice", self.tool_choice not in (None, "none"), "tool calls are not supported"),
            ("functions", bool(self.functions), "function calls are not supported"),
            ("function_call", self.function_call not in (None, "none"), "function calls are not supported"),
            (
                "response_format",
                self.response_format is not None and self.response_format.get("type") != "text",
                "only text responses: response_format must be {\"type\": \"text\"} or left out",
            ),
            ("modalities", self.modalities not in (None, ["text"]), "only text output"),
            ("audio", self.audio is not None, "only text output"),
            ("prediction", self.prediction is not None, "predicted outputs are not supported"),
            ("reasoning_effort", self.reasoning_effort is not None, "the served models do not reason"),
            ("verbosity", self.verbosity is not None, "verbosity is not supported"),
            ("web_search_options", self.web_search_options is not None, "web search is not supported"),
            ("stream_options", self.stream_options is not None and not self.stream, "stream_options needs stream"),
        ]
        return next(((name, why) for name, refused, why in checks if refused), None)


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: ChatMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class CompletionUsage(BaseModel):
    prompt_tokens: int = Field(description="The model's prompt tokens (the question's, for an answer)")
    completion_tokens: int = Field(description="The tokens decoded (past a stop string too, when not streamed)")
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: None = None
