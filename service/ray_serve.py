"""mmserve as a Ray Serve application: the same FastAPI app, one mmserve runtime per replica.

    serve run service.ray_serve:build_app model=builtin device=cpu     # one node, for a try
    serve deploy deploy/ray/serve.yaml                                 # a running cluster (docs/scaling.md)

`build_app` is a Ray Serve application builder: its arguments are mmserve settings (the names of
`service.settings.Settings`; anything not given comes from `MMSERVE_*` in the replica's environment, e.g.
the serve config's `runtime_env.env_vars`). Each replica builds the app with `create_app` and so has its
own model and inference thread; Ray's proxy spreads requests over the replicas. A request takes the same
way through a replica as through `mmserve serve`: a route parses it, the serving layer (`service.serving`)
runs its life (admission, preparation, the answer or the stream, its metrics), the route formats it.

What mmserve promises holds through Ray because of three things done here:
- readiness: Ray runs the app's lifespan at replica start-up; this wraps it to return only once the model
  is loaded and warmed up (`/health` 200), so the proxy never routes to a loading replica, and a failed
  load fails the replica's start (Ray retries it);
- health: `check_health` reports a dead inference thread, and Ray replaces the replica;
- drain: on replica shutdown Ray stops routing to it, waits for its ongoing requests, then runs the
  lifespan's end, which drains mmserve's queues (`graceful_shutdown_timeout_s` leaves room for that).
Overload is a 429 with `Retry-After`, from mmserve's own queues or from Ray's bounded queue in front of
the replicas (`max_queued_requests`), never an unbounded queue in the proxy.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.config import BackpressureConfig

from service.app import create_app
from service.asgi_forward import ForwardedRequest, ResponseStart, answer
from service.middleware import REQUEST_ID_HEADER
from service.ray_ingress import Ingress
from service.runtime import Runtime, State
from service.settings import Settings

# A replica may take this many requests at once: enough to fill mmserve's batches, and no more, so that
# a busy replica's excess waits in Ray's queue where the router can give it to an idle replica.
MAX_ONGOING_REQUESTS = 64
# Requests waiting in each proxy for a replica slot; beyond this the proxy answers 429 at once.
MAX_QUEUED_REQUESTS = 256
# Longer than mmserve's drain (`request_timeout_s`, 30 s by default) plus the inference thread's join.
GRACEFUL_SHUTDOWN_TIMEOUT_S = 45.0
READY_POLL_S = 0.05
REPLICA_HEADER = "X-MMServe-Replica"


def until_ready(app: FastAPI) -> None:
    """Make the app's lifespan start-up return only once its runtime serves (raise if loading failed)."""
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with started(app) as state:
            runtime: Runtime = app.state.runtime
            while runtime.state is State.LOADING:
                await asyncio.sleep(READY_POLL_S)
            if runtime.state is not State.OK:
                raise RuntimeError(f"mmserve did not become ready: {runtime.state}")
            yield state

    app.router.lifespan_context = lifespan


@serve.deployment(
    name="mmserve",
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    max_queued_requests=MAX_QUEUED_REQUESTS,
    backpressure_config=BackpressureConfig(status_code=429, retry_after_s=1),
    graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_TIMEOUT_S,
    health_check_period_s=5,
)
@serve.ingress()
class MMServe:
    """One replica: one mmserve app (model, batchers, inference thread), built on the replica."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        # Ray replaces a replica whose health check fails (check_health): its process is Ray's, not to exit.
        self.settings = Settings(**{"exit_on_failure": False, **(settings or {})})

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self.settings)
        until_ready(app)
        replica = f"{serve.get_replica_context().replica_id.unique_id}@{os.getpid()}"

        @app.middleware("http")
        async def name_the_replica(request: Any, call_next: Any) -> Any:
            response = await call_next(request)
            response.headers[REPLICA_HEADER] = replica  # which replica answered: for operators and tests
            # Ray's proxy passes its request id (the client's, if it sent one) to the app, which uses it, and
            # puts it on the response itself: without this the header would come twice.
            if REQUEST_ID_HEADER in response.headers:
                del response.headers[REQUEST_ID_HEADER]
            return response

        return app

    async def forward(self, request: ForwardedRequest) -> AsyncIterator[ResponseStart | bytes]:
        """One HTTP request from the ingress, answered by this replica's app: the response in parts."""
        async for part in answer(self.app, request):  # type: ignore[attr-defined]  # the built app, as below
            yield part

    def check_health(self) -> None:
        """Ray's periodic health check: a replica whose inference thread died is replaced."""
        app: FastAPI = self.app  # type: ignore[attr-defined]  # Ray's ingress wrapper holds the built app
        runtime: Runtime | None = getattr(app.state, "runtime", None)
        if runtime is not None and runtime.state is State.UNHEALTHY:
            raise RuntimeError("mmserve is unhealthy: the inference thread or the model load failed")


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Ray Serve application: `args` are mmserve settings (`model`, `device`, `caption_max_batch_size` ...).

    HTTP enters through the `ingress` deployment (service.ray_ingress), which forwards each request to the
    `mmserve` deployment and retries it once if its replica dies. Replica count, resources and autoscaling
    come from the serve config's `deployments:` entries; without them, one replica of each (`mmserve` with
    one CPU, `ingress` with none).
    """
    settings = dict(args)
    Settings(**settings)  # refuse bad settings here, before any replica starts
    model = MMServe.bind(settings)  # type: ignore[attr-defined]  # added by @serve.deployment
    application: serve.Application = Ingress.bind(model, settings)  # type: ignore[attr-defined]
    return application
