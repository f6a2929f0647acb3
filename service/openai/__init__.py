"""OpenAI-compatible routes under /v1: the models list, embeddings, chat completions, audio transcriptions and
image generations, in OpenAI's shapes and error shape."""

from fastapi import APIRouter

from service.openai import chat, embeddings, images, models, transcriptions
from service.openai.errors import OpenAIErrorShape
from service.openai.schemas import OpenAIErrorResponse

# Every /v1 route may answer these, in OpenAI's error shape (the middleware rewrites them all).
ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": OpenAIErrorResponse, "description": description}
    for status, description in {
        400: "A parameter mmserve does not support, or an input that cannot be decoded",
        401: "A missing or wrong API key (when keys are configured)",
        404: "The model is not served here",
        413: "The request body or an input is over a limit",
        415: "The content type, or an input's format, is not accepted",
        422: "A missing or malformed field, or a question the built-in model does not know (`question_not_understood`)",
        429: "The task's queue is full; retry after the Retry-After header's seconds",
        501: "The served model cannot do this task",
        503: "The model is still loading, or the server is shutting down",
        504: "The request did not complete within the request timeout",
    }.items()
}

router = APIRouter(tags=["OpenAI-compatible"], responses=ERRORS)
router.include_router(models.router)
router.include_router(embeddings.router)
router.include_router(chat.router)
router.include_router(transcriptions.router)
router.include_router(images.router)

__all__ = ["OpenAIErrorShape", "router"]
