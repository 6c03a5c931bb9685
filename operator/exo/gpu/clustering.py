"""``GPUClusteringManager``: the cluster view every exo-gpu component builds on.

It ties the parts together (``DeviceSelector`` for scores and eligibility, ``TelemetryCollector``
for history and totals, ``WorkloadDistributor`` for splitting tasks, the capability table for
default capacities) behind the API of the original design::

    manager = GPUClusteringManager()
    manager.register_device(GPUDeviceInfo(...))
    await manager.record_metrics(GPUMetrics(...))
    best = manager.select_best_device(min_memory_bytes=8_000_000_000)
    distribution = manager.distribute_workload(tasks=tasks, strategy="capacity", capacities=...)
    agg = manager.get_aggregated_metrics()

Rules the manager adds on top of its parts:

- Every mutating call validates its whole input first and changes nothing when it raises (all
  errors are ``exo.gpu.errors.GPUClusteringError`` subclasses naming the field and the reason,
  or a pydantic ``ValidationError`` for a malformed model).
- Time: staleness is judged at ``now()``: the injected ``clock`` when given (the controller passes
  ``time.time``), otherwise the newest sample timestamp the manager has accepted. The default
  lets a script replay recorded samples (the original snippets carry fixed 2024 timestamps)
  and still see which devices fell behind the others. A sample more than
  ``max_clock_skew_seconds`` ahead of the clock (or of wall time, without a clock) is refused:
  one bad node clock must not make every other device look stale.
- Calls are serialized by one re-entrant lock, so kopf's handler threads, the extender and
  ``async`` callers can share one manager.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from exo.gpu.capabilities import CapacityEstimate, resolve_compute_capacity
from exo.gpu.distribution import (
    Caps,
    Strategy,
    WorkloadDistributor,
    counts_aligned,
    parse_strategy,
    validate_capacities,
    validate_caps,
)
from exo.gpu.errors import (
    DeviceConflictError,
    DistributionError,
    InvalidMetricsError,
    InvalidRequestError,
    UnknownDeviceError,
)
from exo.gpu.fit import FitRequest
from exo.gpu.selector import (
    DeviceSelector,
    RankedDevice,
    Rejection,
    ScoreBreakdown,
    SelectionPolicy,
    SelectionRequest,
    identity_differences,
)
from exo.gpu.state import DeviceState
from exo.gpu.telemetry import DEFAULT_HISTORY_SIZE, RecordResult, TelemetryCollector
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

__all__ = ["DEFAULT_MAX_CLOCK_SKEW_SECONDS", "DistributionPlan", "GPUClusteringManager"]

T = TypeVar("T")

#: How far ahead of the clock a sample timestamp may lie before it is refused. Node clocks
#: synchronized by NTP agree within milliseconds; five minutes tolerates a badly drifting node
#: and still refuses timestamps in the wrong unit (milliseconds read as seconds) or year.
DEFAULT_MAX_CLOCK_SKEW_SECONDS = 300.0


@dataclass(frozen=True)
class DistributionPlan(Generic[T]):
    """A distribution and what explains it.

    ``assignments`` is what ``distribute_workload`` returns. ``weights`` are the capacity weights
    used per participating device (1.0 each for uniform), ``scores`` their score breakdowns, and
    ``excluded`` the devices named in ``capacities`` that took no part because they are not
    eligible, with the reasons.
    """

    assignments: dict[str, list[T]]
    strategy: Strategy
    weights: dict[str, float]
    scores: dict[str, ScoreBreakdown]
    excluded: dict[str, tuple[Rejection, ...]] = field(default_factory=dict)


class GPUClusteringManager:
    """Registered devices, their telemetry, and the selection and distribution policies."""

    def __init__(
        self,
        policy: SelectionPolicy | None = None,
        *,
        clock: Callable[[], float] | None = None,
        history_size: int = DEFAULT_HISTORY_SIZE,
        max_clock_skew_seconds: float = DEFAULT_MAX_CLOCK_SKEW_SECONDS,
    ) -> None:
        if (
            isinstance(max_clock_skew_seconds, bool)
            or not isinstance(max_clock_skew_seconds, int | float)
            or not math.isfinite(max_clock_skew_seconds)
            or max_clock_skew_seconds < 0
        ):
            raise InvalidRequestError(
                "max_clock_skew_seconds",
                f"must be a finite number >= 0, got {max_clock_skew_seconds!r}",
            )
        self._selector = DeviceSelector(policy)
        self._collector = TelemetryCollector(history_size)
        self._devices: dict[str, GPUDeviceInfo] = {}
        self._clock = clock
        self._max_skew = float(max_clock_skew_seconds)
        self._newest_timestamp: float | None = None
        self._lock = threading.RLock()

    # -- properties -------------------------------------------------------------------------

    @property
    def policy(self) -> SelectionPolicy:
        return self._selector.policy

    @property
    def selector(self) -> DeviceSelector:
        """The underlying selector (read access for explanations; mutate through the manager)."""
        return self._selector

    @property
    def collector(self) -> TelemetryCollector:
        """The underlying collector (read access; record through the manager)."""
        return self._collector

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def now(self) -> float | None:
        """The time staleness is judged at (see the module docstring); None before any sample."""
        if self._clock is None:
            return self._newest_timestamp
        value = self._clock()
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidRequestError("clock", f"returned {value!r}, not a finite number")
        return float(value)

    # -- devices ----------------------------------------------------------------------------

    def register_device(
        self, info: GPUDeviceInfo | Mapping[str, Any], *, replace: bool = False
    ) -> None:
        """Add a device. The same id with an equal identity again is a no-op.

        The same id with a different identity raises ``DeviceConflictError`` naming the fields
        that differ, unless ``replace`` (the controller applying an edited ``GPUDevice`` spec):
        then the identity is swapped, flags and reservations are kept, and metrics and history
        are kept only if vendor and memory total are unchanged.
        """
        info = _as_device_info(info)
        with self._lock:
            existing = self._devices.get(info.device_id)
            if existing is not None:
                if existing == info:
                    return
                if not replace:
                    raise DeviceConflictError(info.device_id, identity_differences(existing, info))
                capacity = resolve_compute_capacity(info)
                if (
                    existing.vendor != info.vendor
                    or existing.memory_total_bytes != info.memory_total_bytes
                ):
                    self._collector.unregister(info.device_id)
                    self._collector.register(info.device_id, info.vendor, info.memory_total_bytes)
                self._selector.replace_info(info, capacity)
                self._devices[info.device_id] = info
                return
            capacity = resolve_compute_capacity(info)
            self._collector.register(info.device_id, info.vendor, info.memory_total_bytes)
            self._selector.add_device(info, capacity)
            self._devices[info.device_id] = info

    def unregister_device(self, device_id: str) -> None:
        """Forget a device, its metrics, history, flags and reservation."""
        with self._lock:
            self._require(device_id)
            self._selector.remove_device(device_id)
            self._collector.unregister(device_id)
            del self._devices[device_id]

    def list_devices(self) -> list[GPUDeviceInfo]:
        """Every registered device, sorted by id."""
        with self._lock:
            return [self._devices[d] for d in sorted(self._devices)]

    def get_device(self, device_id: str) -> GPUDeviceInfo | None:
        return self._devices.get(device_id)

    def compute_capacity(self, device_id: str) -> CapacityEstimate:
        """The device's relative compute and where the figure came from."""
        with self._lock:
            self._require(device_id)
            return self._selector.capacity(device_id)

    # -- scheduling state (controller and extender hooks) -----------------------------------

    def set_cordoned(self, device_id: str, cordoned: bool = True) -> None:
        """Mark a device unschedulable (``GPUDevice.spec.unschedulable``) or schedulable again."""
        with self._lock:
            self._require(device_id)
            self._selector.set_cordoned(device_id, _flag("cordoned", cordoned))

    def set_ready(self, device_id: str, ready: bool, detail: str = "") -> None:
        """Record the device's Ready condition; a not-Ready device is not eligible. ``detail``
        (the condition's reason and message) is shown in the ``NotReady`` explanation."""
        with self._lock:
            self._require(device_id)
            self._selector.set_ready(device_id, _flag("ready", ready), str(detail))

    def set_labels(self, device_id: str, labels: Mapping[str, str]) -> None:
        """Labels matched by the ``labels`` filter of selection and distribution."""
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InvalidRequestError("labels", f"must map strings to strings, got {labels!r}")
        with self._lock:
            self._require(device_id)
            self._selector.set_labels(device_id, labels)

    def set_reservation(self, device_id: str, reserved_bytes: int) -> None:
        """Memory promised to pods bound to the device (the extender's ledger); 0 releases it."""
        _check_bytes("reserved_bytes", reserved_bytes)
        with self._lock:
            self._require(device_id, "reserved_bytes")
            self._selector.set_reserved_bytes(device_id, reserved_bytes)

    def set_reservations(self, reservations: Mapping[str, int]) -> None:
        """Replace every reservation at once (ledger rebuilt from the API); unlisted -> 0."""
        if not isinstance(reservations, Mapping):
            raise InvalidRequestError("reservations", f"must be a mapping, got {reservations!r}")
        with self._lock:
            for device_id, value in reservations.items():
                self._require(device_id, "reservations")
                _check_bytes(f"reservations[{device_id!r}]", value)
            for device_id in self._devices:
                self._selector.set_reserved_bytes(device_id, reservations.get(device_id, 0))

    def set_holds(self, device_id: str, reserved_bytes: int,
                  held: Mapping[str, int] | None) -> None:
        """Everything the ledger (``exo.gpu.state.Ledger``) holds on the device, and each
        workload's share of it (which that workload's own requests do not count)."""
        _check_bytes("reserved_bytes", reserved_bytes)
        with self._lock:
            self._require(device_id, "reserved_bytes")
            self._selector.set_holds(device_id, reserved_bytes,
                                     None if held is None else dict(held))

    def device_state(self, device_id: str) -> DeviceState:
        """The device's state as decisions read it (``exo.gpu.state.DeviceState``; read only)."""
        with self._lock:
            self._require(device_id)
            return self._selector.device_state(device_id)

    def get_reservation(self, device_id: str) -> int:
        with self._lock:
            self._require(device_id)
            return self._selector.reserved_bytes(device_id)

    # -- telemetry --------------------------------------------------------------------------

    async def record_metrics(self, metrics: GPUMetrics | Mapping[str, Any]) -> bool:
        """Record a sample; True if it was kept (False for a duplicate or a too-old sample).

        Refused, with nothing changed: a device that is not registered, a memory total that
        disagrees with the registered one, a timestamp that is not finite or lies more than
        ``max_clock_skew_seconds`` ahead of the clock.
        """
        return self.record_metrics_sync(metrics).accepted

    def record_metrics_sync(self, metrics: GPUMetrics | Mapping[str, Any]) -> RecordResult:
        """``record_metrics`` for synchronous callers, returning what happened to the sample."""
        metrics = _as_metrics(metrics)
        with self._lock:
            info = self._devices.get(metrics.device_id)
            if info is None:
                raise UnknownDeviceError(
                    metrics.device_id, context="register the device before recording its metrics"
                )
            if metrics.memory_total_bytes != info.memory_total_bytes:
                raise InvalidMetricsError(
                    "memory_total_bytes",
                    f"sample reports {metrics.memory_total_bytes} bytes but device "
                    f"{metrics.device_id!r} is registered with {info.memory_total_bytes}",
                )
            timestamp = metrics.timestamp
            if not math.isfinite(timestamp):
                raise InvalidMetricsError("timestamp", f"must be finite, got {timestamp!r}")
            reference = self._clock() if self._clock is not None else time.time()
            if timestamp > reference + self._max_skew:
                raise InvalidMetricsError(
                    "timestamp",
                    f"{timestamp} lies {timestamp - reference:.0f} s in the future "
                    f"(more than the allowed clock skew of {self._max_skew:.0f} s)",
                )
            result = self._collector.record(metrics)
            if result is RecordResult.LATEST:
                self._selector.update_metrics(metrics.device_id, metrics)
            if result.accepted and (
                self._newest_timestamp is None or timestamp > self._newest_timestamp
            ):
                self._newest_timestamp = timestamp
            return result

    def get_metrics(self, device_id: str) -> GPUMetrics | None:
        """The device's latest sample, or None before its first."""
        with self._lock:
            self._require(device_id)
            return self._collector.latest(device_id)

    def get_metrics_history(self, device_id: str, since: float | None = None) -> list[GPUMetrics]:
        """The device's kept samples in timestamp order (optionally those at or after ``since``)."""
        with self._lock:
            self._require(device_id)
            return self._collector.history(device_id, since)

    def get_aggregated_metrics(self) -> dict[str, Any]:
        """Cluster totals (see ``TelemetryCollector.aggregate`` for the keys), ages at ``now()``."""
        with self._lock:
            return self._collector.aggregate(self.now())

    # -- selection --------------------------------------------------------------------------

    def select_best_device(
        self,
        min_memory_bytes: int | None = None,
        vendor: Vendor | str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        predicate: Callable[[GPUDeviceInfo], bool] | None = None,
        request: FitRequest | None = None,
    ) -> str | None:
        """Id of the best eligible device (score, then id), or None when none qualifies.

        ``request`` (an ``exo.gpu.fit.FitRequest``) says everything at once, in place of the
        other filters (it adds whole-device requests, planned devices, a label selector and the
        requesting workload)."""
        request = _request(min_memory_bytes, vendor, labels, predicate, request)
        with self._lock:
            return self._selector.select(request, self.now())

    def rank_devices(
        self,
        min_memory_bytes: int | None = None,
        vendor: Vendor | str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        predicate: Callable[[GPUDeviceInfo], bool] | None = None,
        request: FitRequest | None = None,
    ) -> list[RankedDevice]:
        """Every device with its score breakdown and eligibility: eligible first, best first."""
        request = _request(min_memory_bytes, vendor, labels, predicate, request)
        with self._lock:
            return self._selector.rank(request, self.now())

    def explain_device(
        self,
        device_id: str,
        min_memory_bytes: int | None = None,
        vendor: Vendor | str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        predicate: Callable[[GPUDeviceInfo], bool] | None = None,
        request: FitRequest | None = None,
    ) -> RankedDevice:
        """One device's score breakdown and eligibility for a request."""
        request = _request(min_memory_bytes, vendor, labels, predicate, request)
        with self._lock:
            self._require(device_id)
            return self._selector.evaluate(device_id, request, self.now())

    # -- distribution -----------------------------------------------------------------------

    def distribute_workload(
        self,
        tasks: Iterable[T],
        strategy: Strategy | str = Strategy.UNIFORM,
        capacities: Mapping[str, float] | None = None,
        max_items_per_device: Caps = None,
        *,
        min_memory_bytes: int | None = None,
        vendor: Vendor | str | None = None,
        labels: Mapping[str, str] | None = None,
        predicate: Callable[[GPUDeviceInfo], bool] | None = None,
        request: FitRequest | None = None,
    ) -> dict[str, list[T]]:
        """Split ``tasks`` over eligible devices: ``{device_id: [tasks]}``.

        Devices take part when eligible for the request (the filters are those of
        ``select_best_device``) and, if ``capacities`` is given, named in it; they appear in
        the result even when they get no task. ``capacities`` defaults to each device's compute
        capacity for the capacity strategy. Errors name the argument and the reason: unknown
        strategy; capacities negative, NaN, all zero or naming unregistered devices;
        ``max_items_per_device`` below 1 or unable to hold every task; tasks but no eligible
        device.
        """
        plan = self._plan(
            tasks,
            strategy,
            capacities,
            max_items_per_device,
            _request(min_memory_bytes, vendor, labels, predicate, request),
            explain=False,
        )
        return plan.assignments

    def plan_workload(
        self,
        tasks: Iterable[T],
        strategy: Strategy | str = Strategy.UNIFORM,
        capacities: Mapping[str, float] | None = None,
        max_items_per_device: Caps = None,
        *,
        min_memory_bytes: int | None = None,
        vendor: Vendor | str | None = None,
        labels: Mapping[str, str] | None = None,
        predicate: Callable[[GPUDeviceInfo], bool] | None = None,
        request: FitRequest | None = None,
    ) -> DistributionPlan[T]:
        """``distribute_workload`` with the weights, scores and exclusions that explain it."""
        return self._plan(
            tasks,
            strategy,
            capacities,
            max_items_per_device,
            _request(min_memory_bytes, vendor, labels, predicate, request),
            explain=True,
        )

    def _plan(
        self,
        tasks: Iterable[T],
        strategy: Strategy | str,
        capacities: Mapping[str, float] | None,
        max_items_per_device: Caps,
        request: SelectionRequest,
        explain: bool,
    ) -> DistributionPlan[T]:
        chosen = parse_strategy(strategy)
        named = validate_capacities(capacities) if capacities is not None else None
        caps = validate_caps(max_items_per_device)
        task_list = tasks if isinstance(tasks, list) else list(tasks)
        with self._lock:
            if named is not None:
                self._require_all(named, "capacities")
            if isinstance(caps, dict):
                self._require_all(caps, "max_items_per_device")
            now = self.now()
            eligible = self._selector.eligible_in_order(request, now)
            weights: list[float] | None
            if named is not None:
                devices = [d for d in eligible if d in named]
                if chosen is Strategy.CAPACITY:
                    weights = [named[d] for d in devices]
                else:
                    weights = [1.0 if named[d] > 0 else 0.0 for d in devices]
            else:
                devices = eligible
                if chosen is Strategy.CAPACITY:
                    weights = list(map(self._selector.capacity_values().__getitem__, devices))
                else:
                    weights = None
            if task_list and not devices:
                raise DistributionError("devices", self._no_device_message(len(task_list), named))
            cap_list = (
                caps if caps is None or isinstance(caps, int) else list(map(caps.get, devices))
            )
            counts = counts_aligned(len(task_list), len(devices), weights, cap_list)
            assignments = WorkloadDistributor.assign(task_list, devices, counts)
            if not explain:
                return DistributionPlan(assignments, chosen, {}, {})
            scores: dict[str, ScoreBreakdown] = {}
            for device_id in devices:
                breakdown = self._selector.breakdown(device_id)
                if breakdown is not None:
                    scores[device_id] = breakdown
            excluded: dict[str, tuple[Rejection, ...]] = {}
            if named is not None:
                taking_part = set(devices)
                for device_id in sorted(named):
                    if device_id not in taking_part:
                        excluded[device_id] = self._selector.evaluate(
                            device_id, request, now
                        ).rejections
            used = (
                dict.fromkeys(devices, 1.0)
                if weights is None
                else dict(zip(devices, weights, strict=True))
            )
            return DistributionPlan(assignments, chosen, used, scores, excluded)

    def _no_device_message(self, task_count: int, named: Mapping[str, float] | None) -> str:
        if not self._devices:
            return f"{task_count} task(s) but no device is registered"
        request_free = self._selector.rank(None, self.now())
        pool = [r for r in request_free if named is None or r.device_id in named]
        reasons: dict[str, int] = {}
        for ranked in pool:
            code = ranked.reason.value if ranked.reason is not None else "FilteredByRequest"
            reasons[code] = reasons.get(code, 0) + 1
        summary = ", ".join(f"{code}: {n}" for code, n in sorted(reasons.items()))
        scope = "named in capacities" if named is not None else "registered"
        return (
            f"{task_count} task(s) but none of the {len(pool)} device(s) {scope} is eligible "
            f"({summary})"
        )

    # -- helpers ----------------------------------------------------------------------------

    def _require(self, device_id: str, field: str = "device_id") -> None:
        if device_id not in self._devices:
            raise UnknownDeviceError(device_id, field=field)

    def _require_all(self, mapping: Mapping[str, object], field: str) -> None:
        unknown = sorted(d for d in mapping if d not in self._devices)
        if unknown:
            raise UnknownDeviceError(
                unknown[0],
                field=field,
                context=f"{len(unknown)} unregistered id(s) named: {unknown[:5]}",
            )


