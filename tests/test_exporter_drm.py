"""The DRM sysfs backend on trees recorded from real devices (tests/fixtures/SOURCES.md).

Expected values are written next to the file and raw text they come from, with the unit
conversion, and every table row first checks that the fixture still holds that raw text: the
test compares what the exporter reports with what the device recorded.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from exo.gpu.exporter.agent import AgentConfig, DeviceAgent
from exo.gpu.exporter.backends.base import (
    BackendError,
    BackendUnavailable,
    DeviceLost,
    GuardedBackend,
)
from exo.gpu.exporter.backends.drm import DrmBackend
from exo.gpu.exporter.backends.drm_parse import (
    ParseError,
    busy_from_idle_residency,
    hertz_to_mhz,
    parse_dpm_current_mhz,
    parse_int,
    parse_kgsl_busy_percentage,
    parse_kgsl_gpubusy,
    parse_meminfo,
    parse_uevent,
    parse_xe_idle_status,
)
from exo.gpu.exporter.backends.sysfs import FileTree, Missing, Unreadable
from exo.gpu.exporter.cli import command
from exo.gpu.exporter.metrics import ExporterMetrics
from test_exporter_agent import T0, MemoryAPI

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "drm"
KIB = 1024

# kernel documentation meminfo (tests/fixtures/SOURCES.md): MemTotal 32858820 kB,
# MemAvailable 27214312 kB -> total 33647431680 B, used (32858820 - 27214312) kB = 5779976192 B
SHARED_TOTAL = 32858820 * KIB
SHARED_USED = (32858820 - 27214312) * KIB

# fixture, device, {field: (file relative to the fixture or None, raw text, expected value)}
EXPECTED: list[tuple[str, dict[str, Any], dict[str, tuple[str | None, str | None, Any]]]] = [
    ("amdgpu-vega56",
     {"device_id": "n1-amd-0", "vendor": "amd", "name": "AMD Radeon RX Vega 56/64",
      "pci_bus_id": "0000:0b:00.0"},
     {
         "compute_utilization_percent": ("sys/class/drm/card0/device/gpu_busy_percent", "0", 0.0),
         "memory_total_bytes": ("sys/class/drm/card0/device/mem_info_vram_total", "8573157376",
                                8573157376),
         "memory_used_bytes": ("sys/class/drm/card0/device/mem_info_vram_used", "16613376",
                               16613376),
         # temp1 is labelled "edge": 38000 millidegrees
         "temperature_celsius": ("sys/class/drm/card0/device/hwmon/hwmon4/temp1_input", "38000",
                                 38.0),
         # 8000000 microwatts
         "power_watts": ("sys/class/drm/card0/device/hwmon/hwmon4/power1_average", "8000000",
                         8.0),
         # freq1 is labelled "sclk": 26000000 Hz
         "clock_rate_mhz": ("sys/class/drm/card0/device/hwmon/hwmon4/freq1_input", "26000000",
                            26.0),
     }),
    ("procfs-vega64-kabylake",
     {"device_id": "n1-amd-0", "vendor": "amd", "name": "AMD Radeon RX Vega 56/64",
      "uuid": "0123456789abcdef", "pci_bus_id": "0000:09:00.0"},
     {
         "compute_utilization_percent": ("sys/class/drm/card0/device/gpu_busy_percent", "4", 4.0),
         "memory_used_bytes": ("sys/class/drm/card0/device/mem_info_vram_used", "1490378752",
                               1490378752),
         # no hwmon in this recording: absent, never 0
         "temperature_celsius": (None, None, None),
         "power_watts": (None, None, None),
         # no hwmon: the level marked * in pp_dpm_sclk ("0: 852Mhz *")
         "clock_rate_mhz": ("sys/class/drm/card0/device/pp_dpm_sclk", None, 852.0),
     }),
    ("intel-tigerlake-xe",
     {"device_id": "n1-intel-0", "vendor": "intel",
      "name": "Intel Iris Xe Graphics (Tiger Lake-LP)", "pci_bus_id": "0000:00:02.0",
      "memory_total_bytes": SHARED_TOTAL},
     {
         # first sample: the GT's state, gt-c6 (power-gated) -> 0 %
         "compute_utilization_percent": (
             "sys/class/drm/card0/device/tile0/gt0/gtidle/idle_status", "gt-c6", 0.0),
         "clock_rate_mhz": ("sys/class/drm/card0/device/tile0/gt0/freq0/act_freq", "0", 0.0),
         "memory_total_bytes": ("proc/meminfo", None, SHARED_TOTAL),
         "memory_used_bytes": ("proc/meminfo", None, SHARED_USED),
         # integrated: no hwmon of its own
         "temperature_celsius": (None, None, None),
         "power_watts": (None, None, None),
     }),
    ("intel-cometlake-i915",
     {"device_id": "n1-intel-0", "vendor": "intel", "name": "Intel UHD Graphics (Comet Lake-U)",
      "pci_bus_id": "0000:00:02.0"},
     {
         # no RC6 residency recorded: the GT's state, awake (actual 300 MHz) -> 100 %
         "compute_utilization_percent": ("sys/class/drm/card0/gt_act_freq_mhz", "300", 100.0),
         "clock_rate_mhz": ("sys/class/drm/card0/gt_act_freq_mhz", "300", 300.0),
         "memory_used_bytes": ("proc/meminfo", None, SHARED_USED),
         "temperature_celsius": (None, None, None),
         "power_watts": (None, None, None),
     }),
    ("adreno320-kgsl",
     {"device_id": "n1-qualcomm-0", "vendor": "qualcomm", "name": "Qualcomm Adreno",
      "memory_total_bytes": SHARED_TOTAL},
     {
         # 667051 busy of 1007167 cycles
         "compute_utilization_percent": ("sys/class/kgsl/kgsl-3d0/gpubusy", "667051 1007167",
                                         100.0 * 667051 / 1007167),
         "memory_used_bytes": ("proc/meminfo", None, SHARED_USED),
         "clock_rate_mhz": (None, None, None),
         "temperature_celsius": (None, None, None),
         "power_watts": (None, None, None),
     }),
]


def backend_on(root: Path, **kwargs: Any) -> DrmBackend:
    return DrmBackend("n1", root / "sys", root / "proc", **kwargs)


def probe(root: Path) -> dict[str, Any]:
    result = CliRunner().invoke(command, [
        "--node", "n1", "--backend", "drm", "--sysfs-root", str(root / "sys"),
        "--procfs-root", str(root / "proc"), "--probe"])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.output)
    return report


@pytest.mark.parametrize(("fixture", "identity", "fields"), EXPECTED,
                         ids=[row[0] for row in EXPECTED])
def test_probe_reports_what_the_device_recorded(fixture: str, identity: dict[str, Any],
                                                fields: dict[str, Any]) -> None:
    root = FIXTURES / fixture
    for rel, raw, _ in fields.values():
        if rel is not None:
            assert (root / rel).is_file(), rel
        if raw is not None:
            assert (root / rel).read_text().strip() == raw, rel
    report = probe(root)
    assert report["backend"] == "drm" and report["requested"] == "drm"
    device = report["devices"][0]
    for key, value in identity.items():
        assert device["identity"][key] == value, key
    for key, (_, _, expected) in fields.items():
        if expected is None:
            assert device["sample"][key] is None, f"{key} must be absent, never 0"
        else:
            assert device["sample"][key] == pytest.approx(expected), key
    assert device["health"]["healthy"]


def test_partial_tree_reports_the_unmeasurable_card_and_keeps_the_other() -> None:
    report = probe(FIXTURES / "procfs-vega64-kabylake")
    by_id = {d["identity"]["device_id"]: d for d in report["devices"]}
    assert set(by_id) == {"n1-amd-0", "n1-intel-0"}  # connectors card1-DP-* are not cards
    assert "sample" in by_id["n1-amd-0"]
    assert by_id["n1-intel-0"]["read_error"]["reason"] == "UtilizationNotExposed"
    assert by_id["n1-intel-0"]["identity"]["name"] == "Intel UHD Graphics 620"


@pytest.mark.parametrize(("fixture", "driver"), [("intel-a380-i915", "i915"),
                                                 ("intel-b580-xe", "xe")])
def test_discrete_intel_without_a_memory_size_is_skipped_with_the_reason(
        fixture: str, driver: str) -> None:
    report = probe(FIXTURES / fixture)
    assert report["devices"] == []
    (skipped,) = report["skipped"]
    assert skipped["where"] == "class/drm/card1"
    assert f"discrete {driver} card" in skipped["reason"]
    assert "--backend intel" in skipped["reason"]


def test_discrete_xe_with_a_vram_size_is_registered_and_says_memory_is_not_exposed(
        tmp_path: Path) -> None:
    root = copy(FIXTURES / "intel-b580-xe", tmp_path)
    tile = root / "sys/class/drm/card1/device/tile0"
    (tile / "physical_vram_size_bytes").write_text("12884901888\n")  # variation: 12 GiB
    backend = backend_on(root)
    (device,) = backend.discover()
    assert device.name == "Intel Arc B580" and device.memory_total_bytes == 12884901888
    with pytest.raises(BackendError) as caught:
        backend.read(device)
    assert caught.value.reason == "MemoryNotExposed"
    assert "--backend intel" in str(caught.value)


# -- Intel utilization from the idle-residency counter ----------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_intel_busy_is_the_share_of_the_interval_outside_idle(tmp_path: Path) -> None:
    root = copy(FIXTURES / "intel-tigerlake-xe", tmp_path)
    residency = root / "sys/class/drm/card0/device/tile0/gt0/gtidle/idle_residency_ms"
    recorded = int(residency.read_text())  # 5708894 ms
    clock = Clock()
    backend = backend_on(root, clock=clock)
    (device,) = backend.discover()
    assert backend.read(device).compute_utilization_percent == 0.0  # state: gt-c6
    clock.now += 2.0
    residency.write_text(f"{recorded + 500}\n")  # idle 0.5 s of 2 s -> 75 % busy
    assert backend.read(device).compute_utilization_percent == pytest.approx(75.0)
    clock.now += 2.0
    residency.write_text(f"{recorded + 2500}\n")  # idle the whole 2 s -> 0 %
    assert backend.read(device).compute_utilization_percent == pytest.approx(0.0)
    clock.now += 2.0
    residency.write_text("12\n")  # the counter restarted (driver reload): the state again
    (residency.parent / "idle_status").write_text("gt-c0\n")
    assert backend.read(device).compute_utilization_percent == 100.0


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "reason", "says"), [
    ("garbled", "SysfsGarbled", "not an integer: 'busy'"),
    ("empty", "SysfsGarbled", "empty, expected an integer"),
    ("directory", "SysfsUnreadable", "is a directory"),
    ("binary", "SysfsUnreadable", "not text"),
    ("missing", "UtilizationNotExposed", "gpu_busy_percent is not published"),
])
def test_bad_files_fail_the_read_with_the_file_and_the_reason(
        tmp_path: Path, change: str, reason: str, says: str) -> None:
    root = copy(FIXTURES / "amdgpu-vega56", tmp_path)
    busy = root / "sys/class/drm/card0/device/gpu_busy_percent"
    backend = backend_on(root)
    (device,) = backend.discover()
    if change == "garbled":
        busy.write_text("busy\n")
    elif change == "empty":
        busy.write_text("")
    elif change == "directory":
        busy.unlink()
        busy.mkdir()
    elif change == "binary":
        busy.write_bytes(b"\xff\xfe4\n")
    else:
        busy.unlink()
    with pytest.raises(BackendError) as caught:
        backend.read(device)
    assert caught.value.reason == reason
    assert says in str(caught.value) and "card0 (amdgpu 0000:0b:00.0)" in str(caught.value)


def test_a_garbled_optional_file_is_an_error_not_an_absent_field(tmp_path: Path) -> None:
    root = copy(FIXTURES / "amdgpu-vega56", tmp_path)
    (root / "sys/class/drm/card0/device/hwmon/hwmon4/temp1_input").write_text("38.5C\n")
    backend = backend_on(root)
    (device,) = backend.discover()
    with pytest.raises(BackendError, match="temp1_input: not an integer") as caught:
        backend.read(device)
    assert caught.value.reason == "SysfsGarbled"


def test_a_vanished_card_is_lost_then_no_longer_discovered(tmp_path: Path) -> None:
    root = copy(FIXTURES / "amdgpu-vega56", tmp_path)
    backend = backend_on(root)
    (device,) = backend.discover()
    shutil.rmtree(root / "sys/class/drm/card0")
    with pytest.raises(DeviceLost, match="is gone"):
        backend.read(device)
    assert backend.health(device).reason == "DeviceLost"
    assert backend.discover() == []


def test_an_identity_file_garbled_after_discovery_keeps_the_device_and_reports_it(
        tmp_path: Path) -> None:
    root = copy(FIXTURES / "amdgpu-vega56", tmp_path)
    backend = backend_on(root)
    (device,) = backend.discover()
    (root / "sys/class/drm/card0/device/mem_info_vram_total").write_text("lots\n")
    assert backend.discover() == [device]  # not vanished ...
    with pytest.raises(BackendError) as caught:  # ... but not Ready, with the reason
        backend.read(device)
    assert caught.value.reason == "SysfsGarbled" and "mem_info_vram_total" in str(caught.value)


def test_a_card_never_sized_is_skipped_with_the_reason(tmp_path: Path) -> None:
    root = copy(FIXTURES / "amdgpu-vega56", tmp_path)
    (root / "sys/class/drm/card0/device/mem_info_vram_total").unlink()
    backend = backend_on(root)
    assert backend.discover() == []
    (skipped,) = backend.skipped
    assert "VRAM size not published" in skipped.reason


@pytest.mark.parametrize(("meminfo", "reason"), [
    (None, "SysfsUnreadable"),
    ("MemTotal:  1000 kB\nMemFree: lots\n", "SysfsGarbled"),
    ("MemTotal:  1000 kB\nMemFree:  10 kB\n", "MemoryNotExposed"),
])
def test_shared_memory_needs_a_readable_meminfo_with_memavailable(
        tmp_path: Path, meminfo: str | None, reason: str) -> None:
    root = copy(FIXTURES / "adreno320-kgsl", tmp_path)
    backend = backend_on(root)
    (device,) = backend.discover()
    if meminfo is None:
        (root / "proc/meminfo").unlink()
    else:
        (root / "proc/meminfo").write_text(meminfo)
    with pytest.raises(BackendError) as caught:
        backend.read(device)
    assert caught.value.reason == reason


def test_kgsl_reads_every_file_its_driver_writes(tmp_path: Path) -> None:
    """The other kgsl files, written in the formats of kgsl_pwrctrl.c (a variation)."""
    root = copy(FIXTURES / "adreno320-kgsl", tmp_path)
    kgsl = root / "sys/class/kgsl/kgsl-3d0"
    (kgsl / "gpu_model").write_text("Adreno650v2\n")
    (kgsl / "gpu_busy_percentage").write_text("37 %\n")  # wins over gpubusy
    (kgsl / "devfreq").mkdir()
    (kgsl / "devfreq/cur_freq").write_text("587000000\n")
    (kgsl / "gpuclk").write_text("257000000\n")  # devfreq wins
    (kgsl / "temp").write_text("\n")  # kgsl prints nothing without a thermal zone
    zones = root / "sys/class/thermal"
    for zone, kind, temp in (("thermal_zone3", "gpuss-0-usr", "41200"),
                             ("thermal_zone4", "gpuss-1-usr", "43900"),
                             ("thermal_zone9", "cpu-1-0-usr", "77000")):
        (zones / zone).mkdir(parents=True)
        (zones / zone / "type").write_text(kind + "\n")
        (zones / zone / "temp").write_text(temp + "\n")
    backend = backend_on(root)
    (device,) = backend.discover()
    assert device.name == "Qualcomm Adreno 650v2"
    sample = backend.read(device)
    assert sample.compute_utilization_percent == 37.0
    assert sample.clock_rate_mhz == 587.0
    assert sample.temperature_celsius == 43.9  # the hottest gpu zone, not the CPU's
    assert sample.power_watts is None
    (kgsl / "temp").write_text("39000\n")
    assert backend.read(device).temperature_celsius == 39.0


def test_other_drivers_are_skipped_with_what_to_do(tmp_path: Path) -> None:
    root = tmp_path / "node"
    for card, driver in (("card0", "ast"), ("card1", "nvidia"), ("card2", "msm_drm")):
        (root / "sys/class/drm" / card / "device").mkdir(parents=True)
        (root / "sys/class/drm" / card / "device/uevent").write_text(f"DRIVER={driver}\n")
    (root / "sys/class/drm/card3/device").mkdir(parents=True)  # no uevent at all
    backend = backend_on(root)
    assert backend.discover() == []
    reasons = {s.where: s.reason for s in backend.skipped}
    assert "not one this backend reads" in reasons["class/drm/card0"]
    assert "--backend nvml" in reasons["class/drm/card1"]
    assert "kgsl" in reasons["class/drm/card2"]
    assert "cannot identify the driver" in reasons["class/drm/card3"]


def test_a_root_that_is_not_sysfs_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="not a sysfs tree"):
        DrmBackend("n1", tmp_path)


def test_indexes_follow_pci_addresses_not_card_numbers(tmp_path: Path) -> None:
    root = copy(FIXTURES / "amdgpu-vega56", tmp_path)
    drm = root / "sys/class/drm"
    shutil.copytree(drm / "card0", drm / "card1")
    uevent = drm / "card1/device/uevent"
    uevent.write_text(uevent.read_text().replace("0000:0b:00.0", "0000:03:00.0"))
    (device_a, device_b) = backend_on(root).discover()
    assert (device_a.index, device_a.pci_bus_id) == (0, "0000:03:00.0")
    assert (device_b.index, device_b.pci_bus_id) == (1, "0000:0b:00.0")


# -- parsers and the reading layer ----------------------------------------------------------------


@pytest.mark.parametrize(("parse", "text", "expected"), [
    (parse_int, "38000", 38000),
    (parse_int, "-273150", -273150),
    (hertz_to_mhz, "1249000000", 1249.0),
    (parse_dpm_current_mhz, "0: 500Mhz\n1: 31Mhz *\n2: 2219Mhz", 31.0),
    (parse_kgsl_busy_percentage, "37 %", 37.0),
    (parse_kgsl_gpubusy, "      0       0", 0.0),
    (parse_kgsl_gpubusy, " 531575 1002262", 100.0 * 531575 / 1002262),
    (parse_xe_idle_status, "gt-c0", False),
])
def test_parsers(parse: Any, text: str, expected: Any) -> None:
    assert parse(text) == pytest.approx(expected)


@pytest.mark.parametrize(("parse", "text", "says"), [
    (parse_int, "", "empty"),
    (parse_int, "12 34", "not an integer"),
    (parse_int, "0x10", "not an integer"),
    (hertz_to_mhz, "-5", "negative frequency"),
    (parse_dpm_current_mhz, "0: 500Mhz\n1: 800Mhz", "no level marked current"),
    (parse_dpm_current_mhz, "0: fast *", "not a clock level line"),
    (parse_dpm_current_mhz, "", "empty"),
    (parse_kgsl_busy_percentage, "37", "expected '<n> %'"),
    (parse_kgsl_gpubusy, "667051", "expected '<busy> <total>'"),
    (parse_kgsl_gpubusy, "10 5", "not a fraction"),
    (parse_xe_idle_status, "gt-c3", "expected gt-c0 or gt-c6"),
    (parse_meminfo, "MemTotal 1000 kB", "not a meminfo line"),
])
def test_parsers_refuse_malformed_text(parse: Any, text: str, says: str) -> None:
    with pytest.raises(ParseError, match=says):
        parse(text)


def test_meminfo_and_uevent() -> None:
    meminfo = parse_meminfo((FIXTURES / "adreno320-kgsl/proc/meminfo").read_text())
    assert meminfo["MemAvailable"] == 27214312 * KIB and meminfo["HugePages_Total"] == 0
    uevent = parse_uevent("DRIVER=amdgpu\nPCI_SLOT_NAME=0000:0b:00.0\ngarbage\n")
    assert uevent == {"DRIVER": "amdgpu", "PCI_SLOT_NAME": "0000:0b:00.0"}


def test_idle_residency_interval() -> None:
    assert busy_from_idle_residency(1000, 1500, 2.0) == 75.0
    assert busy_from_idle_residency(1000, 3100, 2.0) == 0.0  # sampled apart: clamped
    assert busy_from_idle_residency(1000, 900, 2.0) is None  # counter went backwards
    assert busy_from_idle_residency(1000, 1000, 0.0) is None


def test_file_tree(tmp_path: Path) -> None:
    tree = FileTree(tmp_path)
    (tmp_path / "padded").write_bytes(b"amdgpu\n" + b"\0" * 4089)  # as some recorders pad
    assert tree.text("padded") == "amdgpu"
    with pytest.raises(Missing, match="nothere: no such file"):
        tree.text("nothere")
    assert tree.optional_text("nothere") is None
    (tmp_path / "dir").mkdir()
    with pytest.raises(Unreadable, match="is a directory"):
        tree.text("dir")
    with pytest.raises(Missing):
        tree.text("padded/below")
    assert tree.entries("nothere") == [] and tree.link_name("padded") is None


# -- the agent on the DRM backend: one bad device never costs the others ----------------------


def two_card_node(tmp_path: Path) -> Path:
    """The Vega 56 as card0 and the Tiger Lake GT as card1 of one node (a composed variation)."""
    root = copy(FIXTURES / "amdgpu-vega56", tmp_path)
    shutil.copytree(FIXTURES / "intel-tigerlake-xe/sys/class/drm/card0",
                    root / "sys/class/drm/card1")
    shutil.copytree(FIXTURES / "intel-tigerlake-xe/proc", root / "proc")
    return root


def ready_of(api: Any, name: str) -> tuple[str, str]:
    ready = {c["type"]: c for c in api.status_of(name)["conditions"]}["Ready"]
    return ready["status"], ready["reason"]


async def test_agent_reports_a_bad_card_not_ready_and_keeps_the_other(tmp_path: Path) -> None:
    root = two_card_node(tmp_path)
    clock = Clock()
    clock.now = T0
    backend = GuardedBackend(backend_on(root, clock=clock, wall=clock), 2.0)
    api = MemoryAPI()
    agent = DeviceAgent(AgentConfig(node="n1", vanish_grace_s=60), backend, api,
                        ExporterMetrics("n1"), clock=clock, rng=random.Random(7))

    async def poll(seconds: float = 6.0) -> None:
        clock.now += seconds
        await agent.poll_once()

    await agent.poll_once()
    assert ready_of(api, "n1-amd-0") == ("True", "DeviceReady")
    assert ready_of(api, "n1-intel-0") == ("True", "DeviceReady")
    intel_writes = api.status_of("n1-intel-0")["lastHeartbeatTime"]

    busy = root / "sys/class/drm/card0/device/gpu_busy_percent"
    for broken, reason in ((b"busy\n", "SysfsGarbled"), (b"\xff\xfe\n", "SysfsUnreadable")):
        busy.write_bytes(broken)
        await poll()
        assert ready_of(api, "n1-amd-0") == ("False", reason)
        assert "gpu_busy_percent" in {c["type"]: c for c in api.status_of("n1-amd-0")[
            "conditions"]}["Ready"]["message"]
        assert ready_of(api, "n1-intel-0") == ("True", "DeviceReady")
    busy.write_text("0\n")
    await poll()
    assert ready_of(api, "n1-amd-0") == ("True", "DeviceReady")
    await poll(30)
    assert api.status_of("n1-intel-0")["lastHeartbeatTime"] != intel_writes  # still reporting

    shutil.rmtree(root / "sys/class/drm/card0")  # the card falls off the bus
    await poll()
    assert ready_of(api, "n1-amd-0") == ("False", "DeviceLost")
    await poll()  # rediscovered without it
    assert ready_of(api, "n1-amd-0") == ("False", "DeviceVanished")
    assert ready_of(api, "n1-intel-0") == ("True", "DeviceReady")
    await poll(61)
    assert "n1-amd-0" not in api.objects and "n1-intel-0" in api.objects
    assert agent.alive()


def test_a_class_directory_that_cannot_be_listed_fails_discovery_with_the_reason(
        tmp_path: Path) -> None:
    root = copy(FIXTURES / "adreno320-kgsl", tmp_path)
    backend = backend_on(root)
    kgsl = root / "sys/class/kgsl"
    shutil.rmtree(kgsl)
    kgsl.write_text("not a directory\n")  # listing it fails with ENOTDIR ... as a file: no kgsl
    assert backend.discover() == []
    kgsl.unlink()
    kgsl.symlink_to(kgsl)  # a loop: listing fails with ELOOP
    with pytest.raises(BackendError) as caught:
        backend.discover()
    assert caught.value.reason == "SysfsUnreadable" and "class/kgsl" in str(caught.value)


def test_an_unreadable_file_of_one_card_skips_that_card_only(tmp_path: Path) -> None:
    root = two_card_node(tmp_path)
    name = root / "sys/class/drm/card0/device/hwmon/hwmon4/name"
    name.unlink()
    name.mkdir()  # reading it fails
    backend = backend_on(root)
    (device,) = backend.discover()
    assert device.device_id == "n1-intel-0"
    (skipped,) = backend.skipped
    assert skipped.where == "class/drm/card0" and "hwmon4/name: is a directory" in skipped.reason
