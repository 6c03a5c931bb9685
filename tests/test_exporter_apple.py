"""The Apple backend on recorded command output (tests/fixtures/SOURCES.md), on any OS."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from exo.gpu.exporter.agent import AgentConfig, DeviceAgent
from exo.gpu.exporter.backends.apple import (
    POWERMETRICS,
    AppleBackend,
    CommandFailed,
    parse_powermetrics,
    parse_vm_stat,
)
from exo.gpu.exporter.backends.base import BackendError, BackendUnavailable, GuardedBackend
from exo.gpu.exporter.backends.drm_parse import ParseError
from exo.gpu.exporter.cli import probe_backend
from exo.gpu.exporter.metrics import ExporterMetrics
from test_exporter_agent import T0, Clock, MemoryAPI

M1_PRO = Path(__file__).resolve().parent / "fixtures" / "apple" / "m1-pro"
PLIST = (M1_PRO / "powermetrics.plist").read_bytes()
VM_STAT = (M1_PRO / "vm_stat.txt").read_bytes()
PAGE = 4096


class RecordedMac:
    """Answers the backend's commands from the recorded outputs; any one can be made to fail."""

    def __init__(self) -> None:
        self.outputs: dict[tuple[str, ...], bytes] = {
            ("sysctl", "-n", "machdep.cpu.brand_string"):
                (M1_PRO / "sysctl-machdep.cpu.brand_string").read_bytes(),
            ("sysctl", "-n", "hw.memsize"): (M1_PRO / "sysctl-hw.memsize").read_bytes(),
            POWERMETRICS: PLIST,
            ("vm_stat",): VM_STAT,
        }
        self.failing: dict[tuple[str, ...], str] = {}
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> bytes:
        key = tuple(argv)
        self.calls.append(key)
        if key in self.failing:
            raise CommandFailed(self.failing[key])
        return self.outputs[key]


def test_probe_reports_what_the_mac_recorded() -> None:
    report = probe_backend(GuardedBackend(AppleBackend("mac-1", runner=RecordedMac())))
    (device,) = report["devices"]
    assert device["identity"] == {
        "device_id": "mac-1-apple-0", "vendor": "apple", "name": "Apple M1 Pro",
        "memory_total_bytes": 17179869184, "node": "mac-1", "index": 0}
    sample = device["sample"]
    # idle residency 91.51 % -> 8.49 % busy; "freq_hz" 389 is MHz; GPU Power 14 mW
    assert sample["compute_utilization_percent"] == pytest.approx(8.49)
    assert sample["clock_rate_mhz"] == 389.0
    assert sample["power_watts"] == pytest.approx(0.014)
    assert sample["temperature_celsius"] is None  # only a thermal pressure level: absent
    # vm_stat: (active 485320 + wired 715958 + compressor 0) pages x 4096 bytes
    assert sample["memory_used_bytes"] == (485320 + 715958 + 0) * PAGE


def test_energy_over_the_window_wins_over_the_power_field() -> None:
    newer = PLIST.replace(b"<key>idle_ratio</key>",
                          b"<key>gpu_energy</key>\n\t\t<integer>254</integer>\n"
                          b"\t\t<key>idle_ratio</key>")
    # 254 mJ over 507.81 ms
    assert parse_powermetrics(newer).power_watts == pytest.approx(0.254 / 0.50781)


def test_the_last_of_several_nul_separated_samples_is_used() -> None:
    second = PLIST.replace(b"<real>0.9151</real>", b"<real>0.25</real>")
    assert parse_powermetrics(PLIST + b"\0" + second + b"\0").utilization_percent == 75.0


