"""OpenAI-compatible routes under /v1: the models list, embeddings and audio transcriptions, in OpenAI's shapes and
error shape."""

from fastapi import APIRouter

from service.openai import embeddings, models, transcriptions
from service.openai.errors import OpenAIErrorShape

router = APIRouter(tags=["OpenAI-compatible"])
router.include_router(models.router)
router.include_router(embeddings.router)
router.include_router(transcriptions.router)

__all__ = ["OpenAIErrorShape", "router"]
