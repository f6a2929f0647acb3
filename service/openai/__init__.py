"""OpenAI-compatible routes under /v1: models, embeddings, chat completions, in OpenAI's shapes and error shape."""

from fastapi import APIRouter

from service.openai import chat, embeddings, models
from service.openai.errors import OpenAIErrorShape

router = APIRouter(tags=["OpenAI-compatible"])
router.include_router(models.router)
router.include_router(embeddings.router)
router.include_router(chat.router)

__all__ = ["OpenAIErrorShape", "router"]
