"""deploy/ray/: the serve config is valid for Ray Serve, and the RayService carries exactly that config."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.support.server import REPO_ROOT

schema = pytest.importorskip("ray.serve.schema", reason="needs the ray extra: pip install -e '.[ray]'")

SERVE_CONFIG = REPO_ROOT / "deploy" / "ray" / "serve.yaml"
RAY_SERVICE = REPO_ROOT / "deploy" / "ray" / "rayservice.yaml"


def serve_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SERVE_CONFIG.read_text())
    return config


def test_the_serve_config_is_valid_and_its_args_are_mmserve_settings() -> None:
    config = schema.ServeDeploySchema(**serve_config())
    (app,) = config.applications
    assert app.import_path == "service.ray_serve:build_app"
    settings = Settings(**app.args)
    deployments = {deployment.name: deployment for deployment in app.deployments}
    assert set(deployments) == {"mmserve", "ingress"}  # the names of service.ray_serve's two deployments
    deployment = deployments["mmserve"]
    assert deployment.backpressure_config.status_code == 429
    assert deployment.max_queued_requests > 0  # bounded: beyond it, 429 at once
    # Ray waits this long for a replica's shutdown, which runs mmserve's drain (up to request_timeout_s).
    assert deployment.graceful_shutdown_timeout_s > settings.request_timeout_s
    assert deployment.ray_actor_options.num_gpus == 1
    # HTTP enters at the ingress (it retries a request whose replica died), which needs no GPU.
    assert deployments["ingress"].ray_actor_options.num_cpus == 0
    assert deployments["ingress"].ray_actor_options.num_gpus in (None, 0)


def test_the_rayservice_serves_the_serve_config() -> None:
    ray_service = yaml.safe_load(RAY_SERVICE.read_text())
    assert ray_service["kind"] == "RayService"
    assert yaml.safe_load(ray_service["spec"]["serveConfigV2"]) == serve_config()
    workers = ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    max_replicas = serve_config()["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"]
    assert sum(group["maxReplicas"] for group in workers) == max_replicas  # one GPU worker per replica


def test_every_proxy_spreads_over_every_replica() -> None:
    cluster = yaml.safe_load(RAY_SERVICE.read_text())["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {variable["name"]: variable["value"] for variable in container.get("env", [])}
            assert env.get("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING") == "0", container["name"]
