"""The ingress deployment of mmserve's Ray Serve application: every HTTP request to a model replica, retried.

Ray's proxy answers a bare plain-text 500 for a request whose replica dies under it (it cannot know that
the request may be sent again). So the application's ingress is this light deployment, not the model's:
it holds no model and reserves no CPU, as Ray's proxy does not, and serves `RetryingIngress`, which sends
each request to the `mmserve` deployment through a DeploymentHandle (`MMServe.forward`, streamed) and
retries it once on another replica when Ray reports the first one lost. Ray's handle stops routing to a
replica it has seen die, so the retry goes elsewhere. Ray's errors become mmserve's: a lost replica is
`ReplicaLost` (503 after the retry), a full handle queue (`max_queued_requests`) the configured 429 with
`Retry-After`, an unavailable deployment `NotReady` (503).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

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


@serve.deployment(
    name="ingress",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
    max_queued_requests=INGRESS_MAX_QUEUED_REQUESTS,
)
@serve.ingress()
class Ingress:
    """The HTTP front of the application: forwards to the `mmserve` deployment, retrying a lost replica once."""

    def __init__(self, mmserve: DeploymentHandle[Any], settings: dict[str, Any] | None = None) -> None:
        self._mmserve = mmserve.options(method_name="forward", stream=True)
        self._settings = Settings(**(settings or {}))

    def __serve_build_asgi_app__(self) -> RetryingIngress:
        audio = {path: self._settings.max_audio_upload_bytes for path in AUDIO_UPLOAD_PATHS}
        return RetryingIngress(self.send_to_replica, self._settings.max_upload_bytes, larger=audio)

    async def send_to_replica(self, request: ForwardedRequest) -> AsyncGenerator[ResponseStart | bytes, None]:
        """`request` answered by a model replica, in parts; Ray's errors raised as mmserve's."""
        response: DeploymentResponseGenerator[ResponseStart | bytes] | None = None
        finished = False
        try:
            call = self._mmserve.remote(request)
            assert isinstance(call, DeploymentResponseGenerator)  # stream=True
            response = call
            async for part in response:
                yield part
            finished = True
        except LOST as e:
            raise ReplicaLost("the replica answering this request stopped; retry", RETRY_AFTER_S) from e
        except BackPressureError as e:
            busy = "every replica is busy and the queue in front of them is full; retry"
            error = QueueFull if e.status_code == QueueFull.status_code else NotReady
            raise error(busy, e.retry_after_s) from e
        except DeploymentUnavailableError as e:
            raise NotReady("no model replica is available; retry", RETRY_AFTER_S) from e
        finally:
            if response is not None and not finished:
                response.cancel()  # type: ignore[no-untyped-call]  # the client left, or the answer failed: the replica stops working on it
