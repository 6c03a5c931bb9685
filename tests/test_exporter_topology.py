"""Links as each backend reports them (fakes at the pynvml / amdsmi / xpu-smi boundary, the
simulated fleet), and how the agent writes them into GPUDevice status."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from exo.gpu.exporter.agent import WriteReason, summarize, write_decision
from exo.gpu.exporter.backends.amdsmi import AMDSMIBackend
from exo.gpu.exporter.backends.intel import IntelBackend, parse_topology_matrix
from exo.gpu.exporter.backends.nvml import NVMLBackend, pcie_root_of
from exo.gpu.exporter.backends.simulated import SimulatedBackend
from exo.gpu.exporter.fleet import FleetError, load_fleet, parse_fleet
from exo.gpu.k8s.models import GPUDevice
from exo.gpu.telemetry_protocol import GPUMetrics
from exo.gpu.topology import DeviceLinks, LinkType, PCIeLevel, PeerLink, link_score
from test_exporter_agent import L4, make_agent, run
from test_exporter_backends import fake_amdsmi
from test_exporter_nvml import FakeGPU, NVMLError, fake_pynvml

GIB = 1024**3
DATA = Path(__file__).resolve().parent.parent / "operator" / "exo" / "gpu" / "data"


# ------------------------------------------------------------------------------------- NVML


def nvml_with_links(gpus: list[FakeGPU], nvlinks: dict[int, list[str | None]],
                    levels: dict[tuple[int, int], int]) -> Any:
    """``nvlinks``: per GPU index, what each of its links reaches: a bus id, None for an
    NVSwitch; links beyond the list are not supported. ``levels``: NVML common-ancestor level per
    pair (missing: NOT_SUPPORTED)."""
    m = fake_pynvml(gpus)
    m.NVML_FEATURE_ENABLED = 1
    m.NVML_NVLINK_MAX_LINKS = 6
    m.NVML_NVLINK_DEVICE_TYPE_SWITCH = 2

    def link(h: FakeGPU, i: int) -> str | None:
        reached = nvlinks.get(h.index, [])
        if i >= len(reached):
            raise NVMLError(3)
        return reached[i]

    m.nvmlDeviceGetNvLinkState = lambda h, i: (link(h, i), 1)[1]
    m.nvmlDeviceGetNvLinkRemoteDeviceType = lambda h, i: 2 if link(h, i) is None else 0
    m.nvmlDeviceGetNvLinkRemotePciInfo = lambda h, i: types.SimpleNamespace(
        busId=str(link(h, i)).encode())

    def ancestor(a: FakeGPU, b: FakeGPU) -> int:
        if a.lost or b.lost:
            raise NVMLError(15)
        level = levels.get((a.index, b.index), levels.get((b.index, a.index)))
        if level is None:
            raise NVMLError(3)
        return level

    m.nvmlDeviceGetTopologyCommonAncestor = ancestor
    return m


def four_gpus() -> list[FakeGPU]:
    return [FakeGPU(i, f"GPU-{i}", "NVIDIA A100", 80 * GIB, f"00000000:{0x18 + i:02X}:00.0")
            for i in range(4)]


def test_nvml_counts_nvlinks_per_peer_and_reads_pcie_levels(tmp_path: Path) -> None:
    gpus = four_gpus()
    buses = [g.bus for g in gpus]
    # GPU 0 and 1: four NVLinks (NVML spells the remote bus id with 4 domain digits here).
    short = [b[4:] for b in buses]
    fake = nvml_with_links(gpus, {0: [short[1]] * 4, 1: [buses[0]] * 4},
                           {(0, 1): 10, (0, 2): 40, (0, 3): 50, (1, 2): 40, (1, 3): 50,
                            (2, 3): 20})
    backend = NVMLBackend("n", nvml=fake, sysfs=tmp_path)
    devices = backend.discover()
    links = backend.topology(devices)
    peers = {p.peer: p for p in links["n-nvidia-0"].peers}
    assert peers["n-nvidia-1"] == PeerLink("n-nvidia-1", LinkType.NVLINK,
                                           PCIeLevel.SINGLE_SWITCH, 4)
    assert peers["n-nvidia-2"] == PeerLink("n-nvidia-2", LinkType.PCIE, PCIeLevel.NUMA_NODE)
    assert peers["n-nvidia-3"] == PeerLink("n-nvidia-3", LinkType.PCIE, PCIeLevel.SYSTEM)
    assert {p.peer: p.type for p in links["n-nvidia-2"].peers}["n-nvidia-3"] is LinkType.PCIE
    assert link_score(peers["n-nvidia-1"]) == 50 + 400


def test_nvml_nvswitch_pairs_take_the_fewer_switch_links(tmp_path: Path) -> None:
    gpus = four_gpus()
    fake = nvml_with_links(gpus, {0: [None] * 6, 1: [None] * 4, 2: [None] * 6},
                           {(i, j): 40 for i in range(4) for j in range(4)})
    backend = NVMLBackend("n", nvml=fake, sysfs=tmp_path)
    links = backend.topology(backend.discover())
    peers = {p.peer: p for p in links["n-nvidia-0"].peers}
    assert (peers["n-nvidia-1"].type, peers["n-nvidia-1"].links) == (LinkType.NVSWITCH, 4)
    assert (peers["n-nvidia-2"].type, peers["n-nvidia-2"].links) == (LinkType.NVSWITCH, 6)
    assert peers["n-nvidia-3"].type is LinkType.PCIE  # GPU 3 has no switch links


def test_nvml_a_pair_nvml_cannot_place_is_left_out(tmp_path: Path) -> None:
    gpus = four_gpus()[:2]
    backend = NVMLBackend("n", nvml=nvml_with_links(gpus, {}, {}), sysfs=tmp_path)
    links = backend.topology(backend.discover())
    assert links["n-nvidia-0"].peers == ()


def test_nvml_a_lost_gpu_fails_the_topology_read(tmp_path: Path) -> None:
    from exo.gpu.exporter.backends.base import DeviceLost

    gpus = four_gpus()[:2]
    backend = NVMLBackend("n", nvml=nvml_with_links(gpus, {}, {(0, 1): 10}), sysfs=tmp_path)
    devices = backend.discover()
    gpus[1].lost = True
    with pytest.raises(DeviceLost):
        backend.topology(devices)


def test_pcie_root_and_numa_from_sysfs(tmp_path: Path) -> None:
    target = tmp_path / "devices" / "pci0000:17" / "0000:17:01.0" / "0000:18:00.0"
    target.mkdir(parents=True)
    (target / "numa_node").write_text("1\n")
    pci = tmp_path / "bus"
    pci.mkdir()
    (pci / "0000:18:00.0").symlink_to(target)
    assert pcie_root_of("00000000:18:00.0", pci) == "pci0000:17"
    assert pcie_root_of("00000000:99:00.0", pci) is None
    gpus = [FakeGPU(0, "GPU-0", "NVIDIA A100", 80 * GIB, "00000000:18:00.0")]
    backend = NVMLBackend("n", nvml=nvml_with_links(gpus, {}, {}), sysfs=pci)
    links = backend.topology(backend.discover())
    assert links["n-nvidia-0"] == DeviceLinks(1, "pci0000:17", ())


# -------------------------------------------------------------------------------------- AMD


def amd_with_links(kinds: dict[tuple[str, str], tuple[int, int]], numa: dict[str, int]) -> Any:
    m = fake_amdsmi()
    m.amdsmi_get_processor_handles = lambda: ["h0", "h1", "h2"]
    m.amdsmi_get_gpu_device_uuid = lambda h: f"AMD-{h}"

    def link_type(a: str, b: str) -> dict[str, int]:
        kind = kinds.get((a, b)) or kinds.get((b, a))
        if kind is None:
            raise RuntimeError("AMDSMI_STATUS_NOT_SUPPORTED")
        return {"hops": kind[1], "type": kind[0]}

    m.amdsmi_topo_get_link_type = link_type
    m.amdsmi_topo_get_link_weight = lambda a, b: 15 if link_type(a, b)["type"] == 2 else 40
    m.amdsmi_topo_get_numa_node_number = lambda h: numa[h]
    return m


def test_amd_xgmi_and_pcie_with_levels_from_numa() -> None:
    smi = amd_with_links({("h0", "h1"): (2, 1), ("h0", "h2"): (1, 3), ("h1", "h2"): (2, 2)},
                         {"h0": 0, "h1": 0, "h2": 1})
    backend = AMDSMIBackend("n", amdsmi=smi)
    links = backend.topology(backend.discover())
    peers = {p.peer: p for p in links["n-amd-0"].peers}
    assert peers["n-amd-1"] == PeerLink("n-amd-1", LinkType.XGMI, PCIeLevel.NUMA_NODE, 1, 1, 15)
    assert peers["n-amd-2"] == PeerLink("n-amd-2", LinkType.PCIE, PCIeLevel.SYSTEM, weight=40)
    two_hops = {p.peer: p for p in links["n-amd-1"].peers}["n-amd-2"]
    assert (two_hops.type, two_hops.hops, link_score(two_hops)) == (LinkType.XGMI, 2, 10 + 50)
    assert links["n-amd-2"].numa_node == 1


def test_amd_without_topology_support_reports_no_peers() -> None:
    backend = AMDSMIBackend("n", amdsmi=amd_with_links({}, {"h0": 0, "h1": 0, "h2": 0}))
    links = backend.topology(backend.discover())
    assert all(report.peers == () for report in links.values())


# ------------------------------------------------------------------------------------ Intel

MATRIX = """\
             GPU 0/0  GPU 0/1  GPU 1/0  GPU 1/1  GPU 2/0  CPU Affinity
