"""Simulated backend: plays one node of a fleet file against a clock.

Every value is a pure function of the fleet entry and ``t = clock() - start``, so a test that
drives the clock gets the same samples on every run, and several exporters that share ``start``
see one consistent fleet. Scripted failures (:class:`~exo.gpu.exporter.fleet.Failure`) exercise
the agent's error paths: a vanished device, failing reads, impossible readings, an unhealthy
device, a hanging call (the only behaviour that takes real time, to test the deadline guard) and
fabric links going down. Links are the node's ``links`` of the fleet file (see
:mod:`~exo.gpu.exporter.fleet`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from exo.gpu.k8s.models import device_name
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics
from exo.gpu.topology import DeviceLinks, LinkType, PCIeLevel, PeerLink, pcie_level_by_numa

from ..fleet import Fleet, FleetLink, ResolvedDevice, pairs
from .base import HEALTHY, BackendError, BackendUnavailable, DeviceHealth, DeviceLost


class SimulatedBackend:
    """A backend over the devices of ``node`` in ``fleet``."""

    name = "simulated"

    def __init__(
        self,
        fleet: Fleet,
        node: str,
        clock: Callable[[], float] | None = None,
        start: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        try:
            devices = fleet.devices_of(node)
        except KeyError:
            raise BackendUnavailable(
                f"simulated: node {node!r} is not in the fleet file "
                f"(nodes: {', '.join(fleet.node_names())})"
            ) from None
        self.node = node
        self.clock = clock or time.time
        self.start = self.clock() if start is None else start
        self._sleep = sleep
        self._devices = {device_name(node, d.spec.vendor, d.index): d for d in devices}
        self._fabric: dict[tuple[int, int], FleetLink] = {}
        self._levels: dict[tuple[int, int], PCIeLevel] = {}
        for link in fleet.node(node).links:
            for pair in pairs(link.devices):
                if link.type is LinkType.PCIE:
                    assert link.level is not None  # the fleet file's validation says so
                    self._levels[pair] = link.level
                else:
                    self._fabric[pair] = link
                    if link.level is not None:
                        self._levels.setdefault(pair, link.level)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def close(self) -> None:
        return None

    def _active(self, device: ResolvedDevice, kind: str, t: float) -> bool:
        return any(f.kind == kind and f.active(t) for f in device.spec.failures)

    def _device(self, info: GPUDeviceInfo, t: float) -> ResolvedDevice:
        device = self._devices.get(info.device_id)
        if device is None or self._active(device, "disappear", t):
            raise DeviceLost(f"simulated: {info.device_id} is gone")
        return device

    def discover(self) -> list[GPUDeviceInfo]:
        t = self.elapsed()
        out = []
        for device_id, device in self._devices.items():
            if self._active(device, "disappear", t):
                continue
            spec = device.spec
            out.append(
                GPUDeviceInfo(
                    device_id=device_id,
                    vendor=spec.vendor,
                    name=spec.model,
                    memory_total_bytes=spec.memory,
                    node=self.node,
                    uuid=device.uuid,
                    index=device.index,
                    compute_capacity=spec.compute_capacity,
                    pci_bus_id=spec.pci_bus_id,
                    numa_node=spec.numa_node,
                )
            )
        return out

    def read(self, device: GPUDeviceInfo) -> GPUMetrics:
        now = self.clock()
        t = now - self.start
        resolved = self._device(device, t)
        spec = resolved.spec
        for failure in spec.failures:
            if failure.kind == "hang" and failure.active(t):
                self._sleep(failure.seconds)
            if failure.kind == "error" and failure.active(t):
                raise BackendError(f"simulated: read of {device.device_id} failed", failure.reason)
        utilization = spec.utilization.at(t)
        used = spec.memory_used.at(t, spec.memory)
        if self._active(resolved, "invalid", t):
            used = spec.memory + 1  # an impossible reading: GPUMetrics refuses it
        return GPUMetrics(
            device_id=device.device_id,
            timestamp=now,
            memory_used_bytes=used,
            memory_total_bytes=spec.memory,
            compute_utilization_percent=utilization,
            power_watts=spec.power.at(utilization),
            temperature_celsius=spec.temperature.at(t, utilization),
            clock_rate_mhz=spec.clock.at(utilization),
        )

    def topology(self, devices: list[GPUDeviceInfo]) -> dict[str, DeviceLinks]:
        t = self.elapsed()
        present = {d.device_id: self._devices[d.device_id] for d in devices
                   if d.device_id in self._devices}
        out = {}
        for name, device in present.items():
            peers = []
            for other_name, other in present.items():
                if other_name == name:
                    continue
                pair = (min(device.position, other.position), max(device.position, other.position))
                fabric = self._fabric.get(pair)
                level = self._levels.get(pair) or pcie_level_by_numa(
                    device.spec.numa_node, other.spec.numa_node, device.spec.pcie_root,
                    other.spec.pcie_root)
                down = self._active(device, "linkdown", t) or self._active(other, "linkdown", t)
                if fabric is not None and not down:
                    assert fabric.count is not None
                    peers.append(PeerLink(other_name, fabric.type, level, fabric.count,
                                          fabric.hops))
                elif level is not None:
                    peers.append(PeerLink(other_name, LinkType.PCIE, level))
            out[name] = DeviceLinks(device.spec.numa_node, device.spec.pcie_root, tuple(peers))
        return out

    def health(self, device: GPUDeviceInfo) -> DeviceHealth:
        t = self.elapsed()
        resolved = self._device(device, t)
        for failure in resolved.spec.failures:
            if failure.kind == "unhealthy" and failure.active(t):
                return DeviceHealth(
                    False, failure.reason, f"simulated fault since t={failure.at:g}s"
                )
        return HEALTHY
