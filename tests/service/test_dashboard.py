"""The Grafana dashboard and the Prometheus configuration in docker/ fit the service's metrics."""

from __future__ import annotations

import json
import re

import yaml

from service.metrics import Metrics
from tests.support.server import REPO_ROOT

DOCKER = REPO_ROOT / "docker"


def served_series() -> set[str]:
    """Every series name /metrics exposes (histograms as _bucket/_sum/_count, counters as _total)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_dashboard_structure_and_queries() -> None:
    dashboard = json.loads((DOCKER / "grafana/dashboards/mmserve.json").read_text())
    assert dashboard["uid"] == "mmserve" and dashboard["title"] == "mmserve"
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    titles = " | ".join(panel["title"] for panel in panels)
    for wanted in ("Throughput per task", "Errors per task", "Queue depth", "p50 / p99", "Batch size"):
        assert wanted in titles
    cells: set[tuple[int, int]] = set()
    known = served_series()
    for panel in panels:
        x0, y0, width, height = (panel["gridPos"][key] for key in ("x", "y", "w", "h"))
        covered = {(x, y) for x in range(x0, x0 + width) for y in range(y0, y0 + height)}
        assert not covered & cells and x0 + width <= 24, f"panel {panel['title']} overlaps or overflows"
        cells |= covered
        assert panel["datasource"]["uid"] == "prometheus" and panel["targets"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            used = set(re.findall(r"\bmmserve_\w+", target["expr"]))
            assert used and used <= known, f"{panel['title']}: unknown series {used - known}"


def test_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    compose = yaml.safe_load((DOCKER / "compose.monitoring.yml").read_text())
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/mmserve.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./docker/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts
    scrape = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["api:8000"]
