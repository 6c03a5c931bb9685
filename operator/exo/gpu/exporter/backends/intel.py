"""Intel data-center and Arc GPUs through ``xpu-smi`` (Intel's XPU Manager command line).

Intel has no Python binding comparable to NVML; ``xpu-smi`` is what its platforms ship. Identity
comes from ``xpu-smi discovery -j`` (one call per device for the memory size), metrics from one
``xpu-smi dump`` sample per device: metric ids 0 (GPU utilization %), 1 (power W), 2 (frequency
MHz), 3 (core temperature C) and 18 (memory used MiB). Each command runs under the backend
deadline as well as its own ``timeout``. Forking a process per read costs far more CPU than NVML,
so this backend suits slower poll intervals (5 s). The command runner is injectable for tests.

Topology comes from ``xpu-smi topology -m``: one row per GPU tile (``GPU 0/0``), whose first
cells are the matrix in row order, with the symbols of xpu-smi's legend: ``S`` itself, ``MDF``
another tile of the same card, ``XL`` (``XL<n>``: n links) Xe Link, and the PCIe paths ``PIX``
(one switch), ``PXB`` (several), ``PHB`` (host bridge), ``NODE`` (one NUMA node) and ``SYS``
(across NUMA nodes). A pair of cards takes the best cell among their tiles.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from exo.gpu.k8s.models import device_name
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor
from exo.gpu.topology import DeviceLinks, LinkType, PCIeLevel, PeerLink, link_score

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


_ROW = re.compile(r"^\s*GPU\s*(\d+)(?:/(\d+))?\s+(.*)$")
_XELINK = re.compile(r"^XL(\d*)\*?$")
_PCIE_SYMBOLS = {"MDF": PCIeLevel.SAME_BOARD, "PIX": PCIeLevel.SINGLE_SWITCH,
                 "PXB": PCIeLevel.MULTI_SWITCH, "PHB": PCIeLevel.HOST_BRIDGE,
                 "NODE": PCIeLevel.NUMA_NODE, "SYS": PCIeLevel.SYSTEM}


def parse_topology_matrix(text: str) -> dict[tuple[int, int], PeerLink]:
    """``xpu-smi topology -m`` as {(card, other card): link}, ``peer`` the other card's xpu-smi
    id (the best cell among the two cards' tiles). Unknown symbols are skipped."""
    rows = [(int(m.group(1)), m.group(3).split()) for line in text.splitlines()
            if (m := _ROW.match(line)) and not m.group(3).startswith("GPU")]  # not the header
    cards = [card for card, _ in rows]
    out: dict[tuple[int, int], PeerLink] = {}
    for card, cells in rows:
        for column, cell in enumerate(cells[:len(cards)]):
            other = cards[column]
            if other == card:
                continue
            link = _cell(str(other), cell)
            if link is None:
                continue
            known = out.get((card, other))
            if known is None or link_score(link) > link_score(known):
                out[(card, other)] = link
    return out


def _cell(peer: str, cell: str) -> PeerLink | None:
    symbol = cell.upper()
    xelink = _XELINK.match(symbol)
    if xelink is not None:
        return PeerLink(peer, LinkType.XELINK, None, min(int(xelink.group(1) or 1), 64))
    level = _PCIE_SYMBOLS.get(symbol)
    return PeerLink(peer, LinkType.PCIE, level) if level is not None else None


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

    def topology(self, devices: list[GPUDeviceInfo]) -> dict[str, DeviceLinks]:
        names = {self._xpu_ids[d.device_id]: d.device_id for d in devices
                 if d.device_id in self._xpu_ids}
        if len(names) < 2:
            return {}
        matrix = parse_topology_matrix(self._run(["xpu-smi", "topology", "-m"]))
        out = {}
        for device in devices:
            card = self._xpu_ids.get(device.device_id)
            if card is None:
                continue
            peers = tuple(PeerLink(names[other], link.type, link.level, link.links)
                          for (one, other), link in sorted(matrix.items())
                          if one == card and other in names)
            out[device.device_id] = DeviceLinks(device.numa_node, None, peers)
        return out

    def health(self, device: GPUDeviceInfo) -> DeviceHealth:
        if device.device_id not in self._xpu_ids:
            return DeviceHealth(False, "DeviceLost", "device is no longer listed by xpu-smi")
        return HEALTHY
