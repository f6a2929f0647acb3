"""A real local Ray cluster for tests: a head node and a second node, started with `ray start` on this machine.

Each node runs `ray start --block` in its own process group, so that stopping it ends exactly the
processes it started (raylet, GCS, workers), and nothing else on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.server import REPO_ROOT, free_port

RAY = str(Path(sys.executable).parent / "ray")


class LocalRayCluster:
    """`ray start` on 127.0.0.1: a head and (by default) a second node, one CPU each (by default)."""

    def __init__(self, cpus_per_node: int = 1, nodes: int = 2) -> None:
        self.gcs_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self._cpus = cpus_per_node
        self._node_count = nodes
        self._temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's sockets live under it
        self._log = tempfile.NamedTemporaryFile(prefix="ray-nodes-", suffix=".log", delete=False)  # noqa: SIM115
        self._nodes: list[subprocess.Popen[bytes]] = []
        # The workers import `service` from this checkout, whatever the environment has installed.
        # As deploy/ray/rayservice.yaml: a proxy spreads requests over every replica, not its own node's first.
        self._env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
        }

    def start(self) -> LocalRayCluster:
        common = [f"--num-cpus={self._cpus}", "--num-gpus=0", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        common += [f"--dashboard-agent-listen-port={free_port()}", "--block"]
        head = [RAY, "start", "--head", f"--port={self.gcs_port}", "--include-dashboard=false"]
        self._spawn([*head, f"--temp-dir={self._temp_dir}", *common])
        self._wait_for_nodes(1)
        for count in range(2, self._node_count + 1):
            common[4] = f"--dashboard-agent-listen-port={free_port()}"
            self._spawn([RAY, "start", f"--address={self.address}", *common])
            self._wait_for_nodes(count)
        return self

    def _spawn(self, command: list[str]) -> None:
        process = subprocess.Popen(
            command, env=self._env, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._nodes.append(process)

    def _wait_for_nodes(self, count: int, timeout_s: float = 120.0) -> None:
        import ray

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(node.poll() is not None for node in self._nodes):
                raise RuntimeError(f"a Ray node exited:\n{self.log()}")
            try:
                if not ray.is_initialized():
                    ray.init(address=self.address, log_to_driver=False, logging_level="warning")
                alive = [node for node in ray.nodes() if node["Alive"]]
                if len(alive) >= count:
                    return
            except (ConnectionError, RuntimeError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{count} Ray nodes did not come up within {timeout_s} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM each node's process group (then SIGKILL what is left): only what `start` started."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for node in reversed(self._nodes):
                try:
                    os.killpg(node.pid, sig)
                except ProcessLookupError:
                    continue
            deadline = time.monotonic() + 15
            while any(node.poll() is None for node in self._nodes) and time.monotonic() < deadline:
                time.sleep(0.2)

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-6000:]


def wait_for_http(url: str, timeout_s: float = 180.0) -> None:
    """Poll `url` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s")
