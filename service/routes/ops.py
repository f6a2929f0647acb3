"""Operations endpoints: readiness, liveness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.routes.common import RuntimeDep
from service.runtime import State
from service.schemas import HealthResponse

router = APIRouter()


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "loading, draining or unhealthy"}},
)
async def health(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: 200 only when the models are loaded and warmed up, the inference thread runs, and the
    device answers (a tiny computation on it, checked at most every few seconds)."""
    await runtime.check_device()
    state = runtime.state
    engine = runtime.engine
    body = HealthResponse(
        status=state.value,
        tasks=sorted(engine.tasks) if engine else [],
        queues={task: batcher.pending() for task, batcher in runtime.batchers.items()},
        **(engine.describe() if engine else {}),
    )
    return JSONResponse(body.model_dump(), status_code=200 if state is State.OK else 503)


@router.get(
    "/health/live",
    responses={503: {"description": "the model load, the inference thread or the device failed, or it is stuck"}},
)
async def live(runtime: RuntimeDep) -> JSONResponse:
    """Liveness: 200 while the process can still serve (also while loading); 503 once it never will."""
    unhealthy = runtime.state is State.UNHEALTHY
    return JSONResponse({"status": "unhealthy" if unhealthy else "alive"}, status_code=503 if unhealthy else 200)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
