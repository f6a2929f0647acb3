"""GET /v1/models: the models this server serves, in OpenAI's list shape."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.openai.schemas import Model, ModelList
from service.routes.common import RuntimeDep

router = APIRouter()

TASK_ORDER = ("caption", "vqa", "embed_text", "embed_image", "transcribe", "text_to_image")


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request, runtime: RuntimeDep) -> ModelList:
    """The served models (one entry per distinct model, in task order: the model that captions first, a
    text-to-image generator last; `created` is when this server started)."""
    engine = runtime.ensure_ready()
    by_task: dict[str, str] = engine.describe()["models"]
    names = list(dict.fromkeys(by_task[task] for task in TASK_ORDER if task in by_task))
    created = int(request.app.state.started_at)
    return ModelList(data=[Model(id=name, created=created) for name in names])