@pytest.mark.parametrize(("data", "says"), [
    (b"", "no output"),
    (b"<plist><dict><key>gpu</key>", "not a property list"),
    (PLIST.replace(b"<key>gpu</key>", b"<key>cpu</key>"), "no gpu dictionary"),
    (PLIST.replace(b"<key>idle_ratio</key>", b"<key>idle</key>"), "no gpu.idle_ratio"),
    (PLIST.replace(b"<real>0.9151</real>", b"<real>1.5</real>"), "outside 0..1"),
    (PLIST.replace(b"<real>0.9151</real>", b"<string>N/A</string>"), "no gpu.idle_ratio"),
])
def test_malformed_powermetrics_output_is_refused(data: bytes, says: str) -> None:
    with pytest.raises(ParseError, match=says):
        parse_powermetrics(data)


def test_absent_power_and_clock_stay_absent() -> None:
    bare = PLIST.replace(b"<key>gpu_power</key>", b"<key>cpu_power</key>").replace(
        b"<key>freq_hz</key>", b"<key>freq</key>")
    sample = parse_powermetrics(bare)
    assert sample.power_watts is None and sample.clock_mhz is None


@pytest.mark.parametrize(("text", "says"), [
    ("", "no 'Mach Virtual Memory Statistics' header"),
    (VM_STAT.decode().replace("Pages wired down:", "Pages wired:"), "no Pages wired down"),
    (VM_STAT.decode().replace("485320.", "lots."), "not a vm_stat line"),
])
def test_malformed_vm_stat_is_refused(text: str, says: str) -> None:
    with pytest.raises(ParseError, match=says):
        parse_vm_stat(text)


def test_runs_only_on_macos() -> None:
    with pytest.raises(BackendUnavailable, match="only on macOS"):
        AppleBackend("n1", platform="linux")


@pytest.mark.parametrize(("command", "output", "reason"), [
    (POWERMETRICS, None, "PowermetricsFailed"),
    (POWERMETRICS, b"powermetrics: must be invoked as the superuser\n", "PowermetricsGarbled"),
    (("vm_stat",), None, "VmStatFailed"),
])
def test_a_failing_command_fails_the_read_with_its_reason(
        command: tuple[str, ...], output: bytes | None, reason: str) -> None:
    mac = RecordedMac()
    backend = AppleBackend("mac-1", runner=mac)
    (device,) = backend.discover()
    if output is None:
        mac.failing[command] = f"{command[0]} exited 1: must be invoked as the superuser"
    else:
        mac.outputs[command] = output
    with pytest.raises(BackendError) as caught:
        backend.read(device)
    assert caught.value.reason == reason


def test_bad_sysctl_fails_discovery() -> None:
    mac = RecordedMac()
    mac.outputs[("sysctl", "-n", "hw.memsize")] = b"sixteen gigs\n"
    with pytest.raises(BackendError, match=r"hw\.memsize is not a byte count"):
        AppleBackend("mac-1", runner=mac).discover()


async def test_powermetrics_exiting_non_zero_turns_the_gpu_not_ready_then_it_recovers() -> None:
    mac = RecordedMac()
    clock = Clock()
    api = MemoryAPI()
    agent = DeviceAgent(AgentConfig(node="mac-1"),
                        GuardedBackend(AppleBackend("mac-1", runner=mac), 2.0), api,
                        ExporterMetrics("mac-1"), clock=clock, rng=random.Random(7))
    await agent.poll_once()

    def ready() -> tuple[str, str, str]:
        cond = {c["type"]: c for c in api.status_of("mac-1-apple-0")["conditions"]}["Ready"]
        return cond["status"], cond["reason"], cond["message"]

    assert ready()[:2] == ("True", "DeviceReady")
    mac.failing[POWERMETRICS] = "powermetrics exited 1: unable to open the kernel sampler"
    clock.now = T0 + 6
    await agent.poll_once()  # the agent survives the failure ...
    status, reason, message = ready()
    assert (status, reason) == ("False", "PowermetricsFailed")
    assert "unable to open the kernel sampler" in message
    errors = agent.metrics.backend_errors.labels("apple", "PowermetricsFailed")._value.get()
    assert errors == 1
    del mac.failing[POWERMETRICS]
    clock.now = T0 + 12
    await agent.poll_once()  # ... and the next poll reads again
    assert ready()[:2] == ("True", "DeviceReady")
    assert agent.alive()
