"""Intel data-center and Arc GPUs through ``xpu-smi`` (Intel's XPU Manager command line).

Intel has no Python binding comparable to NVML; ``xpu-smi`` is what its platforms ship. Identity
comes from ``xpu-smi discovery -j`` (one call per device for the memory size), metrics from one
``xpu-smi dump`` sample per device: metric ids 0 (GPU utilization %), 1 (power W), 2 (frequency
MHz), 3 (core temperature C) and 18 (memory used MiB). Each command runs under the backend
deadline as well as its own ``timeout``. Forking a process per read costs far more CPU than NVML,
so this backend suits slower poll intervals (5 s). The command runner is injectable for tests.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from exo.gpu.k8s.models import device_name
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

from .base import HEALTHY, BackendError, BackendUnavailable, DeviceHealth, DeviceLost

Runner = Callable[[Sequence[str]], str]
MIB = 1024 * 1024
DUMP_METRICS = "0,1,2,3,18"


def run_command(argv: Sequence[str], timeout: float = 5.0) -> str:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"intel: {' '.join(argv)}: {exc}", "XpuSmiError") from exc
    if done.returncode != 0:
        raise BackendError(
            f"intel: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:200]}",
            "XpuSmiError",
        )
    return done.stdout


def parse_dump(text: str) -> dict[str, float]:
    """The last data row of ``xpu-smi dump`` as {column header: value}; N/A cells are dropped."""
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise BackendError("intel: xpu-smi dump printed no sample", "XpuSmiError")
    header = [h.strip() for h in rows[0]]
    values: dict[str, float] = {}
    for name, cell in zip(header, rows[-1], strict=False):
        try:
            values[name] = float(cell.strip())
        except ValueError:
            continue
    return values


def _column(values: dict[str, float], *fragments: str) -> float | None:
    for name, value in values.items():
        lowered = name.lower()
        if all(f in lowered for f in fragments):
            return value
    return None


class IntelBackend:
    """``xpu-smi``-backed :class:`~exo.gpu.exporter.backends.base.Backend`."""

    name = "intel"

    def __init__(self, node: str, runner: Runner | None = None) -> None:
        if runner is None:
            if shutil.which("xpu-smi") is None:
                raise BackendUnavailable(
                    "intel: xpu-smi is not on PATH (install Intel XPU Manager)"
                )
            runner = run_command
        self.node = node
        self._run = runner
        self._xpu_ids: dict[str, int] = {}

    def close(self) -> None:
        return None

    def discover(self) -> list[GPUDeviceInfo]:
        try:
            listing: dict[str, Any] = json.loads(self._run(["xpu-smi", "discovery", "-j"]))
        except json.JSONDecodeError as exc:
            raise BackendError(
                f"intel: xpu-smi discovery: bad JSON ({exc})", "XpuSmiError"
            ) from exc
        devices: list[GPUDeviceInfo] = []
        ids: dict[str, int] = {}
        for index, entry in enumerate(listing.get("device_list", [])):
            xpu_id = int(entry["device_id"])
            try:
                detail = json.loads(self._run(["xpu-smi", "discovery", "-d", str(xpu_id), "-j"]))
            except json.JSONDecodeError as exc:
                raise BackendError(
                    f"intel: discovery of {xpu_id}: bad JSON", "XpuSmiError"
                ) from exc
            total = int(detail.get("memory_physical_size_byte") or 0)
            if total <= 0:
                continue  # no device-local memory reported: not a schedulable GPU
            device_id = device_name(self.node, Vendor.INTEL, index)
            devices.append(
                GPUDeviceInfo(
                    device_id=device_id,
                    vendor=Vendor.INTEL,
                    name=str(entry.get("device_name") or "Intel GPU"),
                    memory_total_bytes=total,
                    node=self.node,
                    uuid=str(entry.get("uuid")) if entry.get("uuid") else None,
                    index=index,
                    pci_bus_id=str(entry.get("pci_bdf_address")) or None,
                )
            )
            ids[device_id] = xpu_id
        self._xpu_ids = ids
        return devices

    def read(self, device: GPUDeviceInfo) -> GPUMetrics:
        xpu_id = self._xpu_ids.get(device.device_id)
        if xpu_id is None:
            raise DeviceLost(f"intel: {device.device_id} is not among the discovered devices")
        values = parse_dump(
            self._run(["xpu-smi", "dump", "-d", str(xpu_id), "-m", DUMP_METRICS, "-n", "1"])
        )
        utilization = _column(values, "utilization")
        if utilization is None:
            raise BackendError(f"intel: no utilization for {device.device_id}", "XpuSmiError")
        used_mib = _column(values, "memory used")
        if used_mib is None:
            raise BackendError(f"intel: no memory used for {device.device_id}", "XpuSmiError")
        # N/A cells (what the card does not report) stay absent, never 0.
        return GPUMetrics(
            device_id=device.device_id,
            timestamp=time.time(),
            memory_used_bytes=int(used_mib * MIB),
            memory_total_bytes=device.memory_total_bytes,
            compute_utilization_percent=utilization,
            power_watts=_column(values, "power"),
            temperature_celsius=_column(values, "temperature"),
            clock_rate_mhz=_column(values, "frequency"),
        )

    def health(self, device: GPUDeviceInfo) -> DeviceHealth:
        if device.device_id not in self._xpu_ids:
            return DeviceHealth(False, "DeviceLost", "device is no longer listed by xpu-smi")
        return HEALTHY
