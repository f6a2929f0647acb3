"""What a client sees when a Ray Serve replica is SIGKILLed under load: answers, retries, 503s and bare 500s.

A real 2-node local Ray cluster (tests/deploy/ray_cluster.py, one CPU per node) serves a checkout's
deploy/ray/serve.yaml (the tiny test checkpoint on CPU, two replicas, one proxy); 8 clients send distinct
/embed and /caption requests; after `--kill-after` answers in a round, one replica's process is SIGKILLed (the one
that did not give that answer: a replica's batch ends together, so the one that just answered is often
empty, the other is more likely busy);
the round goes on until every request of it has an answer, then Ray's replacement is awaited. Run it
against another checkout (`--checkout /work/main`) to compare: its code is what the cluster runs.

    python bench/ray_kill.py --rounds 3
    python bench/ray_kill.py --rounds 3 --checkout /work/main      # the same load on main's code
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

REPLICA_HEADER = "X-MMServe-Replica"
RETRIED_HEADER = "X-MMServe-Retried"


def outcome(response: httpx.Response | Exception) -> str:
    """One answer's kind: 200, 200 after a retry, a JSON error (with Retry-After or not), a bare 500 ..."""
    if isinstance(response, Exception):
        return f"transport error ({type(response).__name__})"
    if response.status_code == 200:
        return "200 (retried)" if RETRIED_HEADER in response.headers else "200"
    try:
        kind = response.json()["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return f"bare {response.status_code} ({response.text[:40]!r})"
    retry_after = "Retry-After" in response.headers
    return f"JSON {response.status_code} {kind}" + (" with Retry-After" if retry_after else "")


def config(checkout: Path, model_dir: Path, port: int, max_ongoing: int, max_queued: int) -> dict[str, Any]:
    """The checkout's serve.yaml on this machine: as tests/deploy/test_ray_serve.py deploys it."""
    serve_config: dict[str, Any] = yaml.safe_load((checkout / "deploy" / "ray" / "serve.yaml").read_text())
    serve_config["proxy_location"] = "HeadOnly"
    serve_config["http_options"] = {"host": "127.0.0.1", "port": port}
    app = serve_config["applications"][0]
    app["args"].update(model=str(model_dir), device="cpu", torch_threads=1)
    for deployment in app["deployments"]:
        if deployment["name"] == "mmserve":
            deployment["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 0}
            deployment["autoscaling_config"].update(min_replicas=2, initial_replicas=2, max_replicas=2)
            deployment.update(max_ongoing_requests=max_ongoing, max_queued_requests=max_queued)
        else:
            deployment["num_replicas"] = 1
    return serve_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--rounds", type=int, default=3, help="one replica killed per round")
    parser.add_argument("--requests", type=int, default=200, help="per round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kill-after", type=int, default=40, help="answers in a round before the kill")
    parser.add_argument("--max-ongoing", type=int, default=4, help="per replica (as the cluster test)")
    parser.add_argument("--max-queued", type=int, default=8, help="Ray's queue in front of the replicas")
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    sys.path.insert(0, str(checkout))
    os.environ["PYTHONPATH"] = str(checkout)

    from tests.deploy.ray_cluster import LocalRayCluster, wait_for_http
    from tests.support.builtin_checkpoint import tiny_checkpoint
    from tests.support.server import encode_image, free_port, noise_image

    images = [encode_image(noise_image(seed)) for seed in range(16)]

    def send(client: httpx.Client, url: str, index: int) -> httpx.Response:
        if index % 4 == 3:
            image = images[index % len(images)]
            files = {"image": ("i.png", image, "image/png")}
            return client.post(f"{url}/caption", files=files, data={"max_new_tokens": "12"})
        return client.post(f"{url}/embed", json={"input": f"request {index}: a red circle and a blue square"})

    model_dir = tiny_checkpoint(Path(tempfile.mkdtemp(prefix="ray-kill-model-")))
    port = free_port()
    config_path = Path(tempfile.mkdtemp(prefix="ray-kill-")) / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config(checkout, model_dir, port, args.max_ongoing, args.max_queued)))
    url = f"http://127.0.0.1:{port}"
    outcomes: Counter[str] = Counter()
    cluster = LocalRayCluster(cpus_per_node=1).start()
    try:
        from ray import serve

        serve_cli = str(Path(sys.executable).parent / "serve")
        command = [serve_cli, "run", str(config_path), "--non-blocking", f"--address={cluster.address}"]
        subprocess.run(command, check=True, cwd=checkout, timeout=180)
        wait_for_http(f"{url}/health")
        wait_for_two_replicas(serve, url, None)
        for round_number in range(args.rounds):
            started = time.monotonic()
            round_outcomes, killed = one_round(url, send, args, round_number * args.requests)
            took = time.monotonic() - started
            print(f"round {round_number + 1}: replica pid {killed} killed: {dict(round_outcomes)} in {took:.0f} s")
            outcomes.update(round_outcomes)
            replaced = wait_for_two_replicas(serve, url, killed)
            print(f"  two replicas again after {replaced:.0f} s more", flush=True)
        serve.shutdown()
    finally:
        cluster.stop()
    total = args.rounds * args.requests
    print(f"\n{args.rounds} replicas SIGKILLed, {args.clients} clients, {total} requests, code of {checkout}")
    print("| answer | requests |\n| --- | --- |")
    for kind, count in sorted(outcomes.items()):
        print(f"| {kind} | {count} |")


def one_round(url: str, send: Any, args: argparse.Namespace, first: int) -> tuple[Counter[str], int | None]:
    results: list[httpx.Response | Exception] = []
    killed: list[int] = []
    replicas: set[str] = set()
    lock = threading.Lock()

    def one(index: int, client: httpx.Client) -> None:
        try:
            result: httpx.Response | Exception = send(client, url, index)
        except httpx.TransportError as error:
            result = error
        with lock:
            results.append(result)
            last = result.headers.get(REPLICA_HEADER) if isinstance(result, httpx.Response) else None
            replicas.update([last] if last else [])
            others = sorted(replicas - {last})
            if not killed and len(results) >= args.kill_after and last and others:
                pid = int(others[0].rsplit("@", 1)[1])
                if psutil.pid_exists(pid):
                    assert "ServeReplica" in " ".join(psutil.Process(pid).cmdline())  # nothing else is killed
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

    limits = httpx.Limits(max_connections=args.clients)
    with httpx.Client(timeout=120, limits=limits) as client, ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(lambda index: one(index, client), range(first, first + args.requests)))
    return Counter(outcome(r) for r in results), (killed[0] if killed else None)


def wait_for_two_replicas(serve: Any, url: str, killed: int | None, timeout_s: float = 240.0) -> float:
    """Seconds until two replicas run and answer, neither of them the killed one."""
    started = time.monotonic()
    while time.monotonic() < started + timeout_s:
        deployment = serve.status().applications["mmserve"].deployments["mmserve"]
        if deployment.replica_states == {"RUNNING": 2}:
            pids = {httpx.get(f"{url}/health", timeout=30).headers.get(REPLICA_HEADER) for _ in range(12)}
            if len(pids) == 2 and not any(pid and pid.endswith(f"@{killed}") for pid in pids):
                return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"two replicas were not running within {timeout_s} s")


if __name__ == "__main__":
    main()
