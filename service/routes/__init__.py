"""The HTTP routes: inference tasks (images, texts, audio) and operations."""

from fastapi import APIRouter

from service.routes import audio, images, ops, tasks

router = APIRouter()
router.include_router(tasks.router)
router.include_router(audio.router)
router.include_router(images.router)
router.include_router(ops.router)

__all__ = ["router"]
