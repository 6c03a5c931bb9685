"""NVIDIA backend through NVML (the ``nvidia-ml-py`` package, module ``pynvml``).

NVML is a C library reached through ctypes: about 0.1 ms per query, against milliseconds to fork
``nvidia-smi``. It is also the call most likely to hang (``nvmlInit`` on a wedged driver), so this
module never calls NVML outside a backend method, and the agent only ever calls backend methods
through :class:`~exo.gpu.exporter.backends.base.GuardedBackend`. ``nvmlInit`` itself runs lazily
inside the first guarded call, never in the constructor.

Covered: identity (index, UUID, name, total memory, PCI bus id, NUMA node from sysfs), metrics
(memory used, GPU utilization, temperature, power in mW converted to W, SM clock) and health
(critical XID events, volatile uncorrected ECC errors where the board supports ECC, a lost GPU).
The ``pynvml`` module is injectable so the unit tier runs a fake at exactly this boundary.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from exo.gpu.k8s.models import device_name
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

from .base import HEALTHY, BackendError, BackendUnavailable, DeviceHealth, DeviceLost

# XIDs caused by applications, not hardware (the same list NVIDIA's device plugin skips):
# 13 graphics engine exception, 31 memory page fault, 43 GPU stopped processing, 45 preemptive
# cleanup, 68 video processor exception, 109 context switch timeout.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})

_SYSFS_PCI = Path("/sys/bus/pci/devices")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def sysfs_pci_address(bus_id: str) -> str:
    """NVML's ``00000000:3B:00.0`` as sysfs spells it: ``0000:3b:00.0``."""
    domain, _, rest = bus_id.partition(":")
    return f"{domain[-4:]}:{rest}".lower()


