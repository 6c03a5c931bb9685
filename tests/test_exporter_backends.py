"""AMD SMI and Intel xpu-smi backends against fakes at their boundaries; backend loading."""

from __future__ import annotations

import builtins
import json
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from exo.gpu.exporter.backends import BackendUnavailable, load_backend
from exo.gpu.exporter.backends.amdsmi import AMDSMIBackend
from exo.gpu.exporter.backends.base import BackendError, DeviceLost, GuardedBackend
from exo.gpu.exporter.backends.intel import IntelBackend, parse_dump
from exo.gpu.exporter.fleet import FleetError, demo_fleet_path

GIB = 1024**3


def fake_amdsmi(ecc_uncorrectable: int = 0) -> Any:
    m = types.SimpleNamespace()
    m.AmdSmiInitFlags = types.SimpleNamespace(INIT_AMD_GPUS=2)
    m.AmdSmiMemoryType = types.SimpleNamespace(VRAM=0)
    m.AmdSmiTemperatureType = types.SimpleNamespace(EDGE=0)
    m.AmdSmiTemperatureMetric = types.SimpleNamespace(CURRENT=0)
    m.AmdSmiClkType = types.SimpleNamespace(GFX=0)
    m.amdsmi_init = lambda flags: None
    m.amdsmi_shut_down = lambda: None
    m.amdsmi_get_processor_handles = lambda: ["h0"]
    m.amdsmi_get_gpu_device_uuid = lambda h: "AMD-1234"
    m.amdsmi_get_gpu_asic_info = lambda h: {"market_name": "AMD Instinct MI300X"}
    m.amdsmi_get_gpu_memory_total = lambda h, t: 192 * GIB
    m.amdsmi_get_gpu_memory_usage = lambda h, t: 50 * GIB
    m.amdsmi_get_gpu_device_bdf = lambda h: "0000:0c:00.0"
    m.amdsmi_get_gpu_activity = lambda h: {"gfx_activity": 63, "umc_activity": 20}
    m.amdsmi_get_temp_metric = lambda h, sensor, metric: 58
    m.amdsmi_get_power_info = lambda h: {"current_socket_power": "N/A", "average_socket_power": 512}
    m.amdsmi_get_clock_info = lambda h, clk: {"clk": 2100}
    m.amdsmi_get_gpu_total_ecc_count = lambda h: {"correctable_count": 4,
                                                  "uncorrectable_count": ecc_uncorrectable}
    return m


def test_amd_identity_metrics_and_health() -> None:
    backend = AMDSMIBackend("n1", amdsmi=fake_amdsmi())
    (device,) = backend.discover()
    assert device.device_id == "n1-amd-0" and device.uuid == "AMD-1234"
    assert device.name == "AMD Instinct MI300X" and device.memory_total_bytes == 192 * GIB
    sample = backend.read(device)
    assert sample.memory_used_bytes == 50 * GIB and sample.compute_utilization_percent == 63
    assert sample.power_watts == 512  # "N/A" current power falls back to the average
    assert sample.clock_rate_mhz == 2100 and sample.temperature_celsius == 58
    assert backend.health(device).healthy
    broken = AMDSMIBackend("n1", amdsmi=fake_amdsmi(ecc_uncorrectable=1))
    assert broken.health(broken.discover()[0]).reason == "EccUncorrectable"


def test_amd_fields_the_board_does_not_report_are_absent_not_zero() -> None:
    smi = fake_amdsmi()
    smi.amdsmi_get_power_info = lambda h: {"current_socket_power": "N/A",
                                           "average_socket_power": "N/A"}
    smi.amdsmi_get_temp_metric = lambda h, sensor, metric: "N/A"
    backend = AMDSMIBackend("n1", amdsmi=smi)
    sample = backend.read(backend.discover()[0])
    assert sample.power_watts is None and sample.temperature_celsius is None
    assert sample.compute_utilization_percent == 63
    smi.amdsmi_get_gpu_activity = lambda h: {"gfx_activity": "N/A"}
    with pytest.raises(BackendError, match="no gfx_activity"):
        backend.read(backend.discover()[0])


def test_amd_import_failure_without_rocm_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_rocm(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "amdsmi":
            raise KeyError("libamd_smi.so")  # what amdsmi raises at import without ROCm
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rocm)
    with pytest.raises(BackendUnavailable, match="KeyError"):
        AMDSMIBackend("n1")


DISCOVERY = (
    '{"device_list": [{"device_id": 0, "device_name": "Intel(R) Data Center GPU Max 1550",'
    ' "uuid": "01000000-0000-0000-0000-000000290000", "pci_bdf_address": "0000:29:00.0"}]}'
)
DETAIL = '{"device_id": 0, "memory_physical_size_byte": 137438953472}'
DUMP = (
    "Timestamp, DeviceId, GPU Utilization (%), GPU Power (W), GPU Frequency (MHz), "
    "GPU Core Temperature (Celsius Degree), GPU Memory Used (MiB)\n"
    "06:14:46.000,    0, 41.50, 288.10, 1550, 52.00, 20480.00\n"
)


