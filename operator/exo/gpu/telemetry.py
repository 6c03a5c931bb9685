"""Per-device telemetry history and cluster-wide aggregation (DESIGN.md section 6).

History: each device keeps at most ``history_size`` samples in timestamp order (a bounded buffer;
the oldest sample is evicted first). Samples may arrive out of order (retries, two writers racing
after a restart): an older sample is inserted at its place; one older than everything a full
buffer holds is dropped, since it would be evicted at once; a sample with a timestamp the buffer
already holds is a duplicate and is dropped (the first one recorded wins).

Aggregation: ``aggregate`` must stay cheap at 10,000 devices, so nothing rescans the fleet per
call. Sums (memory, power, utilization) are running totals updated when a device's latest sample
changes or the device leaves; power and utilization are summed in integer micro-units so that
adding and removing values millions of times never drifts. The maximum temperature and the oldest
latest-sample time come from sorted lists updated by bisection.

Only a device's *latest* sample feeds the aggregate; a late sample that lands in the middle of
the history changes nothing there. A latest sample without a temperature or a power reading (the
driver exposes none) is left out of the maximum temperature and the power total, never counted
as 0, and the result says how many devices were left out of each.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from exo.gpu.errors import (
    DeviceConflictError,
    InvalidMetricsError,
    InvalidRequestError,
    UnknownDeviceError,
)
from exo.gpu.telemetry_protocol import GPUMetrics, Vendor

__all__ = ["DEFAULT_HISTORY_SIZE", "RecordResult", "TelemetryCollector"]

#: 300 samples: 10 minutes at the exporter's fastest poll (2 s), 2.5 hours at its 30 s heartbeat.
DEFAULT_HISTORY_SIZE = 300

_MICRO = 1_000_000


class RecordResult(StrEnum):
    """What happened to a recorded sample."""

    LATEST = "latest"  # newest sample of its device: the latest value changed
    INSERTED = "inserted"  # older than the latest, kept in the history at its place
    DUPLICATE = "duplicate"  # same timestamp as a sample already held: dropped
    TOO_OLD = "too_old"  # older than everything a full history holds: dropped

    @property
    def accepted(self) -> bool:
        return self in (RecordResult.LATEST, RecordResult.INSERTED)


@dataclass(slots=True, eq=False)
class _Series:
    vendor: Vendor
    memory_total_bytes: int
    timestamps: list[float] = field(default_factory=list)
    samples: list[GPUMetrics] = field(default_factory=list)


def _micro(value: float) -> int:
    return round(value * _MICRO)


class TelemetryCollector:
    """Bounded per-device history and incrementally maintained cluster totals."""

    def __init__(self, history_size: int = DEFAULT_HISTORY_SIZE) -> None:
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
            raise InvalidRequestError(
                "history_size", f"must be an integer of at least 1, got {history_size!r}"
            )
        self.history_size = history_size
        self._series: dict[str, _Series] = {}
        self._vendor_counts: dict[Vendor, int] = {v: 0 for v in Vendor}
        self._total_memory = 0
        self._reporting_total_memory = 0
        self._used_memory = 0
        self._reporting = 0
        self._power_micro = 0
        self._power_unknown = 0
        self._temperature_unknown = 0
        self._utilization_micro = 0
        self._temperatures: list[float] = []
        self._latest_times: list[float] = []

    # -- membership -------------------------------------------------------------------------

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._series

    def __len__(self) -> int:
        return len(self._series)

    def register(self, device_id: str, vendor: Vendor, memory_total_bytes: int) -> None:
        """Start tracking a device (idempotent for the same vendor and memory total)."""
        existing = self._series.get(device_id)
        if existing is not None:
            if existing.vendor == vendor and existing.memory_total_bytes == memory_total_bytes:
                return
            raise DeviceConflictError(
                device_id,
                {
                    "vendor": (existing.vendor, vendor),
                    "memory_total_bytes": (existing.memory_total_bytes, memory_total_bytes),
                },
            )
        self._series[device_id] = _Series(Vendor(vendor), memory_total_bytes)
        self._vendor_counts[Vendor(vendor)] += 1
        self._total_memory += memory_total_bytes

    def unregister(self, device_id: str) -> None:
        """Forget a device and its history; the totals drop its contribution."""
        series = self._get(device_id)
        if series.samples:
            self._retract(series.samples[-1], series.memory_total_bytes)
        self._vendor_counts[series.vendor] -= 1
        self._total_memory -= series.memory_total_bytes
        del self._series[device_id]

    # -- recording --------------------------------------------------------------------------

    def record(self, metrics: GPUMetrics) -> RecordResult:
        """Add a sample to its device's history (see the module docstring for the rules)."""
        series = self._get(metrics.device_id)
        if metrics.memory_total_bytes != series.memory_total_bytes:
            raise InvalidMetricsError(
                "memory_total_bytes",
                f"sample reports {metrics.memory_total_bytes} bytes but device "
                f"{metrics.device_id!r} was registered with {series.memory_total_bytes}",
            )
        timestamps = series.timestamps
        samples = series.samples
        timestamp = metrics.timestamp
        if not timestamps or timestamp > timestamps[-1]:
            previous = samples[-1] if samples else None
            timestamps.append(timestamp)
            samples.append(metrics)
            if len(samples) > self.history_size:
                del timestamps[0]
                del samples[0]
            if previous is not None:
                self._retract(previous, series.memory_total_bytes)
            self._contribute(metrics, series.memory_total_bytes)
            return RecordResult.LATEST
        index = bisect_left(timestamps, timestamp)
        if timestamps[index] == timestamp:
            return RecordResult.DUPLICATE
        if index == 0 and len(samples) >= self.history_size:
            return RecordResult.TOO_OLD
        timestamps.insert(index, timestamp)
        samples.insert(index, metrics)
        if len(samples) > self.history_size:
            del timestamps[0]
            del samples[0]
        return RecordResult.INSERTED

    def _contribute(self, metrics: GPUMetrics, memory_total_bytes: int) -> None:
        self._reporting += 1
        self._reporting_total_memory += memory_total_bytes
        self._used_memory += metrics.memory_used_bytes
        if metrics.power_watts is None:
            self._power_unknown += 1
        else:
            self._power_micro += _micro(metrics.power_watts)
        self._utilization_micro += _micro(metrics.compute_utilization_percent)
        if metrics.temperature_celsius is None:
            self._temperature_unknown += 1
        else:
            insort(self._temperatures, metrics.temperature_celsius)
        insort(self._latest_times, metrics.timestamp)

    def _retract(self, metrics: GPUMetrics, memory_total_bytes: int) -> None:
        self._reporting -= 1
        self._reporting_total_memory -= memory_total_bytes
        self._used_memory -= metrics.memory_used_bytes
        if metrics.power_watts is None:
            self._power_unknown -= 1
        else:
            self._power_micro -= _micro(metrics.power_watts)
        self._utilization_micro -= _micro(metrics.compute_utilization_percent)
        if metrics.temperature_celsius is None:
            self._temperature_unknown -= 1
        else:
            _remove_sorted(self._temperatures, metrics.temperature_celsius)
        _remove_sorted(self._latest_times, metrics.timestamp)

    # -- queries ----------------------------------------------------------------------------

    def latest(self, device_id: str) -> GPUMetrics | None:
        samples = self._get(device_id).samples
        return samples[-1] if samples else None

    def history(self, device_id: str, since: float | None = None) -> list[GPUMetrics]:
        """Samples of ``device_id`` in timestamp order; with ``since``, those at or after it."""
        series = self._get(device_id)
        if since is None:
            return list(series.samples)
        return series.samples[bisect_left(series.timestamps, since) :]

    def aggregate(self, now: float | None = None) -> dict[str, Any]:
        """Cluster totals over the latest sample of every device, in O(number of vendors).

        Keys: ``device_count`` (registered), ``reporting_device_count`` (with at least one
        sample), ``total_memory_bytes`` (all registered devices), ``used_memory_bytes`` and
        ``free_memory_bytes`` (reporting devices, measured), ``unreported_memory_bytes``
        (devices without a sample; ``total = used + free + unreported``),
        ``average_utilization_percent`` (mean over reporting devices, 0.0 without any),
        ``max_temperature_celsius`` and ``oldest_sample_timestamp`` (None without any),
        ``total_power_watts``, ``unknown_temperature_device_count`` and
        ``unknown_power_device_count`` (reporting devices whose latest sample carries no
        temperature / no power, left out of the maximum and the total: a total over fewer devices
        than reported is a lower bound), ``devices_by_vendor`` (every vendor, zeros included) and
        ``oldest_sample_age_seconds``: how old the oldest latest-sample was at ``now`` (never
        negative; None without samples or without ``now``).
        """
        reporting = self._reporting
        oldest = self._latest_times[0] if self._latest_times else None
        age = None if oldest is None or now is None else max(0.0, now - oldest)
        return {
            "device_count": len(self._series),
            "reporting_device_count": reporting,
            "total_memory_bytes": self._total_memory,
            "used_memory_bytes": self._used_memory,
            "free_memory_bytes": self._reporting_total_memory - self._used_memory,
            "unreported_memory_bytes": self._total_memory - self._reporting_total_memory,
            "average_utilization_percent": (
                self._utilization_micro / _MICRO / reporting if reporting else 0.0
            ),
            "max_temperature_celsius": self._temperatures[-1] if self._temperatures else None,
            "total_power_watts": self._power_micro / _MICRO,
            "unknown_temperature_device_count": self._temperature_unknown,
            "unknown_power_device_count": self._power_unknown,
            "devices_by_vendor": {v.value: n for v, n in self._vendor_counts.items()},
            "oldest_sample_timestamp": oldest,
            "oldest_sample_age_seconds": age,
        }

    def _get(self, device_id: str) -> _Series:
        series = self._series.get(device_id)
        if series is None:
            raise UnknownDeviceError(device_id)
        return series


def _remove_sorted(values: list[float], value: float) -> None:
    index = bisect_left(values, value)
    if index < len(values) and values[index] == value:
        del values[index]
