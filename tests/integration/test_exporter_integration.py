"""The exporter and the GPUDevice CRD against a real kube-apiserver (the local control plane).

Exporters for simulated nodes run their agent against the API server with an injected clock, so a
simulated minute takes as long as its API requests, not sixty seconds. Node names carry a per-test
suffix so tests never see each other's objects.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import random
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from exo.gpu.devcluster.cluster import wait_for
from exo.gpu.exporter.agent import AgentConfig, DeviceAgent, summarize
from exo.gpu.exporter.backends import GuardedBackend
from exo.gpu.exporter.backends.simulated import SimulatedBackend
from exo.gpu.exporter.fleet import parse_fleet
from exo.gpu.exporter.kubeapi import GPUDeviceAPI, KubeConfig
from exo.gpu.exporter.metrics import ExporterMetrics
from exo.gpu.k8s.models import LABEL_NODE, GPUDevice

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _fleet(suffix: str) -> dict[str, Any]:
    return {
        "nodes": [
            {
                "name": f"it-a-{suffix}",
                "devices": [
                    {"vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3", "memory": "80Gi",
                     "utilization": {"pattern": "constant", "value": 30},
                     "memoryUsed": {"base": "20Gi"}},
                    {"vendor": "nvidia", "model": "NVIDIA L4", "memory": "24Gi",
                     "utilization": {"pattern": "step",
                                     "steps": [{"at": 0, "value": 10}, {"at": 20, "value": 90}]},
                     "memoryUsed": {"base": "2Gi"}},
                ],
            },
            {
                "name": f"it-b-{suffix}",
                "devices": [
                    {"vendor": "amd", "model": "AMD Instinct MI300X", "memory": "192Gi",
                     "memoryUsed": {"base": "64Gi"}},
                    {"vendor": "intel", "model": "Intel Data Center GPU Max 1550",
                     "memory": "128Gi"},
                ],
            },
            {
                "name": f"it-c-{suffix}",
                "devices": [
                    {"vendor": "apple", "model": "Apple M2 Ultra", "memory": "192Gi"},
                    {"vendor": "qualcomm", "model": "Qualcomm Adreno X1-85", "memory": "32Gi",
                     "failures": [{"kind": "disappear", "at": 30}]},
                ],
            },
        ]
    }


class Exporters:
    """Agents for every node of a fleet, sharing one clock, against the real API server."""

    def __init__(self, kubeconfig: str, fleet_data: dict[str, Any], clock: Clock,
                 vanish_grace_s: float = 300.0) -> None:
        self.clock = clock
        fleet = parse_fleet(fleet_data)
        self.apis: list[GPUDeviceAPI] = []
        self.agents: list[DeviceAgent] = []
        for node in fleet.node_names():
            api = GPUDeviceAPI(KubeConfig.load(kubeconfig))
            backend = GuardedBackend(SimulatedBackend(fleet, node, clock=clock, start=T0), 5.0)
            config = AgentConfig(node=node, vanish_grace_s=vanish_grace_s)
            self.apis.append(api)
            self.agents.append(DeviceAgent(config, backend, api, ExporterMetrics(node),
                                           clock=clock, rng=random.Random(node)))

    async def run_for(self, seconds: float, step: float = 2.0) -> None:
        """Poll every agent every ``step`` simulated seconds for ``seconds``."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            await asyncio.gather(*(agent.poll_once() for agent in self.agents))
            self.clock.now += step

    async def close(self) -> None:
        for agent, api in zip(self.agents, self.apis, strict=True):
            await api.close()
            await agent.aclose()


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
async def exporters(kube_cluster: Any, suffix: str) -> AsyncIterator[Callable[..., Exporters]]:
    made: list[Exporters] = []

    def make(fleet_data: dict[str, Any] | None = None, **options: Any) -> Exporters:
        group = Exporters(kube_cluster.kubeconfig, fleet_data or _fleet(suffix), Clock(),
                          **options)
        made.append(group)
        return group

    yield make
    for group in made:
        await group.close()
        for agent in group.agents:
            kube_cluster.kubectl("delete", "gpudevices", "-l", f"{LABEL_NODE}={agent.node}",
                                 "--wait=false", check=False)