GPU 0/0      S        MDF      XL8      XL8      SYS      0-55,112-167
GPU 0/1      MDF      S        XL8      XL8      SYS      0-55,112-167
GPU 1/0      XL8      XL8      S        MDF      NODE     0-55,112-167
GPU 1/1      XL8      XL8      MDF      S        NODE     0-55,112-167
GPU 2/0      SYS      SYS      NODE     NODE     S        56-111,168-223
"""


def test_intel_matrix_best_cell_among_tiles() -> None:
    links = parse_topology_matrix(MATRIX)
    assert links[(0, 1)] == PeerLink("1", LinkType.XELINK, None, 8)
    assert links[(1, 2)] == PeerLink("2", LinkType.PCIE, PCIeLevel.NUMA_NODE)
    assert links[(0, 2)] == PeerLink("2", LinkType.PCIE, PCIeLevel.SYSTEM)
    assert (0, 0) not in links  # MDF: another tile of the same card


def test_intel_backend_names_its_devices() -> None:
    import json

    listing = {"device_list": [{"device_id": i, "device_name": "Intel Max 1550",
                                "uuid": f"u{i}", "pci_bdf_address": f"0000:{i}a:00.0"}
                               for i in range(3)]}

    def runner(argv: Any) -> str:
        argv = list(argv)
        if argv[1:] == ["discovery", "-j"]:
            return json.dumps(listing)
        if argv[1] == "discovery":
            return json.dumps({"memory_physical_size_byte": 128 * GIB})
        if argv[1:] == ["topology", "-m"]:
            return MATRIX
        raise AssertionError(argv)

    backend = IntelBackend("n", runner=runner)
    links = backend.topology(backend.discover())
    assert {p.peer: p.type for p in links["n-intel-0"].peers} == {
        "n-intel-1": LinkType.XELINK, "n-intel-2": LinkType.PCIE}


# -------------------------------------------------------------------------------- simulated


def test_the_example_fleet_links_as_its_comments_say() -> None:
    fleet = load_fleet(DATA / "fleet-topology.yaml")
    seen = {}
    for node in fleet.node_names():
        backend = SimulatedBackend(fleet, node, clock=lambda: 0.0, start=0.0)
        links = backend.topology(backend.discover())
        first = sorted(links)[0]
        seen[node] = {p.peer.rsplit("-", 1)[1]: (p.type.value, p.links, p.level)
                      for p in links[first].peers}
    assert seen["dgx-h100"]["1"] == ("NVSwitch", 18, PCIeLevel.SINGLE_SWITCH)
    assert seen["dgx-h100"]["2"] == ("NVSwitch", 18, PCIeLevel.NUMA_NODE)   # own root, NUMA 0
    assert seen["dgx-h100"]["4"] == ("NVSwitch", 18, PCIeLevel.SYSTEM)
    assert seen["nvlink-pairs"]["1"] == ("NVLink", 12, PCIeLevel.SINGLE_SWITCH)
    assert seen["nvlink-pairs"]["2"] == ("PCIe", 0, PCIeLevel.NUMA_NODE)
    assert seen["pcie-switch-pairs"]["1"] == ("PCIe", 0, PCIeLevel.SINGLE_SWITCH)
    assert seen["pcie-switch-pairs"]["2"] == ("PCIe", 0, PCIeLevel.SYSTEM)
    assert seen["mi300x-xgmi"]["7"] == ("XGMI", 1, PCIeLevel.SYSTEM)


def linked_fleet(failures: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    gpu = {"vendor": "nvidia", "model": "NVIDIA A100", "memory": "80Gi", "numaNode": 0}
    return {"nodes": [{"name": "n1", "devices": [{**gpu, "failures": failures or []}, gpu, gpu],
                       "links": [{"devices": [0, 1], "type": "NVLink", "count": 4}]}]}


def test_a_link_down_leaves_the_pcie_path() -> None:
    fleet = parse_fleet(linked_fleet([{"kind": "linkdown", "at": 10, "until": 20}]))
    clock = [0.0]
    backend = SimulatedBackend(fleet, "n1", clock=lambda: clock[0], start=0.0)
    devices = backend.discover()
    up = {p.peer: p for p in backend.topology(devices)["n1-nvidia-1"].peers}
    assert up["n1-nvidia-0"] == PeerLink("n1-nvidia-0", LinkType.NVLINK, PCIeLevel.NUMA_NODE, 4)
    clock[0] = 15.0
    down = {p.peer: p for p in backend.topology(devices)["n1-nvidia-1"].peers}
    assert down["n1-nvidia-0"] == PeerLink("n1-nvidia-0", LinkType.PCIE, PCIeLevel.NUMA_NODE)


@pytest.mark.parametrize(("links", "entry", "reason"), [
    ([{"devices": [0, 5], "type": "NVLink", "count": 2}], "nodes[0]", "position 5"),
    ([{"devices": [0], "type": "NVLink", "count": 2}], "nodes[0].links[0].devices", "at least 2"),
    ([{"devices": [0, 0], "type": "NVLink", "count": 2}], "nodes[0].links[0]", "twice"),
    ([{"devices": [0, 1], "type": "NVLink"}], "nodes[0].links[0]", "needs a count"),
    ([{"devices": [0, 1], "type": "PCIe", "count": 1, "level": "System"}], "nodes[0].links[0]",
     "no count"),
    ([{"devices": [0, 1], "type": "PCIe"}], "nodes[0].links[0]", "needs a level"),
    ([{"devices": [0, 1], "type": "Infiniband", "count": 1}], "nodes[0].links[0].type",
     "Infiniband"),
    ([{"devices": [0, 1], "type": "NVLink", "count": 2},
      {"devices": [1, 0, 2], "type": "XGMI", "count": 1}], "nodes[0]", "already have a fabric"),
])
def test_bad_links_in_a_fleet_file_are_refused_naming_the_entry(
        links: list[dict[str, Any]], entry: str, reason: str) -> None:
    data = linked_fleet()
    data["nodes"][0]["links"] = links
    with pytest.raises(FleetError) as error:
        parse_fleet(data, "fleet.yaml")
    assert error.value.entry == entry, error.value
    assert reason in error.value.reason, error.value


# ------------------------------------------------------------------------------------ agent


def sample(used: int = 0) -> GPUMetrics:
    return GPUMetrics(device_id="d", timestamp=0.0, memory_used_bytes=used,
                      memory_total_bytes=80 * GIB, compute_utilization_percent=10.0)


@pytest.mark.parametrize(("last_write", "now", "new", "changed", "reason"), [
    (None, 0.0, None, True, WriteReason.INITIAL),          # links alone make the first write
    (0.0, 3.0, sample(), True, None),                       # the rate limit comes first
    (0.0, 6.0, sample(), True, WriteReason.TOPOLOGY),
    (0.0, 6.0, None, True, WriteReason.TOPOLOGY),           # no sample: links still written
    (0.0, 6.0, sample(), False, None),                      # nothing left its band
])
def test_write_decision_with_links(last_write: float | None, now: float,
                                   new: GPUMetrics | None, changed: bool,
                                   reason: WriteReason | None) -> None:
    assert write_decision(sample(), new, now, last_write, topology_changed=changed) == reason


def agent_devices(failures: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [{**L4, "numaNode": 0, "failures": failures or []}, {**L4, "numaNode": 0}]


async def test_the_agent_writes_links_once_and_again_when_they_change() -> None:
    devices = agent_devices([{"kind": "linkdown", "at": 40, "until": 100}])
    agent, api, clock = make_agent(devices, rediscover_interval_s=10.0)
    fleet_links = [{"devices": [0, 1], "type": "NVLink", "count": 2, "level": "SingleSwitch"}]
    # make_agent builds the fleet from devices only: give the backend its node's links.
    backend = agent.backend.backend  # type: ignore[attr-defined]
    agent.backend.backend = SimulatedBackend(  # type: ignore[attr-defined]
        parse_fleet({"nodes": [{"name": "n1", "devices": devices, "links": fleet_links}]}),
        "n1", clock=backend.clock, start=backend.start)
    await run(agent, clock, 30)
    status = api.status_of("n1-nvidia-0")
    assert status["topology"] == {"numaNode": 0, "peers": [
        {"device": "n1-nvidia-1", "link": "NVLink", "level": "SingleSwitch", "links": 2}]}
    topology_writes = [r for r in agent.write_log if r.reason == WriteReason.TOPOLOGY]
    assert topology_writes == []  # written with the first status, unchanged since
    await run(agent, clock, 30)  # t=30..58: the link goes down at 40, seen at the next discovery
    peers = api.status_of("n1-nvidia-0")["topology"]["peers"]
    assert peers == [{"device": "n1-nvidia-1", "link": "PCIe", "level": "SingleSwitch"}]
    assert {r.device for r in agent.write_log if r.reason == WriteReason.TOPOLOGY} == {
        "n1-nvidia-0", "n1-nvidia-1"}
    assert GPUDevice.model_validate(api.objects["n1-nvidia-0"]).links() == DeviceLinks(
        0, None, (PeerLink("n1-nvidia-1", LinkType.PCIE, PCIeLevel.SINGLE_SWITCH),))
    writes = summarize(agent.write_log)
    assert writes["n1-nvidia-0"] <= 5  # initial, topology, heartbeats: still deadbanded


async def test_a_failing_topology_read_keeps_the_links_last_written() -> None:
    from exo.gpu.exporter.backends.base import BackendError

    agent, api, clock = make_agent(agent_devices(), rediscover_interval_s=10.0)
    await run(agent, clock, 4)
    before = api.status_of("n1-nvidia-0").get("topology")
    assert before == {"numaNode": 0, "peers": [
        {"device": "n1-nvidia-1", "link": "PCIe", "level": "NUMANode"}]}

    def broken(devices: Any) -> Any:
        raise BackendError("simulated: topology failed", "TopologyError")

    agent.backend.backend.topology = broken  # type: ignore[attr-defined]
    await run(agent, clock, 40)
    assert api.status_of("n1-nvidia-0")["topology"] == before
    assert agent.metrics.backend_errors.labels("simulated", "TopologyError")._value.get() >= 1
