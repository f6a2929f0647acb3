"""Fixtures for in-process service tests: a tiny random checkpoint, and apps driven through ASGITransport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import service.engine
from model import MultimodalModel
from service import Settings, create_app

Serve = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(scope="session")
def checkpoint(tiny_checkpoint_dir: Path) -> Path:
    """The session's tiny random built-in checkpoint (tests/conftest.py writes it once)."""
    torch.set_num_threads(1)
    return tiny_checkpoint_dir


LoadModel = Callable[..., MultimodalModel]


@pytest.fixture(scope="session")
def load_once() -> LoadModel:
    """`load_model`, remembering each (checkpoint, device, dtype, options set): its text tower takes seconds to load
    (options left None are the defaults: the same model as none given)."""
    real_load_model = service.engine.load_model
    loaded: dict[tuple[str, str, Any, tuple[tuple[str, Any], ...]], MultimodalModel] = {}

    def load_model(spec: str, device: Any = "cpu", dtype: Any = None, **options: Any) -> MultimodalModel:
        key = (str(spec), str(device), dtype, tuple(sorted((k, v) for k, v in options.items() if v is not None)))
        if key not in loaded:
            loaded[key] = real_load_model(spec, device, dtype, **options)
        return loaded[key]

    return load_model


@pytest.fixture(autouse=True)
def _load_each_model_once(monkeypatch: pytest.MonkeyPatch, load_once: LoadModel) -> None:
    """Apps in this process share loaded models. They run one at a time, so no two threads share a device;
    tests that replace `load_model` themselves still can (their monkeypatch comes later).
    """
    monkeypatch.setattr(service.engine, "load_model", load_once)


async def wait_for_status(client: httpx.AsyncClient, status: str, timeout_s: float = 180.0) -> httpx.Response:
    """Poll /health until it reports `status` (or the time is up)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        response = await client.get("/health")
        if response.json()["status"] == status or loop.time() > deadline:
            return response
        await asyncio.sleep(0.02)


@pytest.fixture(scope="session")
def serve(checkpoint: Path) -> Serve:
    """`async with serve(**settings) as client`: an app on the tiny checkpoint, its lifespan running."""

    @asynccontextmanager
    async def serving(wait_ready: bool = True, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        defaults: dict[str, Any] = {
            "model": str(checkpoint),
            "device": "cpu",
            "torch_threads": 1,
            "decode_threads": 2,
            "generate_model": "none",  # no text-to-image unless a test names a generator
            "exit_on_failure": False,  # in this process: a fatal state stays up, unhealthy, for the test to see
        }
        app = create_app(Settings(**{**defaults, **overrides}))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://mmserve", timeout=60) as client:
                if wait_ready:
                    response = await wait_for_status(client, "ok")
                    assert response.status_code == 200, response.text
                client.app = app  # type: ignore[attr-defined]  # for tests that reach into the runtime
                yield client

    return serving


@pytest.fixture(scope="module")
async def client(serve: Serve) -> AsyncIterator[httpx.AsyncClient]:
    """One ready app with the default settings, shared by a test module."""
    async with serve() as client:
        yield client
