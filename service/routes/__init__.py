"""The HTTP routes: inference tasks and operations."""

from fastapi import APIRouter

from service.routes import ops, tasks

router = APIRouter()
router.include_router(tasks.router)
router.include_router(ops.router)

__all__ = ["router"]
