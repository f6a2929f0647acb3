"""API keys: `Authorization: Bearer <key>` on every route but the open ones, compared in constant time.

Off unless keys are configured (`MMSERVE_API_KEYS`, `MMSERVE_API_KEYS_FILE`). The API documentation is
always open (its pages and their files under /docs/assets/), and so is the playground page (`/` and its
files under /static/): they hold no data, and their requests send the key typed into them; /health,
/health/live and /metrics are open unless `MMSERVE_PROTECT_HEALTH` is set (load balancers and Prometheus
usually call them without credentials). A missing or wrong key gets 401 with `WWW-Authenticate: Bearer`
(RFC 6750). Keys are kept only as SHA-256 digests and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ServiceError, error_response

DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
HEALTH_PATHS = frozenset({"/health", "/health/live", "/metrics"})
PLAYGROUND_PATH = "/"
PLAYGROUND_FILES = "/static/"
DOCS_FILES = "/docs/assets/"
OPEN_PREFIXES = (PLAYGROUND_FILES, DOCS_FILES)  # static files: no data in them


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "invalid_api_key"


class ApiKeyAuth:
    """Refuse requests without one of the configured keys (401)."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], protect_health: bool = False) -> None:
        if not keys:
            raise ValueError("ApiKeyAuth needs at least one key")
        self.app = app
        # Digests: equal lengths, so the comparison time does not depend on the key's length either.
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]
        self._open = {PLAYGROUND_PATH} | DOCS_PATHS | (frozenset() if protect_health else HEALTH_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open or scope["path"].startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            refusal = Unauthorized(
                "missing API key: send the header 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": 'Bearer realm="mmserve"'},
            )
        elif not self._known(token.strip()):
            refusal = Unauthorized(
                "invalid API key",
                headers={"WWW-Authenticate": 'Bearer realm="mmserve", error="invalid_token"'},
            )
        else:
            await self.app(scope, receive, send)
            return
        await error_response(refusal)(scope, receive, send)

    def _known(self, token: str) -> bool:
        given = hashlib.sha256(token.encode()).digest()
        found = False
        for digest in self._digests:  # every key is compared: no early exit
            found |= hmac.compare_digest(digest, given)
        return found
