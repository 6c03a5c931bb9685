"""AMD backend through the ``amdsmi`` Python bindings of ROCm (optional extra ``exo-gpu[amd]``).

``amdsmi`` installs without ROCm but fails at import time (``KeyError: 'libamd_smi.so'``), so the
import is guarded with ``except Exception``, not just ``ImportError``, and the failure becomes
:class:`~exo.gpu.exporter.backends.base.BackendUnavailable` with the cause.

Covered: identity (UUID, market name, VRAM total, PCI BDF), metrics (VRAM used, GFX activity, edge
temperature, socket power, GFX clock) and health (uncorrectable ECC count). Field names follow the
ROCm 6 bindings; every dictionary lookup has a fallback because they moved between releases.
"""

from __future__ import annotations

import contextlib
import time
from types import ModuleType
from typing import Any

from exo.gpu.k8s.models import device_name
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

from .base import HEALTHY, BackendError, BackendUnavailable, DeviceHealth, DeviceLost


def _first(mapping: Any, *keys: str) -> float | None:
    """The first numeric value among ``keys`` (the library answers "N/A" for what the board
    does not support): None when there is none, never a made-up 0."""
    if isinstance(mapping, dict):
        for key in keys:
            value = mapping.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    elif isinstance(mapping, int | float) and not isinstance(mapping, bool):
        return float(mapping)
    return None


class AMDSMIBackend:
    """``amdsmi``-backed :class:`~exo.gpu.exporter.backends.base.Backend`."""

    name = "amd"

    def __init__(self, node: str, amdsmi: ModuleType | Any | None = None) -> None:
        if amdsmi is None:
            try:
                import amdsmi as module
            except Exception as exc:  # KeyError without ROCm, ImportError without the package
                raise BackendUnavailable(
                    f"amd: cannot import amdsmi ({type(exc).__name__}: {exc}); "
                    "install ROCm and exo-gpu[amd]"
                ) from exc
            amdsmi = module
        self.node = node
        self._smi = amdsmi
        self._initialised = False
        self._handles: dict[str, Any] = {}

    def _ensure_init(self) -> None:
        if self._initialised:
            return
        smi = self._smi
        try:
            smi.amdsmi_init(smi.AmdSmiInitFlags.INIT_AMD_GPUS)
        except Exception as exc:
            raise BackendUnavailable(f"amd: amdsmi_init failed ({exc})") from exc
        self._initialised = True

    def close(self) -> None:
        if self._initialised:
            with contextlib.suppress(Exception):
                self._smi.amdsmi_shut_down()
            self._initialised = False

    def _handle(self, device: GPUDeviceInfo) -> Any:
        handle = self._handles.get(device.device_id)
        if handle is None:
            raise DeviceLost(f"amd: {device.device_id} is not among the discovered devices")
        return handle

    def discover(self) -> list[GPUDeviceInfo]:
        self._ensure_init()
        smi = self._smi
        devices: list[GPUDeviceInfo] = []
        handles: dict[str, Any] = {}
        try:
            processors = list(smi.amdsmi_get_processor_handles())
        except Exception as exc:
            raise BackendError(f"amd: amdsmi_get_processor_handles: {exc}", "AMDSMIError") from exc
        for index, handle in enumerate(processors):
            try:
                uuid = str(smi.amdsmi_get_gpu_device_uuid(handle))
                asic = smi.amdsmi_get_gpu_asic_info(handle)
                total = int(smi.amdsmi_get_gpu_memory_total(handle, smi.AmdSmiMemoryType.VRAM))
                bdf = str(smi.amdsmi_get_gpu_device_bdf(handle))
            except Exception as exc:
                raise BackendError(
                    f"amd: identity of device {index}: {exc}", "AMDSMIError"
                ) from exc
            name = str(asic.get("market_name") or asic.get("name") or "AMD GPU")
            device_id = device_name(self.node, Vendor.AMD, index)
            devices.append(
                GPUDeviceInfo(
                    device_id=device_id,
                    vendor=Vendor.AMD,
                    name=name,
                    memory_total_bytes=total,
                    node=self.node,
                    uuid=uuid or None,
                    index=index,
                    pci_bus_id=bdf or None,
                )
            )
            handles[device_id] = handle
        self._handles = handles
        return devices

    def read(self, device: GPUDeviceInfo) -> GPUMetrics:
        self._ensure_init()
        smi = self._smi
        handle = self._handle(device)
        try:
            used = int(smi.amdsmi_get_gpu_memory_usage(handle, smi.AmdSmiMemoryType.VRAM))
            total = int(smi.amdsmi_get_gpu_memory_total(handle, smi.AmdSmiMemoryType.VRAM))
            activity = smi.amdsmi_get_gpu_activity(handle)
            temperature = smi.amdsmi_get_temp_metric(
                handle, smi.AmdSmiTemperatureType.EDGE, smi.AmdSmiTemperatureMetric.CURRENT
            )
            power = smi.amdsmi_get_power_info(handle)
            clock = smi.amdsmi_get_clock_info(handle, smi.AmdSmiClkType.GFX)
        except Exception as exc:
            raise BackendError(f"amd: read {device.device_id}: {exc}", "AMDSMIError") from exc
        utilization = _first(activity, "gfx_activity")
        if utilization is None:
            raise BackendError(
                f"amd: read {device.device_id}: no gfx_activity in {activity!r}", "AMDSMIError"
            )
        return GPUMetrics(
            device_id=device.device_id,
            timestamp=time.time(),
            memory_used_bytes=used,
            memory_total_bytes=total,
            compute_utilization_percent=utilization,
            power_watts=_first(power, "current_socket_power", "average_socket_power"),
            temperature_celsius=_first(temperature),
            clock_rate_mhz=_first(clock, "clk", "cur_clk"),
        )

    def health(self, device: GPUDeviceInfo) -> DeviceHealth:
        self._ensure_init()
        handle = self._handle(device)
        try:
            counts = self._smi.amdsmi_get_gpu_total_ecc_count(handle)
        except Exception:
            return HEALTHY  # ECC not supported: nothing to report
        uncorrectable = int(_first(counts, "uncorrectable_count") or 0)
        if uncorrectable > 0:
            return DeviceHealth(
                False, "EccUncorrectable", f"{uncorrectable} uncorrectable ECC error(s)"
            )
        return HEALTHY
