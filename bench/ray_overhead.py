"""What Ray Serve costs: wrk on POST /embed (one text) against mmserve alone, then through Ray, two ways.

One run, one after the other on the same machine: `mmserve serve`, then a one-node Ray cluster serving one
replica of the same app on the same model and device: first as the application's ingress itself (the
proxy calls the replica: `MMServe` alone), then behind the ingress deployment that retries a request whose
replica died (service.ray_ingress: proxy, ingress replica, model replica; what `build_app` deploys). Each
at every `--connections` count. Needs wrk and the ray extra.
    python bench/ray_overhead.py --duration 10 --connections 1 8
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.deploy.ray_cluster import LocalRayCluster, wait_for_http
from tests.support.server import ServerProcess, free_port

WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{"input": "a large orange circle and a small yellow square"}'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk(url: str, duration_s: int, connections: int) -> tuple[float, str, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s"]
    out = subprocess.run([*command, script.name, f"{url}/embed"], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)[1]  # type: ignore[index]
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)[1]  # type: ignore[index]
    if "Non-2xx" in out:
        raise RuntimeError(out)
    return rps, p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per target")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=1, help="the same for both (Ray gives a replica one)")
    args = parser.parse_args()
    settings = {"model": args.model, "device": args.device, "torch_threads": args.torch_threads}

    rows = []

    def measure(name: str, url: str) -> None:
        for connections in args.connections:
            wrk(url, 2, connections)  # warm
            rows.append((name, connections, *wrk(url, args.duration, connections)))

    with ServerProcess({f"MMSERVE_{key.upper()}": str(value) for key, value in settings.items()}) as server:
        measure("mmserve alone", server.url)

    cluster = LocalRayCluster(cpus_per_node=2, nodes=1).start()
    try:
        from ray import serve

        from service.ray_ingress import Ingress
        from service.ray_serve import MMServe

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        url = f"http://127.0.0.1:{port}"
        model = MMServe.options(ray_actor_options={"num_cpus": 1})
        applications = {
            "through Ray, the replica as ingress (proxy → replica)": model.bind(settings),
            "through Ray's ingress deployment (proxy → ingress → replica)": Ingress.bind(
                model.bind(settings), settings
            ),
        }
        for name, application in applications.items():
            serve.run(application, name="mmserve", route_prefix="/")
            wait_for_http(f"{url}/health")
            measure(name, url)
            serve.delete("mmserve")
        serve.shutdown()
    finally:
        cluster.stop()

    print(f"\nPOST /embed, one text, wrk -d{args.duration}s, {args.model} on {args.device}, one replica")
    print("| target | connections | req/s | p50 | p99 |\n| --- | --- | --- | --- | --- |")
    for name, connections, rps, p50, p99 in rows:
        print(f"| {name} | {connections} | {rps:.0f} | {p50} | {p99} |")


if __name__ == "__main__":
    main()