class FakeXpuSmi:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.dump = DUMP

    def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(list(argv))
        if argv[1] == "discovery":
            return DETAIL if "-d" in argv else DISCOVERY
        return self.dump


def test_intel_identity_and_metrics() -> None:
    runner = FakeXpuSmi()
    backend = IntelBackend("n1", runner=runner)
    (device,) = backend.discover()
    assert device.device_id == "n1-intel-0" and device.memory_total_bytes == 128 * GIB
    assert device.pci_bus_id == "0000:29:00.0"
    sample = backend.read(device)
    assert sample.compute_utilization_percent == 41.5 and sample.power_watts == 288.1
    assert sample.clock_rate_mhz == 1550 and sample.temperature_celsius == 52
    assert sample.memory_used_bytes == 20 * GIB
    assert runner.calls[-1][:2] == ["xpu-smi", "dump"]


def test_intel_missing_utilization_is_an_error_not_zero() -> None:
    runner = FakeXpuSmi()
    runner.dump = DUMP.replace("41.50", "N/A")
    backend = IntelBackend("n1", runner=runner)
    (device,) = backend.discover()
    with pytest.raises(BackendError, match="no utilization"):
        backend.read(device)


def test_intel_na_cells_are_absent_not_zero() -> None:
    runner = FakeXpuSmi()
    runner.dump = DUMP.replace("288.10", "N/A").replace("52.00", "N/A")
    backend = IntelBackend("n1", runner=runner)
    sample = backend.read(backend.discover()[0])
    assert sample.power_watts is None and sample.temperature_celsius is None
    assert sample.clock_rate_mhz == 1550
    runner.dump = DUMP.replace("20480.00", "N/A")
    with pytest.raises(BackendError, match="no memory used"):
        backend.read(backend.discover()[0])


def test_parse_dump_needs_a_sample() -> None:
    with pytest.raises(BackendError, match="no sample"):
        parse_dump("Timestamp, DeviceId\n")


def test_intel_unknown_device_is_lost() -> None:
    backend = IntelBackend("n1", runner=FakeXpuSmi())
    (device,) = backend.discover()
    backend._xpu_ids.clear()
    with pytest.raises(DeviceLost):
        backend.read(device)


def test_load_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        load_backend("cuda", node="n1")
    with pytest.raises(ValueError, match="needs a fleet file"):
        load_backend("simulated", node="n1")
    bad = tmp_path / "fleet.yaml"
    bad.write_text("nodes: []\n")
    with pytest.raises(FleetError, match="nodes"):
        load_backend("simulated", node="n1", fleet=bad)
    sim = load_backend("simulated", node="gpu-node-b", fleet=demo_fleet_path())
    assert {d.vendor.value for d in GuardedBackend(sim).discover()} == {"amd", "intel"}


def test_probe_prints_every_device_once() -> None:
    from click.testing import CliRunner

    from exo.gpu.exporter.cli import command

    result = CliRunner().invoke(command, ["--node", "gpu-node-b", "--backend", "simulated",
                                          "--fleet", str(demo_fleet_path()), "--probe"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["backend"] == "simulated"
    names = [d["identity"]["device_id"] for d in report["devices"]]
    assert names == ["gpu-node-b-amd-0", "gpu-node-b-amd-1", "gpu-node-b-intel-0"]
    assert all(d["health"]["healthy"] and "sample" in d for d in report["devices"])


def test_command_refuses_a_bad_fleet_before_touching_anything(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from exo.gpu.exporter.cli import command

    bad = tmp_path / "fleet.yaml"
    bad.write_text("nodes:\n  - name: n\n    devices:\n      - {vendor: nvidia, model: L4,"
                   " memory: 24Gi, memoryUsed: {base: -1}}\n")
    result = CliRunner().invoke(command, ["--node", "n", "--backend", "simulated",
                                          "--fleet", str(bad), "--kubeconfig",
                                          str(tmp_path / "absent")])
    assert result.exit_code == 1
    assert f"fleet file {bad}: nodes[0].devices[0].memoryUsed.base" in result.output


def test_kubeconfig_errors_name_the_problem(tmp_path: Path) -> None:
    from exo.gpu.exporter.kubeapi import KubeConfig

    with pytest.raises(ValueError, match="cannot read"):
        KubeConfig.from_kubeconfig(tmp_path / "absent")
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with pytest.raises(ValueError, match="no current-context"):
        KubeConfig.from_kubeconfig(path)
    head = "current-context: dev\ncontexts: [{name: dev, context: {cluster: c, user: u}}]\n"
    path.write_text(head + "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n")
    with pytest.raises(ValueError, match="no user named 'u'"):
        KubeConfig.from_kubeconfig(path)
    path.write_text(head + "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1/'}}]\n"
                    "users: [{name: u, user: {token: abc}}]\n")
    config = KubeConfig.from_kubeconfig(path)
    assert config.server == "http://127.0.0.1:1"
    assert config.headers() == {"Authorization": "Bearer abc"}