def _devices(kube_cluster: Any, node: str) -> dict[str, dict[str, Any]]:
    out = kube_cluster.kubectl("get", "gpudevices", "-l", f"{LABEL_NODE}={node}", "-o", "json")
    return {item["metadata"]["name"]: item for item in json.loads(out.stdout)["items"]}


# ----------------------------------------------------------------------------------------------
# The exporter against the API server
# ----------------------------------------------------------------------------------------------


async def test_three_nodes_create_exactly_their_devices(
    kube_cluster: Any, exporters: Callable[..., Exporters], suffix: str
) -> None:
    group = exporters()
    await group.run_for(4)
    expected = {
        f"it-a-{suffix}": {f"it-a-{suffix}-nvidia-0", f"it-a-{suffix}-nvidia-1"},
        f"it-b-{suffix}": {f"it-b-{suffix}-amd-0", f"it-b-{suffix}-intel-0"},
        f"it-c-{suffix}": {f"it-c-{suffix}-apple-0", f"it-c-{suffix}-qualcomm-0"},
    }
    for node, names in expected.items():
        objects = _devices(kube_cluster, node)
        assert set(objects) == names
        for obj in objects.values():
            assert obj["spec"]["node"] == node
            assert obj["metadata"]["labels"][LABEL_NODE] == node
            assert obj["metadata"]["labels"]["gpu.exo.dev/vendor"] == obj["spec"]["vendor"]
            assert obj["spec"]["computeCapacity"] > 0
            conditions = {c["type"]: c for c in obj["status"]["conditions"]}
            assert conditions["Ready"]["status"] == "True"
            assert conditions["Healthy"]["status"] == "True"
            assert obj["status"]["metrics"]["memoryUsedBytes"] <= obj["spec"]["memoryTotalBytes"]
    h100 = _devices(kube_cluster, f"it-a-{suffix}")[f"it-a-{suffix}-nvidia-0"]
    assert h100["spec"]["memoryTotalBytes"] == 80 * 1024**3
    assert h100["status"]["metrics"]["memoryUsedBytes"] == 20 * 1024**3
    assert h100["status"]["metrics"]["computeUtilizationPercent"] == 30
    assert h100["status"]["display"]["memory"] == "20.0/80.0 GiB"
    # A second exporter generation (restart) adopts the objects instead of duplicating them.
    again = exporters()
    await again.run_for(2)
    assert set(_devices(kube_cluster, f"it-a-{suffix}")) == expected[f"it-a-{suffix}"]


async def test_kubectl_get_gpudevices_reads_well(
    kube_cluster: Any, exporters: Callable[..., Exporters], suffix: str
) -> None:
    group = exporters()
    await group.run_for(2)
    out = kube_cluster.kubectl("get", "gpudevices", "-l", f"{LABEL_NODE}=it-a-{suffix}").stdout
    lines = out.strip().splitlines()
    assert lines[0].split() == ["NAME", "NODE", "VENDOR", "MODEL", "MEMORY", "UTIL%", "TEMP(C)",
                                "READY", "AGE"]
    row = next(line for line in lines if line.startswith(f"it-a-{suffix}-nvidia-0 "))
    assert f"it-a-{suffix}" in row and "nvidia" in row and "NVIDIA H100 80GB HBM3" in row
    assert "20.0/80.0 GiB" in row and " True " in row
    assert " 30 " in row  # utilization, percent
    # Short name and category work too.
    by_short = kube_cluster.kubectl("get", "gd", "-l", f"{LABEL_NODE}=it-a-{suffix}", "-o", "name")
    by_category = kube_cluster.kubectl("get", "gpu", "-l", f"{LABEL_NODE}=it-a-{suffix}",
                                       "-o", "name")
    assert by_short.stdout.split() == by_category.stdout.split()
    assert len(by_short.stdout.split()) == 2
    wide = kube_cluster.kubectl("get", "gpudevices", "-o", "wide",
                                "-l", f"{LABEL_NODE}=it-a-{suffix}").stdout
    assert "HEALTHY" in wide.splitlines()[0] and "UUID" in wide.splitlines()[0]


