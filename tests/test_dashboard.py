"""The Grafana dashboard queries only metrics the code really exports, with their real labels.

A dashboard that names a metric nobody serves shows "No data" and nobody notices until an
incident; so every PromQL expression is taken apart here, and every series name and every label
it groups by, filters on or prints must belong to a family registered by the exporter, the
extender or the controller (read from their registries, not from a list kept by hand).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = json.loads((ROOT / "dashboards" / "exo-gpu.json").read_text())

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "le", "inf", "nan"}


def _families() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, label names) of every family of the three registries, one sample each."""
    from exo.gpu.controller.metrics import build_registry
    from exo.gpu.exporter.backends.base import HEALTHY
    from exo.gpu.exporter.metrics import ExporterMetrics
    from exo.gpu.extender.metrics import ExtenderMetrics
    from exo.gpu.k8s.view import ClusterView
    from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

    exporter = ExporterMetrics(hostname="node-a")
    info = GPUDeviceInfo(device_id="node-a-nvidia-0", name="NVIDIA H100", vendor=Vendor.NVIDIA,
                         memory_total_bytes=80 * 2**30, compute_capacity=989.0, index=0,
                         uuid="GPU-1")
    sample = GPUMetrics(device_id="node-a-nvidia-0", timestamp=1.0,
                        memory_used_bytes=2**30, memory_total_bytes=80 * 2**30,
                        compute_utilization_percent=50.0, temperature_celsius=60.0,
                        power_watts=300.0, clock_rate_mhz=1500.0)
    exporter.record_sample(info, sample, HEALTHY)
    exporter.scrape_duration.labels("nvml").observe(0.01)
    exporter.scrape_success.labels("nvml").set(1)
    exporter.backend_errors.labels("nvml", "BackendTimeout").inc()
    exporter.invalid_readings.labels("nvml", "memory").inc()
    exporter.api_writes.labels("status", "ok").inc()
    exporter.devices.labels("nvml").set(1)
    extender = ExtenderMetrics()
    extender.latency.labels("filter").observe(0.001)
    extender.errors.labels("filter", "bad_request").inc()
    extender.nodes.labels("passed").inc()
    extender.binds.labels("ok").inc()
    extender.reservations.set(0)
    controller = build_registry(ClusterView(), workloads=lambda: {"Placed": 1})

    found: dict[str, tuple[str, set[str]]] = {}
    for registry in (exporter.registry, extender.registry, controller):
        for family in registry.collect():
            for s in family.samples:
                found[s.name] = (family.type, set(s.labels))
            if not family.samples:
                found[family.name] = (family.type, set())
    # Gauges the controller yields only once a device reported (max temperature, oldest
    # sample age): read them from the collector's source.
    source = (ROOT / "operator/exo/gpu/controller/metrics.py").read_text()
    prefix = re.search(r'PREFIX = "(\w+)"', source)
    assert prefix is not None
    for name in re.findall(r'_gauge\("(\w+)"', source):
        found.setdefault(f"{prefix.group(1)}_{name}", ("gauge", set()))
    return found


FAMILIES = _families()


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def _targets() -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in _panels(DASHBOARD["panels"])
            for target in panel.get("targets") or []]


def series_names(expr: str) -> set[str]:
    """Metric names of a PromQL expression (functions, keywords and labels removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # string literals
    text = re.sub(r"\$\{?\w+\}?", "", text)                    # dashboard variables
    text = re.sub(r"\{[^}]*\}", "", text)                      # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                     # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group(0).lower() in KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(match.group(0))
    return names


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in clause.split(",") if label.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= {m.group(1) for m in re.finditer(r"(\w+)\s*(?:=~|!~|!=|=)", matchers)}
    return labels


def test_the_parser_finds_names_and_skips_functions() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, verb) (rate(a_bucket{x=~"$v"}[5m]))) '
            '/ ignoring(le) b_total or vector(0)')
    assert series_names(expr) == {"a_bucket", "b_total"}
    assert grouping_labels(expr) == {"le", "verb", "x"}


def test_dashboard_has_panels_for_every_source() -> None:
    names = {n for _, target in _targets() for n in series_names(target["expr"])}
    assert any(n.startswith("DCGM_FI_DEV_") for n in names)
    assert any(n.startswith("hw_gpu_") for n in names)
    assert any(n.startswith("exo_gpu_extender_") for n in names)
    assert any(n.startswith("exo_gpu_cluster_") for n in names)
    assert any(n.startswith("exo_gpu_exporter_") for n in names)


@pytest.mark.parametrize(("title", "target"), _targets(),
                         ids=[f"{t}-{x['refId']}" for t, x in _targets()])
def test_every_queried_series_exists_in_the_code(title: str, target: dict[str, Any]) -> None:
    names = series_names(target["expr"])
    assert names, f"{title}: no metric in {target['expr']!r}"
    unknown = sorted(names - set(FAMILIES))
    assert not unknown, f"{title}: {unknown} are exported by no component"
    labels = set().union(*(FAMILIES[n][1] for n in names)) | {"le"}
    used = grouping_labels(target["expr"])
    used |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
    missing = sorted(used - labels)
    assert not missing, f"{title}: labels {missing} are not on {sorted(names)}"


def test_every_device_metric_is_charted() -> None:
    charted = {n for _, target in _targets() for n in series_names(target["expr"])}
    device = {n for n in FAMILIES if n.startswith(("DCGM_FI_DEV_", "hw_gpu_"))}
    assert device and device <= charted, sorted(device - charted)


def test_counters_are_read_as_rates_and_histograms_by_quantile() -> None:
    for title, target in _targets():
        for name in series_names(target["expr"]):
            kind = FAMILIES[name][0]
            if kind == "counter" or name.endswith("_bucket"):
                assert re.search(rf"(rate|increase)\(\s*{name}\[", target["expr"]), \
                    f"{title}: counter {name} must be read through rate() or increase()"


def test_template_variables_are_defined_and_used() -> None:
    defined = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert {"datasource", "node", "vendor"} <= defined
    text = json.dumps(DASHBOARD["panels"])
    for name in defined:
        assert f"${name}" in text or f"${{{name}}}" in text, name
    for panel in _panels(DASHBOARD["panels"]):
        if panel.get("targets"):
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panel_ids_are_unique_and_layout_fits() -> None:
    panels = list(_panels(DASHBOARD["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
