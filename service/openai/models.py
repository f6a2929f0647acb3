"""GET /v1/models: the models this server serves, in OpenAI's list shape."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.openai.schemas import Model, ModelList
from service.routes.common import RuntimeDep

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request, runtime: RuntimeDep) -> ModelList:
    """The served models (one entry per distinct model; `created` is when this server started)."""
    engine = runtime.ensure_ready()
    names = sorted(set(engine.describe()["models"].values()))
    created = int(request.app.state.started_at)
    return ModelList(data=[Model(id=name, created=created) for name in names])