async def test_status_writes_follow_deadband_and_heartbeat(
    kube_cluster: Any, exporters: Callable[..., Exporters], suffix: str
) -> None:
    fleet = {"nodes": [{"name": f"it-w-{suffix}", "devices": [
        # Steady: only the first write and heartbeats (every 27..30 s).
        {"vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3", "memory": "80Gi",
         "utilization": {"pattern": "constant", "value": 40}},
        # Busy: utilization swings 60 points every 8 s, but never more than one write per 5 s.
        {"vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3", "memory": "80Gi",
         "utilization": {"pattern": "sine", "base": 50, "amplitude": 30, "periodSeconds": 8}},
    ]}]}
    group = exporters(fleet)
    await group.run_for(61, step=2.0)  # one simulated minute, t=0..60, at a 2 s poll: 31 polls
    agent = group.agents[0]
    writes = summarize(agent.write_log)
    steady, busy = f"it-w-{suffix}-nvidia-0", f"it-w-{suffix}-nvidia-1"

    def gaps(device: str) -> list[float]:
        times = [r.time for r in agent.write_log if r.device == device and r.kind == "status"]
        return [b - a for a, b in itertools.pairwise(times)]

    # Steady: the first write, then one heartbeat every 27..30 s (30 s minus up to 10 % jitter),
    # rounded up to the 2 s poll.
    assert writes[steady] == 3
    assert all(27.0 <= gap <= 30.0 for gap in gaps(steady)), gaps(steady)
    # Busy: every poll leaves the deadband, but writes are at least 5 s apart (6 s at a 2 s poll).
    assert writes[busy] == 11
    assert all(gap >= 5.0 for gap in gaps(busy)), gaps(busy)
    # What the server holds is the last sample written, not a newer unwritten one.
    obj = _devices(kube_cluster, f"it-w-{suffix}")[steady]
    assert obj["status"]["metrics"]["computeUtilizationPercent"] == 40
    assert agent.metrics.api_writes.labels("status", "ok")._value.get() == sum(writes.values())


async def test_vanishing_device_is_reflected_then_removed(
    kube_cluster: Any, exporters: Callable[..., Exporters], suffix: str
) -> None:
    group = exporters(vanish_grace_s=60.0)
    node = f"it-c-{suffix}"
    gone = f"{node}-qualcomm-0"
    await group.run_for(28)
    assert _devices(kube_cluster, node)[gone]["status"]["conditions"]
    # The device disappears at t=30; rediscovery runs every 30 s.
    await group.run_for(10)
    obj = _devices(kube_cluster, node)[gone]
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DeviceVanished")
    assert f"{node}-apple-0" in _devices(kube_cluster, node)
    # After the grace period the object is deleted; the other device stays.
    await group.run_for(62)
    assert set(_devices(kube_cluster, node)) == {f"{node}-apple-0"}


async def test_controller_fields_survive_exporter_writes(
    kube_cluster: Any, exporters: Callable[..., Exporters], suffix: str
) -> None:
    group = exporters()
    await group.run_for(2)
    name = f"it-a-{suffix}-nvidia-0"
    # Another writer (the controller) sets a score and a condition; a user cordons the device.
    patch = {"status": {"score": 0.75, "conditions": [
        {"type": "Stale", "status": "False", "reason": "Fresh", "message": "",
         "lastTransitionTime": "2027-01-15T08:00:00Z"}]}}
    kube_cluster.kubectl("patch", "gpudevice", name, "--subresource=status", "--type=merge",
                         "-p", json.dumps(patch))
    kube_cluster.kubectl("patch", "gpudevice", name, "--type=merge",
                         "-p", json.dumps({"spec": {"unschedulable": True}}))
    await group.run_for(40)  # heartbeat writes happen with a stale resourceVersion -> 409 -> retry
    obj = _devices(kube_cluster, f"it-a-{suffix}")[name]
    assert obj["status"]["score"] == 0.75
    assert {c["type"] for c in obj["status"]["conditions"]} == {"Ready", "Healthy", "Stale"}
    assert obj["spec"]["unschedulable"] is True
    results = {(r.kind, r.result) for r in group.agents[0].write_log if r.device == name}
    assert ("status", "conflict") in results and ("status", "ok") in results


