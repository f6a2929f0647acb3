"""POST /v1/chat/completions: OpenAI's chat API over the caption and vqa queues, whole or streamed.

The served models answer about one image, so a conversation maps to one generation: the last user
message's image alone asks for its caption; its image and text ask the text as a question about it
(a Hugging Face VLM renders that turn through its own chat template). Earlier turns and system messages
are not seen by the model. Decoding is greedy; sampling parameters other than the neutral ones are
refused by name. `stop` strings cut the text (held back while streaming until they cannot match).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from model import Task
from service.errors import ServiceError
from service.openai.chat_schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    CompletionUsage,
    ImagePart,
    Message,
    TextPart,
)
from service.openai.errors import InvalidRequest, ModelNotFound, UnsupportedParameter, openai_type
from service.openai.image_urls import image_bytes
from service.openai.stops import StopScanner, cut_at_stop
from service.routes.common import ServingDep, disconnect_waiter, json_body
from service.routes.streaming import EventStream, stream_error
from service.serving import Generation, GenerationAsk, Serving, Stream, TextUpdate
from service.settings import Settings
from service.uploads import read_json_body

router = APIRouter()

_CHUNKS = {"text/event-stream": {"schema": {"type": "string", "description": "data: ChatCompletionChunk JSON lines"}}}


@dataclass(frozen=True)
class Turn:
    """What the model is asked: an image (its URL and where it was in the request) and maybe a question."""

    url: str
    param: str
    question: str | None

    @property
    def task(self) -> Task:
        return "vqa" if self.question else "caption"


class Completion:
    """One request's identity and limits, shared by the whole answer and the streamed chunks."""

    def __init__(self, body: ChatCompletionRequest, turn: Turn, limit: int, serving: Serving) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = body.model
        self.stops = body.stops()
        self.limit = limit
        self.prompt_tokens = serving.prompt_tokens(turn.task, turn.question)
        self.include_usage = body.stream_options is not None and body.stream_options.include_usage

    def usage(self, completion_tokens: int) -> dict[str, int]:
        total = self.prompt_tokens + completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}

    def finish_reason(self, reason: str | None, tokens: int) -> str:
        """The generation's reason; for models that do not say, "length" when the limit was reached."""
        if reason in ("stop", "length"):
            return reason
        return "length" if tokens and tokens >= self.limit else "stop"


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": _CHUNKS, "description": "JSON, or server-sent chunks with `stream`"}},
    openapi_extra=json_body(ChatCompletionRequest),
)
async def create_chat_completion(request: Request, serving: ServingDep) -> Response:
    """A caption or an answer about the last user message's image, in OpenAI's chat shapes (streamed or whole)."""
    completion: Completion | None = None

    async def read() -> GenerationAsk:
        nonlocal completion
        hint = "images go in the messages as data URLs"
        body = await read_json_body(request, ChatCompletionRequest, serving.settings, hint, serving.in_pool)
        if (refused := body.unsupported()) is not None:
            raise UnsupportedParameter(f"{refused[0]} is not supported: {refused[1]}", param=refused[0])
        turn = read_turn(body.messages, serving.settings)
        _check_model(serving, body.model, turn.task)
        asked = body.max_completion_tokens or body.max_tokens
        completion = Completion(body, turn, serving.max_new_tokens(turn.task, asked), serving)
        data = await image_bytes(turn.url, turn.param, serving.settings, offload=serving.in_pool)
        return GenerationAsk(turn.task, data, turn.question, None, completion.limit, turn.param, body.stream)

    result = await serving.generate_as_asked(read, disconnect_waiter(request))
    assert completion is not None
    if isinstance(result, Generation):
        return Response(orjson.dumps(_whole(completion, result)), media_type="application/json")
    return EventStream(_chunks(completion, result), result)


