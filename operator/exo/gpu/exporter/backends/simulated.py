"""Simulated backend: plays one node of a fleet file against a clock.

Every value is a pure function of the fleet entry and ``t = clock() - start``, so a test that
drives the clock gets the same samples on every run, and several exporters that share ``start``
see one consistent fleet. Scripted failures (:class:`~exo.gpu.exporter.fleet.Failure`) exercise
the agent's error paths: a vanished device, failing reads, impossible readings, an unhealthy
device and a hanging call (the only behaviour that takes real time, to test the deadline guard).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from exo.gpu.k8s.models import device_name
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics

from ..fleet import Fleet, ResolvedDevice
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

    def health(self, device: GPUDeviceInfo) -> DeviceHealth:
        t = self.elapsed()
        resolved = self._device(device, t)
        for failure in resolved.spec.failures:
            if failure.kind == "unhealthy" and failure.active(t):
                return DeviceHealth(
                    False, failure.reason, f"simulated fault since t={failure.at:g}s"
                )
        return HEALTHY
