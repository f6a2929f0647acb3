"""Fatal means exit, in a real process: a supervisor restarts a process that exits, never one that is only
unhealthy. A model that cannot load, a busy port, a broken device and a dead inference thread each end
the process with their own status (service.exits, README's table); the last two after 503s for a grace."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from service.exits import ExitStatus
from tests.support.server import REPO_ROOT, ServerProcess, error_of, free_port

pytestmark = pytest.mark.slow

GRACE = {"MMSERVE_UNHEALTHY_EXIT_AFTER_S": "3", "MMSERVE_FAULT_INJECTION": "true"}


def serve(settings: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m service serve` with `settings`, run to its end."""
    env = {"MMSERVE_LOG_LEVEL": "warning", "MMSERVE_DEVICE": "cpu", "MMSERVE_TORCH_THREADS": "1", **settings}
    command = [sys.executable, "-m", "service", "serve"]
    return subprocess.run(
        command, env={**os.environ, **env}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s
    )


def test_a_model_that_cannot_load_exits_with_status_4_and_its_reason_in_one_line() -> None:
    done = serve({"MMSERVE_MODEL": "/nonexistent/checkpoint", "MMSERVE_PORT": str(free_port())})
    assert done.returncode == ExitStatus.LOAD_FAILED, done.stderr
    lines = [line for line in done.stderr.splitlines() if "loading the model failed" in line]
    assert len(lines) == 1, done.stderr
    assert "cannot load model '/nonexistent/checkpoint'" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_busy_port_exits_with_status_7_before_the_model_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # A model that cannot load would exit 4: status 7 shows the port was checked first.
        done = serve({"MMSERVE_MODEL": "/nonexistent/checkpoint", "MMSERVE_PORT": str(port)})
    assert done.returncode == ExitStatus.CANNOT_LISTEN, done.stderr
    assert done.stderr.strip() == f"mmserve: 127.0.0.1:{port} is already in use (MMSERVE_HOST, MMSERVE_PORT)"


def test_bad_settings_exit_with_status_2_in_one_line() -> None:
    done = serve({"MMSERVE_PORT": "99999"})
    assert done.returncode == ExitStatus.USAGE
    assert done.stderr.strip() == "mmserve: invalid settings: port: Input should be less than or equal to 65535"


def wait_for_exit(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.wait(60)


def health(server: ServerProcess) -> tuple[int, str]:
    response = httpx.get(f"{server.url}/health", timeout=10)
    return response.status_code, response.json()["status"]


def test_a_broken_device_answers_503_stays_unhealthy_for_the_grace_then_exits_5(base_settings: dict[str, str]) -> None:
    with ServerProcess({**base_settings, **GRACE}) as server:
        assert httpx.post(f"{server.url}/embed", json={"input": "fine"}, timeout=60).status_code == 200
        assert httpx.post(f"{server.url}/faults/device", timeout=10).status_code == 202
        broken = httpx.post(f"{server.url}/embed", json={"input": "broken"}, timeout=60)
        assert broken.status_code == 503
        assert error_of(broken)["message"] == "the device failed; the server is unhealthy"
        assert broken.headers["connection"] == "close"
        assert health(server) == (503, "unhealthy")  # the grace: a load balancer sees it
        assert wait_for_exit(server) == ExitStatus.DEVICE_FAILED
        assert "the device failed: CUDA error" in server.log()


def test_a_dead_inference_thread_exits_6_without_the_watchdog(base_settings: dict[str, str]) -> None:
    settings = {**base_settings, **GRACE, "MMSERVE_STEP_TIMEOUT_S": "0"}  # no watchdog: the exit is the runtime's
    with ServerProcess(settings) as server:
        assert httpx.post(f"{server.url}/faults/inference-thread", timeout=10).json()["injected"] is True
        deadline = time.monotonic() + 30
        while health(server) != (503, "unhealthy"):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        refused = httpx.post(f"{server.url}/embed", json={"input": "a"}, timeout=60)
        assert (refused.status_code, error_of(refused)["message"]) == (503, "the server is unhealthy")
        assert wait_for_exit(server) == ExitStatus.INFERENCE_THREAD_DIED
        log = server.log()
        assert "the inference thread died: InjectedFault" in log
        assert "stuck" not in log


def test_fault_injection_is_off_by_default(base_settings: dict[str, str]) -> None:
    with ServerProcess(base_settings) as server:
        assert httpx.post(f"{server.url}/faults/device", timeout=10).status_code == 404
        assert httpx.post(f"{server.url}/embed", json={"input": "fine"}, timeout=60).status_code == 200
