"""The cluster as the controller sees it, on its ``/metrics`` (its own Prometheus registry).

Values are computed at scrape time from the shared ``ClusterView`` (a custom collector), so they
cost nothing between scrapes and can never disagree with what placement decisions read. Totals
come from the core aggregation (``get_aggregated_metrics``); per-vendor memory and
eligibility from the core's device state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..k8s.view import ClusterView

PREFIX = "exo_gpu_cluster"


class ClusterCollector(Collector):
    """Gauges over the view: devices, memory total/used/free, utilization, per vendor."""

    def __init__(self, view: ClusterView,
                 workloads: Callable[[], dict[str, int]] | None = None) -> None:
        self.view = view
        self.workloads = workloads

    def collect(self) -> Iterator[Metric]:
        with self.view.lock:
            aggregate: dict[str, Any] = self.view.manager.get_aggregated_metrics()
            per_vendor: dict[str, dict[str, float]] = {}
            for device in self.view.state.devices():
                entry = per_vendor.setdefault(
                    device.vendor, {"devices": 0, "total": 0, "free": 0, "eligible": 0})
                entry["devices"] += 1
                entry["total"] += device.total
                entry["free"] += device.free
                # the core's request-independent verdict (staleness aside)
                entry["eligible"] += 1 if device.available else 0
        yield _gauge("devices", "GPUDevices in the cluster view.", aggregate["device_count"])
        yield _gauge("reporting_devices", "Devices with at least one metrics sample.",
                     aggregate["reporting_device_count"])
        yield _gauge("memory_total_bytes", "Device memory of every device.",
                     aggregate["total_memory_bytes"])
        yield _gauge("memory_used_bytes", "Measured memory in use (reporting devices).",
                     aggregate["used_memory_bytes"])
        yield _gauge("memory_free_bytes", "Measured free memory (reporting devices).",
                     aggregate["free_memory_bytes"])
        yield _gauge("utilization_percent_average", "Mean compute utilization over reporting "
                     "devices.", aggregate["average_utilization_percent"])
        yield _gauge("power_watts_total", "Power draw of every reporting device.",
                     aggregate["total_power_watts"])
        if aggregate.get("max_temperature_celsius") is not None:
            yield _gauge("temperature_celsius_max", "Hottest device.",
                         aggregate["max_temperature_celsius"])
        if aggregate.get("oldest_sample_age_seconds") is not None:
            yield _gauge("oldest_sample_age_seconds", "Age of the oldest latest sample.",
                         aggregate["oldest_sample_age_seconds"])
        by_vendor = {vendor: count for vendor, count in
                     (aggregate.get("devices_by_vendor") or {}).items()}
        for name, help_text, key in (
                ("vendor_devices", "Devices per vendor.", "devices"),
                ("vendor_eligible_devices", "Devices per vendor that can take work now "
                 "(not cordoned, Ready, reporting, not too hot).", "eligible"),
                ("vendor_memory_total_bytes", "Device memory per vendor.", "total"),
                ("vendor_memory_free_bytes", "Free memory per vendor (after reservations).",
                 "free")):
            family = GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=["vendor"])
            for vendor in sorted(set(by_vendor) | set(per_vendor)):
                value = per_vendor.get(vendor, {}).get(key)
                if value is None:
                    value = by_vendor.get(vendor, 0) if key == "devices" else 0
                family.add_metric([vendor], float(value))
            yield family
        if self.workloads is not None:
            family = GaugeMetricFamily("exo_gpu_workloads", "GPUWorkloads by phase.",
                                       labels=["phase"])
            for phase, count in sorted(self.workloads().items()):
                family.add_metric([phase], float(count))
            yield family


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", help_text, value=float(value))


def build_registry(view: ClusterView,
                   workloads: Callable[[], dict[str, int]] | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ClusterCollector(view, workloads))
    return registry


def serve(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> Any:
    """Serve ``registry`` on ``http://host:port/metrics`` in a background thread."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=registry)