def _as_device_info(info: GPUDeviceInfo | Mapping[str, Any]) -> GPUDeviceInfo:
    if isinstance(info, GPUDeviceInfo):
        return info
    if isinstance(info, Mapping):
        return GPUDeviceInfo.model_validate(info)
    raise InvalidRequestError("info", f"must be a GPUDeviceInfo, got {type(info).__name__}")


def _as_metrics(metrics: GPUMetrics | Mapping[str, Any]) -> GPUMetrics:
    if isinstance(metrics, GPUMetrics):
        return metrics
    if isinstance(metrics, Mapping):
        return GPUMetrics.model_validate(metrics)
    raise InvalidMetricsError("metrics", f"must be a GPUMetrics, got {type(metrics).__name__}")


def _request(
    min_memory_bytes: int | None,
    vendor: Vendor | str | None,
    labels: Mapping[str, str] | None,
    predicate: Callable[[GPUDeviceInfo], bool] | None,
    request: FitRequest | None = None,
) -> SelectionRequest:
    if request is not None:
        if not isinstance(request, FitRequest):
            raise InvalidRequestError(
                "request", f"must be an exo.gpu.fit.FitRequest, got {type(request).__name__}")
        if min_memory_bytes is not None or vendor is not None or labels is not None \
                or predicate is not None:
            raise InvalidRequestError(
                "request", "give either a request or min_memory_bytes/vendor/labels/predicate")
        return request
    if labels is None and predicate is None and isinstance(vendor, Vendor | str | None) and \
            isinstance(min_memory_bytes, int | None):
        return _simple_request(min_memory_bytes, vendor)
    return SelectionRequest(
        min_memory_bytes=0 if min_memory_bytes is None else min_memory_bytes,
        vendor=vendor,  # type: ignore[arg-type]  # SelectionRequest parses strings
        labels=labels,
        predicate=predicate,
    )


@functools.lru_cache(maxsize=256)
def _simple_request(min_memory_bytes: int | None, vendor: Vendor | str | None) -> FitRequest:
    """The request of a call with nothing but a size and a vendor (the common seed call), built
    once per distinct pair: requests are immutable."""
    return SelectionRequest(
        min_memory_bytes=0 if min_memory_bytes is None else min_memory_bytes,
        vendor=vendor,  # type: ignore[arg-type]  # SelectionRequest parses strings
    )


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequestError(name, f"must be True or False, got {value!r}")
    return value


def _check_bytes(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(name, f"must be an integer number of bytes, got {value!r}")
    if value < 0:
        raise InvalidRequestError(name, f"must not be negative, got {value}")