# ----------------------------------------------------------------------------------------------
# The API server refuses invalid GPUDevice objects (one test per rule)
# ----------------------------------------------------------------------------------------------


def _valid(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "gpu.exo.dev/v1alpha1",
        "kind": "GPUDevice",
        "metadata": {"name": name, "labels": {LABEL_NODE: "hand-node"}},
        "spec": {"node": "hand-node", "vendor": "apple", "index": 0, "model": "Apple M2 Ultra",
                 "memoryTotalBytes": 1024**3, "computeCapacity": 27.2},
    }


def _apply(kube_cluster: Any, tmp_path: Path, obj: dict[str, Any], *extra: str) -> Any:
    path = tmp_path / f"{uuid.uuid4().hex}.yaml"
    path.write_text(yaml.safe_dump(obj))
    return kube_cluster.kubectl("create", "-f", str(path), *extra, check=False)


def _status_update(kube_cluster: Any, name: str, status: dict[str, Any]) -> Any:
    return kube_cluster.kubectl("patch", "gpudevice", name, "--subresource=status",
                                "--type=merge", "-p", json.dumps({"status": status}), check=False)


@pytest.fixture
def hand_device(kube_cluster: Any, tmp_path: Path) -> Any:
    name = f"hand-{uuid.uuid4().hex[:8]}"
    created = _apply(kube_cluster, tmp_path, _valid(name))
    assert created.returncode == 0, created.stderr
    yield name
    kube_cluster.kubectl("delete", "gpudevice", name, "--wait=false", check=False)


METRICS = {"timestamp": "2027-01-15T08:00:00Z", "memoryUsedBytes": 1024, "temperatureCelsius": 50,
           "computeUtilizationPercent": 10, "powerWatts": 20, "clockRateMHz": 1000}


def test_valid_hand_registered_device_is_accepted(kube_cluster: Any, hand_device: str) -> None:
    result = _status_update(kube_cluster, hand_device, {"metrics": METRICS})
    assert result.returncode == 0, result.stderr


def test_accepts_metrics_without_temperature_power_and_clock(kube_cluster: Any,
                                                             hand_device: str) -> None:
    """Fields a driver does not expose are absent on the wire, and the schema allows that."""
    absent = {k: v for k, v in METRICS.items()
              if k not in ("temperatureCelsius", "powerWatts", "clockRateMHz")}
    result = _status_update(kube_cluster, hand_device, {"metrics": absent})
    assert result.returncode == 0, result.stderr
    out = kube_cluster.kubectl("get", "gpudevice", hand_device, "-o", "json").stdout
    sample = GPUDevice.model_validate(json.loads(out)).latest_sample()
    assert sample is not None and sample.memory_used_bytes == 1024
    assert (sample.temperature_celsius, sample.power_watts, sample.clock_rate_mhz) == (
        None, None, None)


def test_refuses_negative_memory(kube_cluster: Any, tmp_path: Path) -> None:
    obj = _valid(f"bad-{uuid.uuid4().hex[:8]}")
    obj["spec"]["memoryTotalBytes"] = -1
    result = _apply(kube_cluster, tmp_path, obj)
    assert result.returncode != 0
    assert "spec.memoryTotalBytes" in result.stderr


def test_refuses_negative_memory_used(kube_cluster: Any, hand_device: str) -> None:
    result = _status_update(kube_cluster, hand_device, {"metrics": {**METRICS,
                                                                    "memoryUsedBytes": -5}})
    assert result.returncode != 0
    assert "status.metrics.memoryUsedBytes" in result.stderr