def read_turn(messages: list[Message], settings: Settings) -> Turn:
    """The last user message's one image and its text (the question; none: a caption)."""
    users = [i for i, message in enumerate(messages) if message.role == "user"]
    if not users:
        raise InvalidRequest("messages has no user message: send one with an image_url part", param="messages")
    index = users[-1]
    parts = messages[index].parts()
    images = [(j, part) for j, part in enumerate(parts) if isinstance(part, ImagePart)]
    param = f"messages[{index}].content"
    if not images:
        raise InvalidRequest(
            f"{param}: the served model needs an image: put one image_url part (a data URL) in the last user "
            "message, alone for its caption or with a text part for the answer to that question",
            param=param,
        )
    if len(images) > 1:
        raise InvalidRequest(f"{param}: one image per request; this message has {len(images)}", param=param)
    question = " ".join(part.text.strip() for part in parts if isinstance(part, TextPart) and part.text.strip())
    if len(question) > settings.max_question_chars:
        raise RequestValidationError(
            [
                {
                    "type": "string_too_long",
                    "loc": ("body", "messages", index, "content"),
                    "msg": f"the question is {len(question)} characters long; the limit is "
                    f"{settings.max_question_chars}",
                }
            ]
        )
    j, image = images[0]
    return Turn(image.image_url.url, f"{param}[{j}].image_url.url", question or None)


def _check_model(serving: Serving, model: str, task: Task) -> None:
    """404 for a model not served here; 400 for a served one that does not do this request's task."""
    served = {serving.model_name(t) for t in ("caption", "vqa") if serving.serves(t)}
    if model not in served:
        names = " or ".join(sorted(served)) or "none"
        raise ModelNotFound(f"the model {model!r} is not served here for chat completions; use {names}")
    if model != serving.model_name(task):
        kind = "answers questions" if task == "vqa" else "writes captions"
        raise UnsupportedParameter(
            f"the model {model!r} does not do this request; {serving.model_name(task)} {kind} here", param="model"
        )


def _whole(completion: Completion, generated: Generation) -> dict[str, Any]:
    text, stopped = cut_at_stop(generated.text, completion.stops)
    reason = "stop" if stopped else completion.finish_reason(generated.finish_reason, generated.tokens)
    body = ChatCompletion(
        id=completion.id,
        created=completion.created,
        model=completion.model,
        choices=[Choice(message=ChatMessage(content=text), finish_reason=reason)],  # type: ignore[arg-type]
        usage=CompletionUsage(**completion.usage(generated.tokens)),
    )
    return body.model_dump()


def _chunk(completion: Completion, delta: dict[str, Any], reason: str | None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
    return _data(_chunk_body(completion, [choice], None))


def _chunk_body(completion: Completion, choices: list[dict[str, Any]], usage: dict[str, int] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion.id,
        "object": "chat.completion.chunk",
        "created": completion.created,
        "model": completion.model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if completion.include_usage:
        body["usage"] = usage
    return body


def _data(body: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _chunks(completion: Completion, stream: Stream[TextUpdate[Generation]]) -> AsyncIterator[bytes]:
    """The role delta, content deltas as they decode (stop strings held back), the finish, usage, [DONE].

    A stop string ends the stream early: finishing it drops the sequence, so its decoding stops.
    """
    scanner = StopScanner(completion.stops)
    try:
        yield _chunk(completion, {"role": "assistant", "content": ""}, None)
        async for update in stream:
            text = scanner.feed(update.delta) if update.delta else ""
            if scanner.stopped or update.done:
                text += scanner.flush()
            if text:
                yield _chunk(completion, {"content": text}, None)
            if scanner.stopped or update.done:
                break
        stream.finish()
        tokens = update.done.tokens if update.done else 0
        said = update.done.finish_reason if update.done else None
        reason = "stop" if scanner.stopped else completion.finish_reason(said, tokens)
        yield _chunk(completion, {}, reason)
        if completion.include_usage:
            yield _data(_chunk_body(completion, [], completion.usage(tokens)))
        yield b"data: [DONE]\n\n"
    except Exception as e:
        error, status = stream_error(e), e.status_code if isinstance(e, ServiceError) else 500
        body = {"message": error["message"], "type": openai_type(status), "param": None, "code": error["type"]}
        yield _data({"error": body})
