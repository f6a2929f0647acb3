"""The servers under test, each started as its own process on a free local port, and stopped again.

A server is ready when `GET /health` answers 200 (mmserve answers 200 only once it has loaded and
warmed up; LitServe once its workers are up; the plain FastAPI app once its model is loaded). It is
stopped with SIGTERM to its process group (LitServe forks workers), then SIGKILL if it lingers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
TASKS = ("caption", "vqa", "embed_text", "embed_image")


@dataclass(frozen=True)
class ServerSpec:
    key: str  # what --servers names
    label: str  # what the tables say
    command: tuple[str, ...] = ()  # run with the port appended as `--port N` unless it is mmserve; for an
    # in-process limit (`http=False`), further arguments of `bench.limit`
    env: dict[str, str] = field(default_factory=dict)
    http: bool = True  # False: the in-process limit, which has no server
    cwd: Path | None = None  # where it runs (None: this checkout); `python -m` imports from there first

    def is_mmserve(self) -> bool:
        return self.key.startswith("mmserve")


def _mmserve(key: str, label: str, **env: str) -> ServerSpec:
    return ServerSpec(key, label, (sys.executable, "-m", "service", "serve"), env)


def specs(device: str) -> dict[str, ServerSpec]:
    """Every server the suite knows, in the order it runs them."""
    unbatched = {f"MMSERVE_{task.upper()}_MAX_BATCH_SIZE": "1" for task in TASKS}
    python, peer = (sys.executable, "-m"), ("--device", device)
    return {
        s.key: s
        for s in (
            ServerSpec("limit", "the model in-process, no HTTP (items/s at batch = concurrency)", http=False),
            ServerSpec(
                "limit-naive",
                "the model in-process, each batch padded to its longest text (the naive limit; `/embed` only)",
                ("--naive",),
                http=False,
            ),
            _mmserve("mmserve", "mmserve, defaults"),
            _mmserve("mmserve-static", "mmserve, `MMSERVE_SCHEDULER=static`", MMSERVE_SCHEDULER="static"),
            _mmserve("mmserve-unbatched", "mmserve, `max_batch_size=1`", **unbatched),
            ServerSpec("litserve", "LitServe, same batch size and wait", (*python, "bench.peers.lit", *peer)),
            ServerSpec("fastapi", "plain FastAPI, one call per request", (*python, "bench.peers.plain", *peer)),
        )
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """Resident memory of one process, from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Server:
    """One server process: `with Server(spec, device) as server:` starts it and waits until it is ready."""

    def __init__(self, spec: ServerSpec, device: str, model: str = "builtin", ready_timeout_s: float = 300.0) -> None:
        self.spec = spec
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        command = list(spec.command)
        env = {**os.environ, **spec.env}
        if spec.is_mmserve():
            env |= {"MMSERVE_HOST": "127.0.0.1", "MMSERVE_PORT": str(self.port), "MMSERVE_DEVICE": device}
            env |= {"MMSERVE_MODEL": model}
            env.setdefault("MMSERVE_LOG_LEVEL", "warning")
        else:
            command += ["--port", str(self.port)]
        self._command, self._env = command, env
        self._log = tempfile.NamedTemporaryFile(prefix=f"bench-{spec.key}-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self._command,
            env=self._env,
            cwd=self.spec.cwd or REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that its workers stop with it
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.spec.key} exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.spec.key} was not ready within {self.ready_timeout_s} s:\n{self.log()}")

    def post(self, path: str, body: str, timeout_s: float = 300.0) -> None:
        """One request, waited for (its answer is not checked: wrk's cells check answers)."""
        headers = {"content-type": "application/json"}
        httpx.post(f"{self.url}{path}", content=body, headers=headers, timeout=timeout_s)

    def rss_bytes(self) -> int:
        assert self.process is not None
        return rss_bytes(self.process.pid)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        with contextlib.suppress(ProcessLookupError):  # the leader is gone; workers it left behind
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-6000:]

    def __enter__(self) -> Server:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)
