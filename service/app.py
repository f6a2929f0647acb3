"""The application factory: settings in, a FastAPI app out, with its lifespan.

The lifespan starts the runtime (the inference thread loads and warms up the models while /health
answers 503 "loading"), and on shutdown stops admitting (503 "draining"), lets every accepted request
finish, and stops the inference thread. While draining, or about to exit after a fatal failure, every
response closes its connection (service.draining).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from PIL import Image
from starlette.middleware.cors import CORSMiddleware

from service import openai
from service.api_docs import install_api_docs
from service.auth import ApiKeyAuth
from service.draining import CloseWhenClosing
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import BodySizeLimit, RequestContext
from service.openapi import install_openapi
from service.playground import install_playground
from service.routes import router
from service.runtime import Runtime
from service.settings import Settings

# The transcription routes take one audio file of up to `max_audio_upload_bytes` (a long recording).
AUDIO_UPLOAD_PATHS = ("/transcribe", "/v1/audio/transcriptions")

logger = logging.getLogger(__name__)

DESCRIPTION = """Captions, visual question answering and text/image embeddings in one space,
with dynamic batching. Images go as a multipart file field `image`, or base64 in JSON."""


def _bound_onednn_cache() -> None:
    """Keep oneDNN's CPU kernel cache small (unless the environment sets it), before the model's first call.

    oneDNN builds a kernel for every new input shape and keeps up to 1,024 of them. Images have one shape,
    but each audio length is a new shape for the audio tower's convolutions: over a soak the resident memory
    grew 10 MB a minute (+12.8% in 10 minutes). With 64 kernels kept it levels off; the variable is read at
    the first kernel, so setting it here, before the model runs, is enough.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; `settings=None` reads them from the environment now."""
    settings = settings or Settings()
    _configure_pillow(settings)
    _bound_onednn_cache()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, Metrics())
        app.state.runtime = runtime
        runtime.start()
        try:
            yield
        finally:
            logger.info("draining: finishing accepted requests")
            await runtime.drain(timeout_s=settings.request_timeout_s)
            logger.info("stopped")

    # The API docs are ours (service/api_docs.py): FastAPI's load Swagger UI and ReDoc from a CDN.
    app = FastAPI(
        title="mmserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.settings = settings
    app.state.started_at = time.time()
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(openai.router)
    if settings.fault_injection:
        from service import fault_injection

        app.include_router(fault_injection.router)
        logger.warning("fault injection is on (MMSERVE_FAULT_INJECTION): POST /faults/* breaks this server")
    install_openapi(app, settings)
    install_api_docs(app)
    install_playground(app)
    # Middleware, innermost first: the body limit, API keys (a refusal reads no body), CORS (its headers
    # on refusals too, so a browser can read them), request ids and log lines, OpenAI's error shape on /v1.
    audio = {path: settings.max_audio_upload_bytes for path in AUDIO_UPLOAD_PATHS}
    app.add_middleware(BodySizeLimit, max_upload_bytes=settings.max_upload_bytes, larger=audio)
    keys = settings.api_key_list()
    if keys:
        app.add_middleware(ApiKeyAuth, keys=keys, protect_health=settings.protect_health)
    origins = settings.cors_origin_list()
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestContext)  # its request id is on every response, errors included
    app.add_middleware(CloseWhenClosing, closing=lambda: _closing(app))
    app.add_middleware(openai.OpenAIErrorShape)  # outermost: rewrites every error under /v1/, the 500 too
    return app


def _closing(app: FastAPI) -> bool:
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    return runtime is not None and runtime.closing


def _configure_pillow(settings: Settings) -> None:
    """Keep Pillow's own decompression-bomb guard on, in line with our limit (which we check first).

    Pillow warns above `MAX_IMAGE_PIXELS` and refuses above twice that; our check refuses anything over
    `max_image_pixels` from the header, so the warning would only repeat it. The guard stays a backstop
    for any code path that opens an image without our check. It is process-wide, so take the largest.
    """
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, settings.max_image_pixels)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
