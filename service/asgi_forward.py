"""An HTTP request carried as a plain object to another process, and answered there by an ASGI app.

Ray Serve's ingress (service.ray_ingress) reads a request's body, sends it to a model replica as a
`ForwardedRequest` (a handle call), and the replica runs it through its own mmserve app with `answer`,
which yields the response back in parts: first a `ResponseStart` (status, headers and the first body
chunk, so that a stream's first event travels with its status), then the rest of the body, chunk by
chunk (those already waiting joined into one). Nothing here knows Ray.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Scope

from service.errors import json_error

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class ForwardedRequest:
    """What an ASGI app needs of one HTTP request: its scope's fields and its whole body."""

    method: str
    path: str
    query_string: bytes
    headers: Headers
    body: bytes
    scheme: str = "http"
    http_version: str = "1.1"
    root_path: str = ""
    client: tuple[str, int] | None = None
    server: tuple[str, int] | None = None

    @classmethod
    def of(cls, scope: Scope, body: bytes) -> ForwardedRequest:
        """The request of an HTTP scope (its body read already)."""
        client, server = scope.get("client"), scope.get("server")
        return cls(
            method=scope["method"],
            path=scope["path"],
            query_string=scope.get("query_string", b""),
            headers=[(bytes(name), bytes(value)) for name, value in scope["headers"]],
            body=body,
            scheme=scope.get("scheme", "http"),
            http_version=scope.get("http_version", "1.1"),
            root_path=scope.get("root_path", ""),
            client=(client[0], client[1]) if client else None,
            server=(server[0], server[1] or 0) if server else None,
        )

    def scope(self) -> Scope:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.http_version,
            "method": self.method,
            "scheme": self.scheme,
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": self.root_path,
            "query_string": self.query_string,
            "headers": list(self.headers),
            "client": self.client,
            "server": self.server,
            "state": {},
        }


@dataclass(frozen=True)
class ResponseStart:
    """A response's status and headers with its first body chunk (the whole body unless `more_body`)."""

    status: int
    headers: Headers
    body: bytes
    more_body: bool = False


async def answer(app: ASGIApp, request: ForwardedRequest) -> AsyncIterator[ResponseStart | bytes]:
    """Run `request` through `app`: its `ResponseStart`, then the rest of its body in chunks.

    Closing the generator early (its caller left) cancels the app's handling, as a client's disconnect does.
    """
    messages: asyncio.Queue[Message | None] = asyncio.Queue()  # None: the app has returned
    finished = asyncio.Event()
    body_given = False

    async def receive() -> Message:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await finished.wait()  # a disconnect, once nobody reads the response any more
        return {"type": "http.disconnect"}

    async def run() -> None:
        try:
            await app(request.scope(), receive, messages.put)
        finally:
            messages.put_nowait(None)

    task = asyncio.create_task(run())
    try:
        start = await messages.get()
        if start is None or start["type"] != "http.response.start":
            yield _no_response(request)
            return
        chunk, more_body = await _body(messages)
        headers = [(bytes(name), bytes(value)) for name, value in start.get("headers", [])]
        yield ResponseStart(start["status"], headers, chunk, more_body)
        while more_body:
            chunk, more_body = await _body(messages)
            if chunk:
                yield chunk
    finally:
        finished.set()
        if not task.done():
            task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            logger.error("a forwarded request failed", exc_info=task.exception())


async def _body(messages: asyncio.Queue[Message | None]) -> tuple[bytes, bool]:
    """The next body chunk (with every one already waiting) and whether more follows."""
    chunks: list[bytes] = []
    message = await messages.get()
    while True:
        if message is None:  # the app returned without ending its body
            return b"".join(chunks), False
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks), False
        if messages.empty():
            return b"".join(chunks), True
        message = messages.get_nowait()


def _no_response(request: ForwardedRequest) -> ResponseStart:
    logger.error("the app sent no response to %s %s", request.method, request.path)
    response = json_error(500, "internal_error", "internal server error")
    return ResponseStart(response.status_code, response.raw_headers, bytes(response.body))
