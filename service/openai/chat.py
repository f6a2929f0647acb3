"""POST /v1/chat/completions: OpenAI's chat API over the caption and vqa queues, whole or streamed.

The served models answer about one image, so a conversation maps to one generation: the last user
message's image alone asks for its caption; its image and text ask the text as a question about it
(a Hugging Face VLM renders that turn through its own chat template). Earlier turns and system messages
are not seen by the model. Decoding is greedy; sampling parameters other than the neutral ones are
refused by name. `stop` strings cut the text (held back while streaming until they cannot match).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse

from model import Task
from model.api import Update
from service.engine import Engine, Generated
from service.errors import InvalidImage, ServiceError
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
from service.routes.common import RuntimeDep, before_deadline, disconnect_waiter, json_body, observe, timings
from service.routes.streaming import first_update
from service.runtime import Runtime
from service.settings import Settings
from service.uploads import read_json_body

logger = logging.getLogger(__name__)

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


@dataclass
class Completion:
    """One request's identity and limits, shared by the whole answer and the streamed chunks."""

    id: str
    created: int
    model: str
    stops: list[str]
    limit: int
    prompt_tokens: int

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
async def create_chat_completion(request: Request, runtime: RuntimeDep) -> Response:
    """A caption or an answer about the last user message's image, in OpenAI's chat shapes (streamed or whole)."""
    async with observe(runtime, "caption") as record:
        engine = runtime.ensure_ready()
        async with before_deadline(record):
            body = await read_json_body(
                request, ChatCompletionRequest, runtime.settings, "images go in the messages as data URLs"
            )
        if (refused := body.unsupported()) is not None:
            name, why = refused
            raise UnsupportedParameter(f"{name} is not supported: {why}", param=name)
        turn = read_turn(body.messages, runtime.settings)
        record.task = turn.task
        _check_model(runtime, engine, body.model, turn.task)
        completion = Completion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=body.model,
            stops=body.stops(),
            limit=_limit(body, turn.task, runtime.settings),
            prompt_tokens=engine.prompt_tokens(turn.task, turn.question),
        )
        with runtime.admit(turn.task) as slot:
            async with before_deadline(record):
                data = await image_bytes(turn.url, turn.param, runtime.settings)
                started = time.monotonic()
                try:
                    payload = await runtime.prepare_generation(
                        turn.task, data, question=turn.question, max_new_tokens=completion.limit
                    )
                except InvalidImage as e:
                    raise InvalidImage(f"{turn.param}: {e.message}", param=turn.param) from e
                record.decode_s = time.monotonic() - started
            sink = runtime.stream_sink() if body.stream else None
            item = slot.submit(payload, record.deadline, sink[1] if sink else None)
        if sink is None:
            [generated] = await runtime.wait([item], record.deadline, disconnect_waiter(request))
            timings(record, [item])
            return Response(orjson.dumps(_whole(completion, generated)), media_type="application/json")
        updates = runtime.stream(item, sink[0], record.deadline)
        first = await first_update(updates, disconnect_waiter(request))  # errors so far keep their status
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = _chunks(completion, first, updates, include_usage, lambda: timings(record, [item]))
        return StreamingResponse(
            chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )


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


def _check_model(runtime: Runtime, engine: Engine, model: str, task: Task) -> None:
    """404 for a model not served here; 400 for a served one that does not do this request's task."""
    served = {runtime.model_name(t) for t in ("caption", "vqa") if t in engine.tasks}
    if model not in served:
        names = " or ".join(sorted(served)) or "none"
        raise ModelNotFound(f"the model {model!r} is not served here for chat completions; use {names}")
    if model != runtime.model_name(task):
        kind = "answers questions" if task == "vqa" else "writes captions"
        raise UnsupportedParameter(
            f"the model {model!r} does not do this request; {runtime.model_name(task)} {kind} here", param="model"
        )


def _limit(body: ChatCompletionRequest, task: Task, settings: Settings) -> int:
    """The tokens to generate at most: what was asked, capped at the server's limit for the task."""
    asked = body.max_completion_tokens or body.max_tokens
    if task == "vqa":
        return min(asked or settings.vqa_max_new_tokens, settings.vqa_max_new_tokens)
    return min(asked or settings.default_max_new_tokens, settings.max_new_tokens_limit)


def _whole(completion: Completion, generated: Generated) -> dict[str, Any]:
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


def _chunk(completion: Completion, delta: dict[str, Any], reason: str | None, include_usage: bool) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
    return _data(_chunk_body(completion, [choice], None, include_usage))


def _chunk_body(
    completion: Completion, choices: list[dict[str, Any]], usage: dict[str, int] | None, include_usage: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion.id,
        "object": "chat.completion.chunk",
        "created": completion.created,
        "model": completion.model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if include_usage:
        body["usage"] = usage
    return body


def _data(body: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _chunks(
    completion: Completion,
    first: Update,
    updates: AsyncGenerator[Update],
    include_usage: bool,
    record_timings: Callable[[], object],
) -> AsyncIterator[bytes]:
    """The role delta, content deltas as they decode (stop strings held back), the finish, usage, [DONE].

    A stop string ends the stream early: closing `updates` drops the sequence, so its decoding stops.
    """
    scanner = StopScanner(completion.stops)
    update = first
    try:
        yield _chunk(completion, {"role": "assistant", "content": ""}, None, include_usage)
        while True:
            text = scanner.feed(update.delta) if update.delta else ""
            if scanner.stopped or update.finished:
                text += scanner.flush()
            if text:
                yield _chunk(completion, {"content": text}, None, include_usage)
            if scanner.stopped or update.finished:
                break
            update = await anext(updates)
        reason = "stop" if scanner.stopped else completion.finish_reason(update.finish_reason, update.tokens)
        yield _chunk(completion, {}, reason, include_usage)
        record_timings()
        if include_usage:
            yield _data(_chunk_body(completion, [], completion.usage(update.tokens), include_usage))
        yield b"data: [DONE]\n\n"
    except ServiceError as e:
        yield _data(_stream_error(e.status_code, e.error_type, e.message))
    except Exception:
        logger.exception("a streamed chat completion failed")
        yield _data(_stream_error(500, "internal_error", "internal server error"))
    finally:
        await updates.aclose()


def _stream_error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": openai_type(status), "param": None, "code": code}}