def test_refuses_utilization_above_100(kube_cluster: Any, hand_device: str) -> None:
    result = _status_update(kube_cluster, hand_device,
                            {"metrics": {**METRICS, "computeUtilizationPercent": 101}})
    assert result.returncode != 0
    assert "computeUtilizationPercent" in result.stderr
    assert "100" in result.stderr


def test_refuses_unknown_vendor(kube_cluster: Any, tmp_path: Path) -> None:
    obj = _valid(f"bad-{uuid.uuid4().hex[:8]}")
    obj["spec"]["vendor"] = "3dfx"
    result = _apply(kube_cluster, tmp_path, obj)
    assert result.returncode != 0
    assert "spec.vendor" in result.stderr and "Unsupported value" in result.stderr


def test_refuses_missing_node(kube_cluster: Any, tmp_path: Path) -> None:
    obj = _valid(f"bad-{uuid.uuid4().hex[:8]}")
    del obj["spec"]["node"]
    result = _apply(kube_cluster, tmp_path, obj)
    assert result.returncode != 0
    assert "spec.node" in result.stderr and "Required value" in result.stderr


def test_refuses_memory_used_above_total(kube_cluster: Any, hand_device: str) -> None:
    result = _status_update(kube_cluster, hand_device,
                            {"metrics": {**METRICS, "memoryUsedBytes": 1024**3 + 1}})
    assert result.returncode != 0
    assert "memoryUsedBytes must not exceed spec.memoryTotalBytes" in result.stderr


def test_refuses_changing_the_node(kube_cluster: Any, hand_device: str) -> None:
    result = kube_cluster.kubectl("patch", "gpudevice", hand_device, "--type=merge",
                                  "-p", json.dumps({"spec": {"node": "elsewhere"}}), check=False)
    assert result.returncode != 0
    assert "spec.node is immutable" in result.stderr


def test_refuses_condition_without_reason(kube_cluster: Any, hand_device: str) -> None:
    condition = {"type": "Ready", "status": "True", "reason": "",
                 "lastTransitionTime": "2027-01-15T08:00:00Z"}
    result = _status_update(kube_cluster, hand_device, {"conditions": [condition]})
    assert result.returncode != 0
    assert "reason" in result.stderr


def test_models_parse_what_the_server_returns(kube_cluster: Any, hand_device: str) -> None:
    _status_update(kube_cluster, hand_device, {"metrics": METRICS})
    out = kube_cluster.kubectl("get", "gpudevice", hand_device, "-o", "json").stdout
    device = GPUDevice.model_validate(json.loads(out))
    sample = device.latest_sample()
    assert sample is not None and sample.memory_used_bytes == 1024
    assert device.to_device_info().device_id == hand_device
    assert copy.deepcopy(device.to_api())["spec"]["unschedulable"] is False


# ----------------------------------------------------------------------------------------------
# The real command, its credentials and its shutdown
# ----------------------------------------------------------------------------------------------


def test_kubeconfig_with_inline_credentials(kube_cluster: Any, tmp_path: Path) -> None:
    doc = yaml.safe_load(Path(kube_cluster.kubeconfig).read_text())
    base = Path(kube_cluster.kubeconfig).parent
    cluster, user = doc["clusters"][0]["cluster"], doc["users"][0]["user"]
    for entry, key in ((cluster, "certificate-authority"), (user, "client-certificate"),
                       (user, "client-key")):
        entry[f"{key}-data"] = base64.b64encode((base / entry.pop(key)).read_bytes()).decode()
    inline = tmp_path / "kubeconfig"
    inline.write_text(yaml.safe_dump(doc))

    async def list_all() -> list[GPUDevice]:
        api = GPUDeviceAPI(KubeConfig.load(inline))
        try:
            return await api.list("no-such-node")
        finally:
            await api.close()

    assert asyncio.run(list_all()) == []


