"""The ingress that forwards requests to replicas (service.retrying_ingress) over `answer` (service.asgi_forward).

Replicas here are a small FastAPI app run through `answer`, as a Ray replica runs mmserve's; a replica
that dies raises `ReplicaLost` where Ray's handle raises ActorDiedError (service.ray_ingress maps one to the
other). The claim over a real cluster, with a replica's process SIGKILLed, is tests/deploy/test_ray_serve.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.asgi_forward import ForwardedRequest, ResponseStart, answer
from service.retrying_ingress import RETRIED_HEADER, ReplicaLost, RetryingIngress

MAX_UPLOAD_BYTES = 1000


def replica_app(gate: asyncio.Event) -> FastAPI:
    """/echo; /events: three token events, the last two once `gate` is set (so the first travels alone)."""
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        headers = {"X-Seen-Query": request.url.query}
        return JSONResponse({"body": body.decode(), "marker": request.headers.get("x-marker")}, headers=headers)

    @app.get("/events")
    async def events() -> StreamingResponse:
        async def tokens() -> AsyncIterator[bytes]:
            for index in range(3):
                yield f"event: token\ndata: {index}\n\n".encode()
                await gate.wait()

        return StreamingResponse(tokens(), media_type="text/event-stream")

    return app


class Replicas:
    """Tries in order: each either answers through the app, or is lost after `lost_after` parts (None: never)."""

    def __init__(self, *lost_after: int | None) -> None:
        self.gate = asyncio.Event()  # set once a part has gone to the ingress
        self.app = replica_app(self.gate)
        self.lost_after = list(lost_after)
        self.tries = 0

    async def send(self, request: ForwardedRequest) -> AsyncGenerator[ResponseStart | bytes, None]:
        lost_after = self.lost_after[self.tries] if self.tries < len(self.lost_after) else None
        self.tries += 1
        sent = 0
        async for part in answer(self.app, request):
            if sent == lost_after:
                raise ReplicaLost("the replica answering this request stopped; retry", 1)
            yield part
            sent += 1
            self.gate.set()
        if sent == lost_after:
            raise ReplicaLost("the replica answering this request stopped; retry", 1)


def client(replicas: Replicas) -> httpx.AsyncClient:
    ingress = RetryingIngress(replicas.send, MAX_UPLOAD_BYTES)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress), base_url="http://ingress")


async def post_echo(replicas: Replicas, path: str = "/echo") -> httpx.Response:
    async with client(replicas) as http:
        return await http.post(f"{path}?q=1", content=b"hello", headers={"X-Marker": "m"})


@pytest.mark.anyio
async def test_a_request_reaches_the_replica_whole_and_its_answer_comes_back_whole() -> None:
    replicas = Replicas(None)
    response = await post_echo(replicas)
    assert response.status_code == 200
    assert response.json() == {"body": "hello", "marker": "m"}
    assert response.headers["X-Seen-Query"] == "q=1"
    assert RETRIED_HEADER not in response.headers
    assert replicas.tries == 1


@pytest.mark.anyio
async def test_a_replica_lost_before_answering_is_retried_once_on_another() -> None:
    replicas = Replicas(0, None)
    response = await post_echo(replicas)
    assert response.status_code == 200, response.text
    assert response.json() == {"body": "hello", "marker": "m"}
    assert response.headers[RETRIED_HEADER] == "1"
    assert replicas.tries == 2


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/echo", "/v1/echo"])
async def test_two_lost_replicas_give_a_json_503_with_retry_after(path: str) -> None:
    replicas = Replicas(0, 0, None)
    response = await post_echo(replicas, path)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    error: dict[str, Any] = response.json()["error"]
    if path.startswith("/v1/"):  # OpenAI's shape, as the model app answers under /v1/
        assert error["type"] == "server_error" and error["code"] == "replica_lost"
    else:
        assert error["type"] == "replica_lost"
    assert replicas.tries == 2  # one retry, no more


@pytest.mark.anyio
async def test_a_stream_is_retried_only_until_its_first_event_is_sent() -> None:
    async with client(Replicas(0, None)) as http:
        retried = await http.get("/events")
    assert retried.headers[RETRIED_HEADER] == "1"
    assert retried.text == "".join(f"event: token\ndata: {i}\n\n" for i in range(3))

    replicas = Replicas(1, None)  # lost after its first part (status and first event) was sent
    async with client(replicas) as http:
        cut = await http.get("/events")
    assert cut.status_code == 200 and replicas.tries == 1
    first, rest = cut.text.split("\n\n", 1)
    assert first == "event: token\ndata: 0"
    assert rest.startswith("event: error\ndata: ") and '"type":"replica_lost"' in rest


@pytest.mark.anyio
async def test_a_body_over_the_upload_limit_is_refused_before_it_is_forwarded() -> None:
    replicas = Replicas(None)
    async with client(replicas) as http:
        response = await http.post("/echo", content=b"x" * (2 * MAX_UPLOAD_BYTES + 70_000))
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"
    assert replicas.tries == 0
