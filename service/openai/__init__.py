"""OpenAI-compatible routes under /v1: the models list and embeddings, in OpenAI's shapes and error shape."""

from fastapi import APIRouter

from service.openai import embeddings, models
from service.openai.errors import OpenAIErrorShape

router = APIRouter(tags=["OpenAI-compatible"])
router.include_router(models.router)
router.include_router(embeddings.router)

__all__ = ["OpenAIErrorShape", "router"]