def test_exporter_command_serves_and_stops_on_sigterm(kube_cluster: Any, tmp_path: Path,
                                                      suffix: str) -> None:
    node = f"it-cmd-{suffix}"
    fleet_path = tmp_path / "fleet.yaml"
    fleet_path.write_text(yaml.safe_dump({"nodes": [{"name": node, "devices": [
        {"vendor": "nvidia", "model": "NVIDIA L4", "memory": "24Gi"},
        {"vendor": "intel", "model": "Intel Data Center GPU Max 1100", "memory": "48Gi"}]}]}))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "exo.gpu.cli", "exporter", "--node", node, "--backend",
         "simulated", "--fleet", str(fleet_path), "--poll-interval", "0.5", "--kubeconfig",
         kube_cluster.kubeconfig, "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: len(_devices(kube_cluster, node)) == 2, timeout=60,
                 what="the exporter's GPUDevice objects")
        ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status == 200
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert f'DCGM_FI_DEV_FB_FREE{{Hostname="{node}"'.encode() in body
        assert b'exo_gpu_exporter_api_writes_total{kind="create",result="ok"} 2.0' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, output
    assert "shutting down" in output
    kube_cluster.kubectl("delete", "gpudevices", "-l", f"{LABEL_NODE}={node}", check=False)


def test_exporter_command_reports_a_recorded_adreno_through_the_drm_backend(
        kube_cluster: Any, suffix: str) -> None:
    """A recorded kgsl tree (tests/fixtures/drm/adreno320-kgsl) becomes a GPUDevice whose
    temperature, power and clock are absent on the API server, not 0."""
    node = f"it-drm-{suffix}"
    root = Path(__file__).resolve().parent.parent / "fixtures" / "drm" / "adreno320-kgsl"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "exo.gpu.cli", "exporter", "--node", node, "--backend", "drm",
         "--sysfs-root", str(root / "sys"), "--procfs-root", str(root / "proc"),
         "--poll-interval", "0.5", "--kubeconfig", kube_cluster.kubeconfig,
         "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    name = f"{node}-qualcomm-0"
    try:
        def reported() -> dict[str, Any] | None:
            device = _devices(kube_cluster, node).get(name)
            return device if device and device.get("status", {}).get("metrics") else None

        wait_for(lambda: reported() is not None, timeout=60, what="the Adreno's metrics")
        device = reported()
        assert device is not None
        metrics = device["status"]["metrics"]
        assert metrics["computeUtilizationPercent"] == pytest.approx(66.2)
        assert not {"temperatureCelsius", "powerWatts", "clockRateMHz"} & set(metrics)
        ready = {c["type"]: c for c in device["status"]["conditions"]}["Ready"]
        assert ready["status"] == "True"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b'exo_gpu_exporter_backend_info{backend="drm",requested="drm"} 1.0' in body
        assert b"DCGM_FI_DEV_GPU_UTIL{" in body and b"DCGM_FI_DEV_GPU_TEMP{" not in body
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, output
    kube_cluster.kubectl("delete", "gpudevices", "-l", f"{LABEL_NODE}={node}", check=False)


def test_bad_fleet_file_stops_the_command_with_the_reason(tmp_path: Path,
                                                          kube_cluster: Any) -> None:
    fleet_path = tmp_path / "fleet.yaml"
    fleet_path.write_text(yaml.safe_dump({"nodes": [{"name": "n", "devices": [
        {"vendor": "nvidia", "model": "L4", "memory": "24Gi", "memoryUsed": {"base": "30Gi"}}]}]}))
    done = subprocess.run(
        [sys.executable, "-m", "exo.gpu.cli", "exporter", "--node", "n", "--backend",
         "simulated", "--fleet", str(fleet_path), "--kubeconfig", kube_cluster.kubeconfig],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 1
    assert str(fleet_path) in done.stderr and "nodes[0].devices[0]" in done.stderr
    assert "above the total memory" in done.stderr
    assert kube_cluster.kubectl("get", "gpudevices", "-l", f"{LABEL_NODE}=n",
                                "-o", "name").stdout == ""
