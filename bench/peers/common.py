"""What both peer servers share: the model, the JSON shapes mmserve answers with, and an X-Request-ID echo.

The benchmark's Lua script matches each response to its request by the X-Request-ID header, which
mmserve echoes; the peers get the same few lines of pure ASGI middleware so they can be verified too.
"""

from __future__ import annotations

import argparse
import base64
import io
from typing import Any

from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model import MultimodalModel, load_model

DEFAULT_MAX_NEW_TOKENS = 32


class EchoRequestId:
    """Send back the request's X-Request-ID header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)

        async def send_with_id(message: Message) -> None:
            if request_id is not None and message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def load(device: str) -> MultimodalModel:
    return load_model("builtin", device=device)


def decode_image(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")


def embed_response(model: MultimodalModel, vector: list[float]) -> dict[str, Any]:
    return {"data": [{"index": 0, "embedding": vector}], "model": model.name, "dim": len(vector)}


def caption_response(model: MultimodalModel, caption: str) -> dict[str, Any]:
    return {"caption": caption, "model": model.name}


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()
