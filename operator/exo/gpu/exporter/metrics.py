"""Prometheus metrics of the exporter: per-device gauges and the exporter's own health.

Device gauges come in two spellings so that existing tooling works unchanged:

* DCGM-exporter names (``DCGM_FI_DEV_GPU_UTIL``, ``DCGM_FI_DEV_FB_USED``/``FB_FREE`` in MiB,
  ``DCGM_FI_DEV_GPU_TEMP``, ``DCGM_FI_DEV_POWER_USAGE``, ``DCGM_FI_DEV_SM_CLOCK``) with DCGM's
  labels ``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname``, which the common Grafana GPU
  dashboards query, for every vendor;
* OpenTelemetry hardware semantic-convention names as Prometheus spells them
  (``hw_gpu_utilization_ratio``, ``hw_gpu_memory_usage_bytes``, ...), labelled ``hw_id``,
  ``hw_name``, ``hw_vendor``, ``k8s_node_name``.

Each device family is its own collector reading the latest samples from a :class:`DeviceStore`,
which the agent fills on every poll; ``describe()`` is implemented so that registering a collector
never calls ``collect()`` and a scrape never touches hardware. Exporter-health metrics are plain
counters, gauges and a histogram on the same registry.

A field the device's driver does not expose (temperature, power or clock is None in the sample)
has no series for that device, never a 0 that a dashboard would plot as a cold, idle GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics

from .backends.base import HEALTHY, DeviceHealth

MIB = 1024 * 1024


@dataclass(frozen=True)
class DeviceSnapshot:
    """What the exporter last knew about one device."""

    info: GPUDeviceInfo
    sample: GPUMetrics | None
    health: DeviceHealth


class DeviceStore:
    """Latest sample and health per device, shared between the agent and the collectors."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceSnapshot] = {}

    def update(self, info: GPUDeviceInfo, sample: GPUMetrics | None, health: DeviceHealth) -> None:
        # A failed or refused reading clears the device's values: serving the last good one
        # would hide the failure from dashboards (exo_gpu_device_healthy and the exporter's
        # error counters say what went wrong).
        with self._lock:
            self._devices[info.device_id] = DeviceSnapshot(info, sample, health)

    def remove(self, device_id: str) -> None:
        with self._lock:
            self._devices.pop(device_id, None)

    def snapshot(self) -> list[DeviceSnapshot]:
        with self._lock:
            return sorted(self._devices.values(), key=lambda s: s.info.device_id)


Value = Callable[[DeviceSnapshot], float | None]


def _sample(fn: Callable[[GPUMetrics], float | None]) -> Value:
    """A value of the latest sample; None (no series) without one or where the field is absent."""
    return lambda snap: None if snap.sample is None else fn(snap.sample)


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


DCGM_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname")
HW_LABELS = ("hw_id", "hw_name", "hw_vendor", "k8s_node_name")


def _dcgm_labels(store: DeviceStore, info: GPUDeviceInfo) -> list[str]:
    index = "" if info.index is None else str(info.index)
    return [index, info.uuid or "", f"{info.vendor.value}{index}", info.name, store.hostname]


def _hw_labels(store: DeviceStore, info: GPUDeviceInfo) -> list[str]:
    return [info.uuid or info.device_id, info.name, info.vendor.value, store.hostname]


class DeviceFamilyCollector(Collector):
    """One gauge family over every device in the store."""

    def __init__(
        self,
        store: DeviceStore,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        label_values: Callable[[DeviceStore, GPUDeviceInfo], list[str]],
        value: Value,
        unit: str = "",
    ) -> None:
        self.store = store
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.label_values = label_values
        self.value = value
        self.unit = unit

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labels, unit=self.unit)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for snap in self.store.snapshot():
            value = self.value(snap)
            if value is not None:
                family.add_metric(self.label_values(self.store, snap.info), value)
        yield family


