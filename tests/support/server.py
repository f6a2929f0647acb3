"""Helpers for tests and benchmarks against the service: test images, and a real server in a subprocess.

`ServerProcess` runs `python -m service serve` on a free port with `MMSERVE_*` settings, waits for
/health, and stops it with SIGTERM, the way an orchestrator would.
"""

from __future__ import annotations

import io
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from PIL import Image

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def encode_image(image: Image.Image, format: str = "PNG", **params: Any) -> bytes:
    """An image file's bytes (PNG by default: lossless, so the server sees exactly these pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def solid_image(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> Image.Image:
    return Image.new("RGB", size, colour)


def noise_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    """Random RGB noise: distinct images for distinct seeds."""
    return Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3))


def error_of(response: httpx.Response) -> dict[str, str]:
    """The `error` object of the service's error shape (asserting the shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"type", "message"}, body
    error: dict[str, str] = body["error"]
    return error


def validation_messages(response: httpx.Response) -> str:
    """The messages of a FastAPI-shaped 422, joined."""
    assert response.status_code == 422, response.text
    return " | ".join(str(error["msg"]) for error in response.json()["detail"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """`python -m service serve` in a subprocess, on 127.0.0.1 and a free port."""

    def __init__(self, settings: dict[str, str], args: tuple[str, ...] = ("serve",), module: str = "service") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {
            **os.environ,
            "MMSERVE_HOST": "127.0.0.1",
            "MMSERVE_PORT": str(self.port),
            "MMSERVE_LOG_LEVEL": "warning",
            **settings,
        }
        self._args = args
        self._module = module  # what `python -m` runs (a test's wrapper of the service, to inject a fault)
        self._log = tempfile.NamedTemporaryFile(prefix="mmserve-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", self._module, *self._args],
            env=self._env,
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_until(self, status: str = "ok", timeout_s: float = 300.0) -> None:
        """Poll /health until it reports `status` (fails with the server's log if it does not)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                current = httpx.get(f"{self.url}/health", timeout=2).json().get("status")
            except (httpx.TransportError, ValueError):
                current = None
            if current == status:
                return
            if current == "unhealthy":
                raise RuntimeError(f"the server is unhealthy:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"the server did not report {status!r} within {timeout_s} s:\n{self.log()}")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code (uvicorn re-raises the signal: -15 is a clean exit)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-8000:]

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_until("ok")
        except BaseException:
            self.__exit__(None, None, None)  # never leave a server behind
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)


def shipped_settings(**extra: str) -> dict[str, str]:
    """Settings for a server on the shipped built-in model (its weights in model/weights), CPU, one thread."""
    return {"MMSERVE_MODEL": "builtin", "MMSERVE_DEVICE": "cpu", "MMSERVE_TORCH_THREADS": "1", **extra}
