"""A plain FastAPI app calling the model once per request, the way a first version usually looks.

Handlers are sync (`def`), so FastAPI runs them in its thread pool; a lock lets one call into the model
at a time (the tokenizer is not safe to call from several threads at once). No batching.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from pydantic import BaseModel

from bench.peers.common import (
    DEFAULT_MAX_NEW_TOKENS,
    EchoRequestId,
    arguments,
    caption_response,
    decode_image,
    embed_response,
    load,
)


class EmbedBody(BaseModel):
    input: str


class CaptionBody(BaseModel):
    image: str
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS


def create_app(device: str) -> FastAPI:
    lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.model = load(device)
        yield

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(EchoRequestId)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/embed")
    def embed(body: EmbedBody, request: Request) -> dict[str, Any]:
        model = request.app.state.model
        with lock:
            vector = model.embed_text([body.input])[0].tolist()
        return embed_response(model, vector)

    @app.post("/caption")
    def caption(body: CaptionBody, request: Request) -> dict[str, Any]:
        model = request.app.state.model
        image = decode_image(body.image)
        with lock:
            text = model.caption([image], body.max_new_tokens)[0]
        return caption_response(model, text)

    return app


if __name__ == "__main__":
    args = arguments(__doc__.split("\n")[0])
    uvicorn.run(create_app(args.device), host="127.0.0.1", port=args.port, log_level="warning")
