"""Fleet files: bad input refused with file, entry and reason; simulation deterministic."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from exo.gpu.exporter.backends.base import BackendError, BackendUnavailable, DeviceLost
from exo.gpu.exporter.backends.simulated import SimulatedBackend
from exo.gpu.exporter.fleet import FleetError, demo_fleet_path, load_fleet, parse_fleet
from exo.gpu.telemetry_protocol import Vendor

GIB = 1024**3

GOOD: dict[str, Any] = {
    "nodes": [
        {"name": "node-a", "devices": [
            {"vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3", "memory": "80Gi",
             "memoryUsed": {"base": "8Gi", "growthPerMinute": "1Gi", "max": "10Gi"},
             "utilization": {"pattern": "sine", "base": 50, "amplitude": 40, "periodSeconds": 40},
             "temperature": {"idle": 30, "full": 80, "heatingPerMinute": 6, "max": 90},
             "power": {"idle": 100, "full": 700}},
            {"vendor": "nvidia", "model": "NVIDIA L4", "memory": 24 * GIB},
        ]},
        {"name": "node-b", "devices": [
            {"vendor": "AMD", "model": "AMD Instinct MI300X", "memory": "192Gi",
             "utilization": {"pattern": "step",
                             "steps": [{"at": 0, "value": 10}, {"at": 60, "value": 90}]},
             "failures": [{"kind": "error", "at": 10, "until": 20, "reason": "AMDSMIError"},
                          {"kind": "invalid", "at": 30, "until": 40},
                          {"kind": "unhealthy", "at": 50, "reason": "EccUncorrectable"},
                          {"kind": "disappear", "at": 100}]},
        ]},
    ]
}


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def bad(tmp_path: Path, mutate: Any) -> FleetError:
    data = copy.deepcopy(GOOD)
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(FleetError) as caught:
        load_fleet(path)
    assert str(path) in str(caught.value)
    return caught.value


def dev(data: dict[str, Any], node: int = 0, device: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = data["nodes"][node]["devices"][device]
    return result


# -- bad input: each one a test -----------------------------------------------------------------


def test_unknown_vendor(tmp_path: Path) -> None:
    error = bad(tmp_path, lambda d: dev(d, 0, 1).update(vendor="3dfx"))
    assert error.entry == "nodes[0].devices[1].vendor"
    assert "nvidia" in error.reason and "qualcomm" in error.reason


def test_used_above_total(tmp_path: Path) -> None:
    error = bad(tmp_path, lambda d: dev(d, 0, 1).update(memoryUsed={"base": "25Gi"}))
    assert error.entry == "nodes[0].devices[1]"
    assert "memoryUsed.base" in error.reason and "above the total memory" in error.reason


def test_used_cap_above_total(tmp_path: Path) -> None:
    error = bad(tmp_path, lambda d: dev(d).update(memoryUsed={"base": 0, "max": "81Gi"}))
    assert error.entry == "nodes[0].devices[0]" and "memoryUsed.max" in error.reason


def test_negative_memory(tmp_path: Path) -> None:
    error = bad(tmp_path, lambda d: dev(d, 1, 0).update(memory="-4Gi"))
    assert error.entry == "nodes[1].devices[0].memory" and "negative" in error.reason


def test_negative_memory_used(tmp_path: Path) -> None:
    error = bad(tmp_path, lambda d: dev(d).update(memoryUsed={"base": -1}))
    assert error.entry == "nodes[0].devices[0].memoryUsed.base" and "negative" in error.reason


def test_negative_power(tmp_path: Path) -> None:
    error = bad(tmp_path, lambda d: dev(d).update(power={"idle": -5, "full": 100}))
    assert error.entry == "nodes[0].devices[0].power.idle"
    assert "greater than or equal to 0" in error.reason


def test_utilization_out_of_range(tmp_path: Path) -> None:
    error = bad(tmp_path, lambda d: dev(d).update(
        utilization={"pattern": "sine", "base": 80, "amplitude": 30}))
    assert error.entry == "nodes[0].devices[0].utilization" and "leaves 0..100" in error.reason


def test_duplicate_device_index(tmp_path: Path) -> None:
    error = bad(tmp_path, lambda d: dev(d, 0, 1).update(index=0))
    assert error.entry == "nodes[0].devices[1]"
    assert "duplicate device" in error.reason and "nodes[0].devices[0]" in error.reason


def test_duplicate_uuid(tmp_path: Path) -> None:
    def same_uuid(d: dict[str, Any]) -> None:
        dev(d, 0, 0)["uuid"] = "GPU-1"
        dev(d, 1, 0)["uuid"] = "GPU-1"

    error = bad(tmp_path, same_uuid)
    assert error.entry == "nodes[1].devices[0]" and "uuid 'GPU-1'" in error.reason


def test_duplicate_node(tmp_path: Path) -> None:
    error = bad(tmp_path, lambda d: d["nodes"][1].update(name="node-a"))
    assert error.entry == "nodes[1]" and "duplicate node 'node-a'" in error.reason


def test_unknown_field(tmp_path: Path) -> None:
    error = bad(tmp_path, lambda d: dev(d).update(memroy="80Gi"))
    assert error.entry == "nodes[0].devices[0].memroy" and "not permitted" in error.reason


def test_failure_window_backwards(tmp_path: Path) -> None:
    backwards = [{"kind": "error", "at": 9, "until": 3}]
    error = bad(tmp_path, lambda d: dev(d).update(failures=backwards))
    assert error.entry == "nodes[0].devices[0].failures[0]" and "after at" in error.reason


def test_every_problem_is_listed(tmp_path: Path) -> None:
    def two(d: dict[str, Any]) -> None:
        dev(d, 0, 0)["vendor"] = "3dfx"
        dev(d, 1, 0)["memory"] = "-1"

    error = bad(tmp_path, two)
    entries = [entry for entry, _ in error.problems]
    assert entries == ["nodes[0].devices[0].vendor", "nodes[1].devices[0].memory"]


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("nodes: [unclosed")
    with pytest.raises(FleetError, match="not valid YAML"):
        load_fleet(path)
    with pytest.raises(FleetError, match="cannot read"):
        load_fleet(tmp_path / "absent.yaml")
    with pytest.raises(FleetError, match="expected a mapping"):
        parse_fleet(["nodes"], "inline")


# -- the shipped demo and the simulation --------------------------------------------------------


def test_demo_fleet_loads_and_covers_every_vendor() -> None:
    fleet = load_fleet(demo_fleet_path())
    vendors = {d.spec.vendor for node in fleet.node_names() for d in fleet.devices_of(node)}
    assert vendors == set(Vendor)


def test_simulation_is_deterministic_and_follows_the_file() -> None:
    fleet = parse_fleet(GOOD)
    now = [1_800_000_000.0]

    def backend() -> SimulatedBackend:
        return SimulatedBackend(fleet, "node-a", clock=lambda: now[0], start=1_800_000_000.0)

    a, b = backend(), backend()
    devices = a.discover()
    assert [d.device_id for d in devices] == ["node-a-nvidia-0", "node-a-nvidia-1"]
    assert devices == b.discover()
    h100 = devices[0]
    assert h100.memory_total_bytes == 80 * GIB and h100.uuid and h100.uuid.startswith("GPU-")
    first = a.read(h100)
    assert first == b.read(h100)
    assert first.compute_utilization_percent == pytest.approx(50.0)
    assert first.memory_used_bytes == 8 * GIB
    assert first.power_watts == pytest.approx(400.0)
    now[0] += 10  # a quarter sine period: peak load; heating 1 C; memory +1/6 GiB
    peak = a.read(h100)
    assert peak.compute_utilization_percent == pytest.approx(90.0)
    assert peak.temperature_celsius == pytest.approx(30 + 50 * 0.9 + 1.0)
    assert peak.memory_used_bytes == 8 * GIB + GIB // 6
    now[0] += 600  # memory growth stops at max, heating at the thermal cap
    late = a.read(h100)
    assert late.memory_used_bytes == 10 * GIB and late.temperature_celsius <= 90


def test_scripted_failures() -> None:
    fleet = parse_fleet(GOOD)
    now = [0.0]
    sim = SimulatedBackend(fleet, "node-b", clock=lambda: now[0], start=0.0)
    (mi300,) = sim.discover()
    assert sim.read(mi300).compute_utilization_percent == 10
    now[0] = 15
    with pytest.raises(BackendError) as failed:
        sim.read(mi300)
    assert failed.value.reason == "AMDSMIError"
    now[0] = 35
    with pytest.raises(ValidationError, match="exceeds memory_total_bytes"):
        sim.read(mi300)
    now[0] = 55
    assert sim.health(mi300).reason == "EccUncorrectable" and not sim.health(mi300).healthy
    assert sim.read(mi300).compute_utilization_percent == 10
    now[0] = 65
    assert sim.read(mi300).compute_utilization_percent == 90
    now[0] = 100
    assert sim.discover() == []
    with pytest.raises(DeviceLost):
        sim.read(mi300)


def test_unknown_node_is_refused() -> None:
    with pytest.raises(BackendUnavailable, match="node 'node-z' is not in the fleet file"):
        SimulatedBackend(parse_fleet(GOOD), "node-z")
