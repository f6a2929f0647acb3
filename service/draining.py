"""Draining on SIGTERM without closing a connection under a request the client has already sent.

uvicorn's own shutdown closes the listener and every idle keep-alive connection at once. A client may have
written its next request on such a connection a moment before: the server closes it unread and the client
sees the connection drop under a sent request (httpx `ReadError`), not knowing whether it was taken.

So on the first SIGTERM/SIGINT `DrainingServer` only starts draining: for `MMSERVE_DRAIN_GRACE_S` the
listener and the open connections stay, the runtime admits nothing new (503, `Retry-After`), and every
response carries `Connection: close` (`CloseWhenClosing`), so each client's next request is answered and its
connection then closed by the server, after the response. When the grace is over (or as soon as no
connection is open) uvicorn's shutdown runs: requests in flight are finished, then the lifespan drains the
runtime. A second signal stops at once, as plain uvicorn does. Kubernetes' preStop sleep and the
Service's endpoint removal happen before SIGTERM; the grace covers the clients that have not noticed yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn, draining for `grace_s` after SIGTERM/SIGINT before its own shutdown starts."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None], grace_s: float) -> None:
        super().__init__(config)
        self._on_exit = on_exit  # tells the app to stop admitting
        self._grace_s = grace_s
        self._draining_since: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler (on the event loop's thread, between two of its steps)."""
        self._on_exit()
        first = not self.should_exit and self._draining_since is None
        super().handle_exit(sig, frame)  # records the signal (re-raised after shutdown), sets should_exit
        if first and self._grace_s > 0:
            self.should_exit = False  # not yet: on_tick ends the grace
            self._draining_since = time.monotonic()
            logger.info("draining: refusing new requests for up to %g s, then stopping", self._grace_s)
        elif self._draining_since is not None:
            self.should_exit = True  # a second signal: stop now

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick (every 0.1 s): the grace ends after `grace_s`, or once no connection is open."""
        if self._draining_since is not None and not self.should_exit:
            over = time.monotonic() - self._draining_since >= self._grace_s
            if over or not self.server_state.connections:
                self.should_exit = True
        return await super().on_tick(counter)


class CloseWhenClosing:
    """`Connection: close` on every response while `closing()` (draining, or about to exit)."""

    def __init__(self, app: ASGIApp, closing: Callable[[], bool]) -> None:
        self.app = app
        self.closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.closing():
                MutableHeaders(scope=message)["connection"] = "close"
            await send(message)

        await self.app(scope, receive, send_closing)
