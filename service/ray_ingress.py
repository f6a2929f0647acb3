"""The ingress deployment of mmserve's Ray Serve application: every HTTP request to a model replica, retried.

Ray's proxy answers a bare plain-text 500 for a request whose replica dies under it (it cannot know that
the request may be sent again). So the application's ingress is this light deployment, not the model's:
it holds no model and reserves no CPU, as Ray's proxy does not, and serves `RetryingIngress`, which sends
each request to the `mmserve` deployment through a DeploymentHandle (`MMServe.forward`, streamed) and
retries it once on another replica when Ray reports the first one lost. Ray's handle stops routing to a
replica it has seen die, so the retry goes elsewhere. Ray's errors become mmserve's: a lost replica is
`ReplicaLost` (503 after the retry), a full handle queue (`max_queued_requests`) the configured 429 with
`Retry-After`, an unavailable deployment `NotReady` (503).

Ray allows one `@serve.ingress` deployment per application, and `mmserve` is one (Ray runs its app's
lifespan); so this one answers through `__call__`, returning an ASGI app as its response, which Ray runs
with the request's own scope, receive and send: the body is read there, and the answer streams out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.app import AUDIO_UPLOAD_PATHS
from service.asgi_forward import ForwardedRequest, ResponseStart
from service.errors import NotReady, QueueFull
from service.retrying_ingress import RETRY_AFTER_S, ReplicaLost, RetryingIngress
from service.settings import Settings

# A request holds an ingress slot for its whole life: above every replica's `max_ongoing_requests` plus the
# handle's `max_queued_requests`, so that the model deployment's own limits are the ones that bind.
INGRESS_MAX_ONGOING_REQUESTS = 2048
INGRESS_MAX_QUEUED_REQUESTS = 256
# RayActorError covers ActorDiedError (the replica's process is gone) and ActorUnavailableError (cannot be
# reached); ReplicaUnavailableError: Ray picked a replica that has since left.
LOST = (RayActorError, ReplicaUnavailableError)


class AsASGI(Response):
    """An ASGI app returned as a response: Ray answers an HTTP request by calling the response it gets."""

    def __init__(self, app: ASGIApp) -> None:  # Response's own fields are never set: only __call__ is used
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@serve.deployment(
    name="ingress",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
    max_queued_requests=INGRESS_MAX_QUEUED_REQUESTS,
)
class Ingress:
    """The HTTP front of the application: forwards to the `mmserve` deployment, retrying a lost replica once."""

    def __init__(self, mmserve: DeploymentHandle[Any], settings: dict[str, Any] | None = None) -> None:
        self._mmserve = mmserve.options(method_name="forward", stream=True)
        settings_obj = Settings(**(settings or {}))
        audio = {path: settings_obj.max_audio_upload_bytes for path in AUDIO_UPLOAD_PATHS}
        self._app = AsASGI(RetryingIngress(self.send_to_replica, settings_obj.max_upload_bytes, larger=audio))

    async def __call__(self, request: Request) -> Response:
        """Every HTTP request: its body is still unread; the returned app reads it and answers."""
        return self._app

    async def send_to_replica(self, request: ForwardedRequest) -> AsyncGenerator[ResponseStart | bytes, None]:
        """`request` answered by a model replica, in parts; Ray's errors raised as mmserve's."""
        response: DeploymentResponseGenerator[ResponseStart | bytes] | None = None
        try:
            call = self._mmserve.remote(request)
            assert isinstance(call, DeploymentResponseGenerator)  # stream=True
            response = call
            async for part in response:
                yield part
        except LOST as e:
            raise ReplicaLost("the replica answering this request stopped; retry", RETRY_AFTER_S) from e
        except BackPressureError as e:
            busy = "every replica is busy and the queue in front of them is full; retry"
            error = QueueFull if e.status_code == QueueFull.status_code else NotReady
            raise error(busy, e.retry_after_s) from e
        except DeploymentUnavailableError as e:
            raise NotReady("no model replica is available; retry", RETRY_AFTER_S) from e
        except (GeneratorExit, asyncio.CancelledError):  # closed early (the client left): the replica stops too
            if response is not None:
                with contextlib.suppress(Exception):  # a request that failed meanwhile raises its error here
                    response.cancel()  # type: ignore[no-untyped-call]
            raise
