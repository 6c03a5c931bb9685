"""``--backend auto`` on every recorded fixture, and its order of preference.

The vendor-library candidates (NVML, AMD SMI, xpu-smi) are replaced by stand-ins that behave as
on a node without those libraries, or with them, so the choice does not depend on what the test
machine has; the DRM and Apple candidates are the real backends on recorded trees and outputs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import exo.gpu.exporter.backends as backends
from exo.gpu.exporter.backends import auto_factories
from exo.gpu.exporter.backends.apple import AppleBackend
from exo.gpu.exporter.backends.auto import AUTO_ORDER, choose_backend
from exo.gpu.exporter.backends.base import Backend, BackendUnavailable, DeviceHealth
from exo.gpu.exporter.cli import command
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor
from test_exporter_apple import RecordedMac

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "drm"
GIB = 1024**3


def unavailable(why: str) -> Callable[[], Backend]:
    def factory() -> Backend:
        raise BackendUnavailable(why)

    return factory


class OneGPU:
    """A vendor-library backend that finds one device (what NVML says on an NVIDIA node)."""

    def __init__(self, name: str, hang: threading.Event | None = None) -> None:
        self.name = name
        self.hang = hang

    def discover(self) -> list[GPUDeviceInfo]:
        if self.hang is not None:
            self.hang.wait(10)
        return [GPUDeviceInfo(device_id=f"n1-{self.name}-0", vendor=Vendor.NVIDIA,
                              name="NVIDIA L4", memory_total_bytes=24 * GIB)]

    def read(self, device: GPUDeviceInfo) -> GPUMetrics:
        raise NotImplementedError

    def health(self, device: GPUDeviceInfo) -> DeviceHealth:
        raise NotImplementedError

    def close(self) -> None:
        return None


NO_LIBRARIES = {
    "nvml": unavailable("nvml: nvmlInit failed (NVML Shared Library Not Found)"),
    "amd": unavailable("amd: cannot import amdsmi (KeyError: 'libamd_smi.so')"),
    "intel": unavailable("intel: xpu-smi is not on PATH"),
    "apple": unavailable("apple: runs only on macOS (this is linux)"),
}


def node(fixture: str, **replace: Callable[[], Backend]) -> list[tuple[str, Any]]:
    root = FIXTURES / fixture
    factories = dict(auto_factories("n1", root / "sys", root / "proc"))
    factories.update(NO_LIBRARIES)
    factories.update(replace)
    return [(name, factories[name]) for name in AUTO_ORDER]


@pytest.mark.parametrize(("fixture", "vendors"), [
    ("amdgpu-vega56", ["amd"]),
    ("procfs-vega64-kabylake", ["amd", "intel"]),
    ("intel-tigerlake-xe", ["intel"]),
    ("intel-cometlake-i915", ["intel"]),
    ("adreno320-kgsl", ["qualcomm"]),
])
def test_auto_chooses_drm_on_every_fixture_with_a_reportable_gpu(
        fixture: str, vendors: list[str]) -> None:
    choice = choose_backend(node(fixture), timeout=2.0)
    try:
        assert choice.backend.name == "drm"
        assert [n for n, _ in choice.candidates] == ["nvml", "amd", "intel", "drm"]
        assert choice.candidates[-1][1] == f"chosen: {len(vendors)} device(s)"
        assert "NVML Shared Library Not Found" in choice.candidates[0][1]
        assert sorted(d.vendor.value for d in choice.backend.discover()) == vendors
    finally:
        choice.backend.close()


@pytest.mark.parametrize("fixture", ["intel-a380-i915", "intel-b580-xe"])
def test_auto_finds_nothing_where_drm_can_only_skip(fixture: str) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        choose_backend(node(fixture), timeout=2.0)
    message = str(caught.value)
    assert message.startswith("auto: no backend found a GPU on this node")
    assert "drm: no devices (class/drm/card1: a discrete" in message
    for name in AUTO_ORDER:
        assert f"{name}: " in message


def test_a_vendor_library_wins_over_drm_in_the_order() -> None:
    choice = choose_backend(node("amdgpu-vega56", amd=lambda: OneGPU("amd")), timeout=2.0)
    assert choice.backend.name == "amd"
    assert [n for n, _ in choice.candidates] == ["nvml", "amd"]
    choice.backend.close()
    choice = choose_backend(
        node("amdgpu-vega56", nvml=lambda: OneGPU("nvml"), amd=lambda: OneGPU("amd")), 2.0)
    assert choice.backend.name == "nvml" and len(choice.candidates) == 1
    choice.backend.close()


def test_a_hanging_candidate_costs_one_deadline_and_the_next_is_chosen() -> None:
    hang = threading.Event()
    try:
        choice = choose_backend(node("amdgpu-vega56", nvml=lambda: OneGPU("nvml", hang)), 0.2)
        assert choice.backend.name == "drm"
        assert "did not return within 0.2 s" in choice.candidates[0][1]
        choice.backend.close()
    finally:
        hang.set()


def test_apple_is_chosen_on_a_mac() -> None:
    mac = RecordedMac()
    choice = choose_backend(
        node("intel-a380-i915", apple=lambda: AppleBackend("n1", runner=mac)), 2.0)
    assert choice.backend.name == "apple"
    assert [n for n, _ in choice.candidates] == ["nvml", "amd", "intel", "drm", "apple"]
    choice.backend.close()


def test_probe_with_auto_says_what_it_chose_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    real = backends.load_backend

    def node_without_libraries(name: str, **kwargs: Any) -> Backend:
        if name in NO_LIBRARIES:
            NO_LIBRARIES[name]()
        return real(name, **kwargs)

    monkeypatch.setattr(backends, "load_backend", node_without_libraries)
    root = FIXTURES / "intel-tigerlake-xe"
    result = CliRunner().invoke(command, [
        "--node", "n1", "--sysfs-root", str(root / "sys"), "--procfs-root", str(root / "proc"),
        "--probe"])  # auto is the default
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["requested"], report["backend"]) == ("auto", "drm")
    assert [c["backend"] for c in report["candidates"]] == ["nvml", "amd", "intel", "drm"]
    assert report["devices"][0]["identity"]["device_id"] == "n1-intel-0"

    empty = FIXTURES / "intel-b580-xe"
    result = CliRunner().invoke(command, [
        "--node", "n1", "--sysfs-root", str(empty / "sys"), "--procfs-root", str(empty / "proc"),
        "--probe"])
    assert result.exit_code == 1
    assert "auto: no backend found a GPU on this node" in result.output