def numa_node_of(bus_id: str, sysfs: Path = _SYSFS_PCI) -> int | None:
    try:
        value = int((sysfs / sysfs_pci_address(bus_id) / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return value if value >= 0 else None


class NVMLBackend:
    """NVML-backed :class:`~exo.gpu.exporter.backends.base.Backend` for the GPUs of ``node``."""

    name = "nvml"

    def __init__(
        self, node: str, nvml: ModuleType | Any | None = None, sysfs: Path = _SYSFS_PCI
    ) -> None:
        if nvml is None:
            try:
                import pynvml
            except Exception as exc:  # pragma: no cover - depends on the installation
                raise BackendUnavailable(f"nvml: cannot import pynvml ({exc})") from exc
            nvml = pynvml
        self.node = node
        self._nvml = nvml
        self._sysfs = sysfs
        self._initialised = False
        self._handles: dict[str, Any] = {}  # device_id -> NVML handle
        self._uuid_of: dict[str, str] = {}
        self._events: Any = None
        self._xids: dict[str, list[int]] = {}  # uuid -> critical XIDs seen
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------

    def _ensure_init(self) -> None:
        if self._initialised:
            return
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise BackendUnavailable(f"nvml: nvmlInit failed ({exc})") from exc
        self._initialised = True

    def close(self) -> None:
        if not self._initialised:
            return
        try:
            if self._events is not None:
                self._nvml.nvmlEventSetFree(self._events)
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass
        finally:
            self._initialised = False
            self._events = None
            self._handles.clear()

    # -- helpers ----------------------------------------------------------------------------

    def _is_lost(self, exc: BaseException) -> bool:
        lost = getattr(self._nvml, "NVML_ERROR_GPU_IS_LOST", 15)
        return getattr(exc, "value", None) == lost

    def _wrap(self, what: str, exc: BaseException) -> BackendError:
        if self._is_lost(exc):
            return DeviceLost(f"nvml: {what}: GPU is lost ({exc})")
        return BackendError(f"nvml: {what}: {exc}", "NVMLError")

    def _handle(self, device: GPUDeviceInfo) -> Any:
        handle = self._handles.get(device.device_id)
        if handle is None:
            raise DeviceLost(f"nvml: {device.device_id} is not among the discovered devices")
        return handle

    def _register_events(self, handle: Any) -> None:
        nvml = self._nvml
        try:
            if self._events is None:
                self._events = nvml.nvmlEventSetCreate()
            nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, self._events)
        except (nvml.NVMLError, AttributeError):
            # Not supported on this board or driver: health falls back to ECC and lost-GPU checks.
            pass

    def _drain_events(self) -> None:
        nvml = self._nvml
        if self._events is None:
            return
        for _ in range(64):  # bounded: never loop forever on a chatty driver
            try:
                data = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError:
                return  # NVML_ERROR_TIMEOUT: no event pending
            xid = int(getattr(data, "eventData", 0))
            if xid in APPLICATION_XIDS:
                continue
            try:
                uuid = _text(nvml.nvmlDeviceGetUUID(data.device))
            except nvml.NVMLError:
                continue
            self._xids.setdefault(uuid, []).append(xid)

    # -- Backend ----------------------------------------------------------------------------

    def discover(self) -> list[GPUDeviceInfo]:
        self._ensure_init()
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            raise self._wrap("nvmlDeviceGetCount", exc) from exc
        devices: list[GPUDeviceInfo] = []
        handles: dict[str, Any] = {}
        for position in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(position)
                index = int(nvml.nvmlDeviceGetIndex(handle))
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                name = _text(nvml.nvmlDeviceGetName(handle))
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                bus_id = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
            except nvml.NVMLError as exc:
                if self._is_lost(exc):
                    continue  # a lost GPU is not present; the agent reports it as vanished
                raise self._wrap(f"identity of device {position}", exc) from exc
            device_id = device_name(self.node, Vendor.NVIDIA, index)
            devices.append(
                GPUDeviceInfo(
                    device_id=device_id,
                    vendor=Vendor.NVIDIA,
                    name=name,
                    memory_total_bytes=int(memory.total),
                    node=self.node,
                    uuid=uuid,
                    index=index,
                    pci_bus_id=bus_id or None,
                    numa_node=numa_node_of(bus_id, self._sysfs) if bus_id else None,
                )
            )
            handles[device_id] = handle
            if uuid not in self._uuid_of.values():
                self._register_events(handle)
            self._uuid_of[device_id] = uuid
        self._handles = handles
        return devices

    def read(self, device: GPUDeviceInfo) -> GPUMetrics:
        self._ensure_init()
        nvml = self._nvml
        handle = self._handle(device)
        try:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
            temperature = self._optional(
                nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
            )
            power_mw = self._optional(nvml.nvmlDeviceGetPowerUsage, handle)
            clock = self._optional(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
        except nvml.NVMLError as exc:
            raise self._wrap(f"read {device.device_id}", exc) from exc
        return GPUMetrics(
            device_id=device.device_id,
            timestamp=time.time(),
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
            compute_utilization_percent=float(utilization.gpu),
            power_watts=None if power_mw is None else float(power_mw) / 1000.0,
            temperature_celsius=None if temperature is None else float(temperature),
            clock_rate_mhz=None if clock is None else float(clock),
        )

    def _optional(self, call: Any, *args: Any) -> Any:
        """``call(*args)``, or None where the board does not support the query (absent, not 0)."""
        try:
            return call(*args)
        except self._nvml.NVMLError as exc:
            if getattr(exc, "value", None) == getattr(self._nvml, "NVML_ERROR_NOT_SUPPORTED", 3):
                return None
            raise

    def health(self, device: GPUDeviceInfo) -> DeviceHealth:
        self._ensure_init()
        nvml = self._nvml
        handle = self._handle(device)
        try:
            # Cheap liveness probe: a GPU that fell off the bus fails every query.
            nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        except nvml.NVMLError as exc:
            if self._is_lost(exc):
                return DeviceHealth(False, "DeviceLost", f"NVML reports the GPU lost: {exc}")
            return DeviceHealth(False, "NVMLError", f"liveness query failed: {exc}")
        with self._lock:
            self._drain_events()
        uuid = self._uuid_of.get(device.device_id, "")
        xids = self._xids.get(uuid)
        if xids:
            return DeviceHealth(
                False, "XidError", f"critical XID event(s) {', '.join(map(str, xids[-5:]))}"
            )
        try:
            uncorrected = int(
                nvml.nvmlDeviceGetTotalEccErrors(
                    handle,
                    nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                    nvml.NVML_VOLATILE_ECC,
                )
            )
        except (nvml.NVMLError, AttributeError):
            uncorrected = 0  # ECC not supported or not enabled on this board
        if uncorrected > 0:
            return DeviceHealth(
                False, "EccUncorrectable", f"{uncorrected} uncorrected ECC error(s) since boot"
            )
        return HEALTHY
