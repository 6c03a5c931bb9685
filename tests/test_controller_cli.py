"""What `exo-gpu top` and `plan` print and what the controller exports on `/metrics`."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from exo.gpu.controller.cli import (
    DEVICE_HEADERS,
    aggregate_lines,
    device_rows,
    format_table,
    plan_rows,
)
from exo.gpu.controller.metrics import build_registry
from exo.gpu.controller.planning import plan
from exo.gpu.k8s.view import ClusterView
from exo.gpu.selector import SelectionPolicy
from test_controller_planning import NOW, Clock, device, workload

GIB = 1024**3


@pytest.fixture
def view() -> ClusterView:
    clock = Clock()
    view = ClusterView(policy=SelectionPolicy(reporting_interval_seconds=10), clock=clock)
    view.apply_device(device("n1", "nvidia", 0, 80, used_gib=20, util=50))
    view.apply_device(device("n2", "amd", 0, 64, temp=95))
    view.apply_device(device("n3", "intel", 0, 16, at=NOW - 100))
    return view


def test_format_table_pads_columns() -> None:
    text = format_table(("A", "LONG"), [["xx", 1], ["y", 22]])
    assert text.splitlines() == ["A    LONG", "xx   1", "y    22"]


def test_device_rows_show_figures_and_state(view: ClusterView) -> None:
    rows = {r[0]: dict(zip(DEVICE_HEADERS, r, strict=True))
            for r in device_rows(view, NOW)}
    nvidia = rows["n1-nvidia-0"]
    assert nvidia["MEMORY"] == "20.0/80.0 GiB" and nvidia["UTIL"] == "50%"
    assert nvidia["SCORE"] == f"{0.6 * 60 / 80 + 0.4 * 0.5:.2f}" and nvidia["STATE"] == "Ready"
    assert rows["n2-amd-0"]["STATE"] == "TooHot"
    assert rows["n3-intel-0"]["STATE"] == "Stale"


def test_aggregate_lines(view: ClusterView) -> None:
    lines = aggregate_lines(view)
    assert lines[0] == "devices: 3 (3 reporting); amd 1, intel 1, nvidia 1"
    assert lines[1] == "memory: 20.0 GiB used, 140.0 GiB free of 160.0 GiB"


def test_plan_rows(view: ClusterView) -> None:
    result = plan(workload({"tasks": 4}), view)
    rows = plan_rows(result)
    assert [r[0] for r in rows] == ["n1-nvidia-0"]  # the others are too hot or stale
    assert rows[0][2:4] == ["0-3", 4]


def test_metrics_are_computed_from_the_view(view: ClusterView) -> None:
    text = generate_latest(build_registry(view, lambda: {"Placed": 2})).decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    assert values["exo_gpu_cluster_devices"] == 3
    assert values["exo_gpu_cluster_memory_total_bytes"] == 160 * GIB
    assert values["exo_gpu_cluster_memory_used_bytes"] == 20 * GIB
    assert values["exo_gpu_cluster_utilization_percent_average"] == pytest.approx(50 / 3)
    assert values['exo_gpu_cluster_vendor_devices{vendor="amd"}'] == 1
    assert values['exo_gpu_cluster_vendor_eligible_devices{vendor="amd"}'] == 0
    assert values['exo_gpu_cluster_vendor_eligible_devices{vendor="nvidia"}'] == 1
    assert values['exo_gpu_cluster_vendor_memory_free_bytes{vendor="nvidia"}'] == 60 * GIB
    assert values['exo_gpu_workloads{phase="Placed"}'] == 2
    view.remove_device("n2-amd-0")
    again = generate_latest(build_registry(view)).decode()
    assert "exo_gpu_cluster_devices 2.0" in again