def device_collectors(store: DeviceStore) -> list[DeviceFamilyCollector]:
    """Every per-device family: DCGM-compatible first, then OpenTelemetry-style."""

    def dcgm(name: str, doc: str, value: Value) -> DeviceFamilyCollector:
        return DeviceFamilyCollector(store, name, doc, DCGM_LABELS, _dcgm_labels, value)

    def hw(name: str, doc: str, value: Value, unit: str = "") -> DeviceFamilyCollector:
        return DeviceFamilyCollector(store, name, doc, HW_LABELS, _hw_labels, value, unit)

    return [
        dcgm(
            "DCGM_FI_DEV_GPU_UTIL",
            "GPU utilization (in %).",
            _sample(lambda s: s.compute_utilization_percent),
        ),
        dcgm(
            "DCGM_FI_DEV_FB_USED",
            "Framebuffer memory used (in MiB).",
            _sample(lambda s: s.memory_used_bytes / MIB),
        ),
        dcgm(
            "DCGM_FI_DEV_FB_FREE",
            "Framebuffer memory free (in MiB).",
            _sample(lambda s: s.memory_free_bytes / MIB),
        ),
        dcgm(
            "DCGM_FI_DEV_GPU_TEMP",
            "GPU temperature (in C).",
            _sample(lambda s: s.temperature_celsius),
        ),
        dcgm("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", _sample(lambda s: s.power_watts)),
        dcgm(
            "DCGM_FI_DEV_SM_CLOCK",
            "SM clock frequency (in MHz).",
            _sample(lambda s: s.clock_rate_mhz),
        ),
        hw(
            "hw_gpu_utilization",
            "Fraction of time the GPU was busy (0..1).",
            _sample(lambda s: s.compute_utilization_percent / 100.0),
            "ratio",
        ),
        hw(
            "hw_gpu_memory_usage",
            "GPU memory used.",
            _sample(lambda s: float(s.memory_used_bytes)),
            "bytes",
        ),
        hw(
            "hw_gpu_memory_limit",
            "GPU memory size.",
            lambda snap: float(snap.info.memory_total_bytes),
            "bytes",
        ),
        hw(
            "hw_gpu_temperature",
            "GPU temperature.",
            _sample(lambda s: s.temperature_celsius),
            "celsius",
        ),
        hw("hw_gpu_power_draw", "GPU power draw.", _sample(lambda s: s.power_watts), "watts"),
        hw(
            "hw_gpu_clock_frequency",
            "GPU core clock.",
            _sample(lambda s: _scaled(s.clock_rate_mhz, 1e6)),
            "hertz",
        ),
        hw(
            "exo_gpu_device_healthy",
            "1 when the backend reports the device healthy, else 0.",
            lambda snap: 1.0 if snap.health.healthy else 0.0,
        ),
    ]


class ExporterMetrics:
    """Everything the exporter serves on ``/metrics``, on one registry."""

    def __init__(self, hostname: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.store = DeviceStore(hostname)
        for collector in device_collectors(self.store):
            self.registry.register(collector)
        self.scrape_duration = Histogram(
            "exo_gpu_exporter_backend_scrape_duration_seconds",
            "Time to read every device from the backend once.",
            ["backend"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.scrape_success = Gauge(
            "exo_gpu_exporter_backend_scrape_success",
            "1 when the last poll of the backend read every device, else 0.",
            ["backend"],
            registry=self.registry,
        )
        self.backend_errors = Counter(
            "exo_gpu_exporter_backend_errors",
            "Backend calls that failed, by reason (BackendTimeout, DeviceLost, ...).",
            ["backend", "reason"],
            registry=self.registry,
        )
        self.invalid_readings = Counter(
            "exo_gpu_exporter_invalid_readings",
            "Readings refused as impossible (negative, NaN, used above total, ...); never written.",
            ["backend", "field"],
            registry=self.registry,
        )
        self.api_writes = Counter(
            "exo_gpu_exporter_api_writes",
            "GPUDevice writes to the API server by kind (create, spec, status, delete) and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self.backend_info = Gauge(
            "exo_gpu_exporter_backend_info",
            "1 for the backend this exporter reads (backend) and the one it was asked for "
            "(requested: auto, or the same name).",
            ["backend", "requested"],
            registry=self.registry,
        )
        self.devices = Gauge(
            "exo_gpu_exporter_devices",
            "Devices the backend currently reports.",
            ["backend"],
            registry=self.registry,
        )

    def record_sample(
        self, info: GPUDeviceInfo, sample: GPUMetrics | None, health: DeviceHealth = HEALTHY
    ) -> None:
        self.store.update(info, sample, health)
