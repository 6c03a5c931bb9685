"""Device scoring, eligibility and ranking: the selection policy of DESIGN.md section 4.

The score formula lives in one place, the docstring and body of ``score_device``; everything else
(the selector, the manager, the Kubernetes extender) calls it. ``SelectionPolicy`` holds the named
defaults with their rationale.

``DeviceSelector`` keeps per-device state (identity, latest metrics, reservation, cordon and
readiness flags, labels) and a cached score per device, recomputed only when that device's inputs
change. Devices that pass the request-independent checks are kept in score order (a sorted list
per cluster and per vendor), so ``select`` usually inspects a handful of devices instead of
rescoring thousands. Staleness depends on time, not on events, so a min-heap of latest sample
times drops devices from the ordering as the clock passes their deadline (lazily, on the next
query) and a new sample puts them back.

Eligibility, in the order the checks run; each rejection carries a machine-readable code (a
``RejectionReason``, CamelCase like a Kubernetes condition reason) and a human message:

- ``Cordoned``: the device was marked unschedulable.
- ``NotReady``: its owner reports it not Ready.
- ``NoMetrics``: no sample yet. Selection is telemetry-driven; a device whose memory use is
  unknown could already be full, so it is not offered until it reports.
- ``Stale``: its latest sample is older than ``SelectionPolicy.stale_after_seconds``.
- ``TooHot``: at or above ``thermal_max_celsius`` (:func:`too_hot`; a device whose driver
  reports no temperature is never too hot).
- ``VendorMismatch``, ``SelectorMismatch`` (labels or predicate), ``InsufficientMemory`` (free
  memory, after reservations, below the request): request-specific.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from operator import itemgetter

from exo.gpu.capabilities import CapacityEstimate, resolve_compute_capacity
from exo.gpu.errors import (
    DeviceConflictError,
    InvalidMetricsError,
    InvalidRequestError,
    UnknownDeviceError,
)
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

__all__ = [
    "DEFAULT_POLICY",
    "DeviceSelector",
    "RankedDevice",
    "Rejection",
    "RejectionReason",
    "ScoreBreakdown",
    "SelectionPolicy",
    "SelectionRequest",
    "extender_score",
    "identity_differences",
    "score_device",
    "too_hot",
]

_GIB = 1024**3


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class SelectionPolicy:
    """Tunable constants of the selection policy. The defaults are those of the original design.

    - ``memory_weight`` 0.6 / ``compute_weight`` 0.4: free memory decides whether a workload fits
      at all, compute headroom only how fast it runs, so memory weighs more. With weights summing
      to 1 the unpenalized score already lies in 0..1.
    - ``thermal_start_celsius`` 75 / ``thermal_max_celsius`` 90 / ``max_thermal_penalty`` 0.5:
      below 75 C GPUs run at full clocks; towards 90 C they throttle, so the score falls linearly
      by up to 0.5 (enough to put a hot, idle device behind a cool, busier one); at 90 C and above
      the device is excluded.
    - ``reporting_interval_seconds`` 30: the exporter's heartbeat (DESIGN.md section 6): a device
      writes its status at least this often even when nothing changed.
      ``stale_after_intervals`` 3: three missed heartbeats (90 s) before a device counts as gone,
      which tolerates one lost or delayed write without flapping.
    """

    memory_weight: float = 0.6
    compute_weight: float = 0.4
    thermal_start_celsius: float = 75.0
    thermal_max_celsius: float = 90.0
    max_thermal_penalty: float = 0.5
    reporting_interval_seconds: float = 30.0
    stale_after_intervals: float = 3.0

    def __post_init__(self) -> None:
        for name in (
            "memory_weight",
            "compute_weight",
            "thermal_start_celsius",
            "thermal_max_celsius",
            "max_thermal_penalty",
            "reporting_interval_seconds",
            "stale_after_intervals",
        ):
            if not _finite(getattr(self, name)):
                raise InvalidRequestError(
                    name, f"must be a finite number, got {getattr(self, name)!r}"
                )
        if self.memory_weight < 0 or self.compute_weight < 0:
            raise InvalidRequestError("memory_weight", "weights must not be negative")
        if self.memory_weight + self.compute_weight <= 0:
            raise InvalidRequestError("memory_weight", "memory and compute weights are both zero")
        if self.thermal_start_celsius >= self.thermal_max_celsius:
            raise InvalidRequestError(
                "thermal_start_celsius",
                f"must be below thermal_max_celsius ({self.thermal_max_celsius})",
            )
        if not 0 <= self.max_thermal_penalty <= 1:
            raise InvalidRequestError("max_thermal_penalty", "must lie within 0..1")
        if self.reporting_interval_seconds <= 0:
            raise InvalidRequestError("reporting_interval_seconds", "must be positive")
        if self.stale_after_intervals <= 0:
            raise InvalidRequestError("stale_after_intervals", "must be positive")

    @property
    def stale_after_seconds(self) -> float:
        """A device whose latest sample is older than this is stale (90 s by default)."""
        return self.reporting_interval_seconds * self.stale_after_intervals


DEFAULT_POLICY = SelectionPolicy()


@dataclass(frozen=True, slots=True)
class ScoreBreakdown:
    """A score and its terms: ``total = clamp(memory + compute - thermal, 0, 1)``.

    ``memory`` and ``compute`` are already weighted; ``thermal`` is the penalty subtracted.
    ``free_memory_bytes`` is the free memory the memory term was computed from (after
    reservations, never negative).
    """

    memory: float
    compute: float
    thermal: float
    total: float
    free_memory_bytes: int


def score_device(
    memory_total_bytes: int,
    memory_used_bytes: int,
    compute_utilization_percent: float,
    temperature_celsius: float | None,
    reserved_bytes: int = 0,
    policy: SelectionPolicy = DEFAULT_POLICY,
) -> ScoreBreakdown:
    """Score one device. This is the only definition of the formula::

        used_effective  = max(memory_used_bytes, reserved_bytes)
        free            = clamp(memory_total_bytes - used_effective, 0, memory_total_bytes)
        memory          = memory_weight * free / memory_total_bytes                  (0.6 default)
        compute         = compute_weight * (1 - clamp(utilization, 0, 100) / 100)   (0.4 default)
        thermal         = 0                                   if temperature is unknown (None)
                        = 0                                   if temperature <= thermal_start
                        = max_thermal_penalty                 if temperature >= thermal_max
                        = max_thermal_penalty * (temperature - thermal_start)
                                              / (thermal_max - thermal_start)   otherwise
        total           = clamp(memory + compute - thermal, 0, 1)

    With the defaults: 75 C -> no penalty, 82.5 C -> 0.25, 90 C -> 0.5 (and excluded by the
    eligibility rules, not by this function). Reserved memory is memory promised to pods already
    bound to the device: it counts even before the pods allocate it, and measured use counts even
    when nothing was reserved (stray processes).

    Unknown temperature (the driver exposes none): no thermal penalty, and never ``TooHot``
    (:func:`too_hot`). The exporter reports the field absent rather than 0, so that the score
    does not pretend to know the device is cool; nor does it guess that it is hot.
    """
    if not _finite(compute_utilization_percent):
        raise InvalidMetricsError("compute_utilization_percent", "must be a finite number")
    if temperature_celsius is not None and not _finite(temperature_celsius):
        raise InvalidMetricsError("temperature_celsius", "must be a finite number")
    used = memory_used_bytes if memory_used_bytes > reserved_bytes else reserved_bytes
    if memory_total_bytes > 0:
        free = min(max(memory_total_bytes - used, 0), memory_total_bytes)
        memory_fraction = free / memory_total_bytes
    else:
        free = 0
        memory_fraction = 0.0
    utilization = min(max(compute_utilization_percent, 0.0), 100.0)
    start = policy.thermal_start_celsius
    if temperature_celsius is None or temperature_celsius <= start:
        thermal = 0.0
    elif temperature_celsius >= policy.thermal_max_celsius:
        thermal = policy.max_thermal_penalty
    else:
        thermal = (
            policy.max_thermal_penalty
            * (temperature_celsius - start)
            / (policy.thermal_max_celsius - start)
        )
    memory = policy.memory_weight * memory_fraction
    compute = policy.compute_weight * (1.0 - utilization / 100.0)
    total = min(max(memory + compute - thermal, 0.0), 1.0)
    return ScoreBreakdown(memory, compute, thermal, total, free)


def too_hot(temperature_celsius: float | None, policy: SelectionPolicy = DEFAULT_POLICY) -> bool:
    """At or above ``thermal_max_celsius``: the device is excluded. Unknown is never too hot."""
    return temperature_celsius is not None and temperature_celsius >= policy.thermal_max_celsius


def extender_score(total: float, max_priority: int = 10) -> int:
    """Map a 0..1 score to the extender's integer priority 0..``max_priority`` (round half up)."""
    if not _finite(total):
        return 0
    return min(max_priority, max(0, int(total * max_priority + 0.5)))


class RejectionReason(StrEnum):
    """Machine-readable reason a device is not eligible (shown to users by the extender)."""

    CORDONED = "Cordoned"
    NOT_READY = "NotReady"
    NO_METRICS = "NoMetrics"
    STALE = "Stale"
    TOO_HOT = "TooHot"
    VENDOR_MISMATCH = "VendorMismatch"
    SELECTOR_MISMATCH = "SelectorMismatch"
    INSUFFICIENT_MEMORY = "InsufficientMemory"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a device is not eligible: a ``RejectionReason`` and a sentence for humans."""

    code: RejectionReason
    message: str


@dataclass(frozen=True, slots=True)
class SelectionRequest:
    """What a workload asks of a device. Every filter is optional.

    ``labels`` must all be present with equal values among the device's labels (set with
    ``DeviceSelector.set_labels``); ``predicate`` is any extra test on the device identity.
    """

    min_memory_bytes: int = 0
    vendor: Vendor | None = None
    labels: Mapping[str, str] | None = None
    predicate: Callable[[GPUDeviceInfo], bool] | None = None

    def __post_init__(self) -> None:
        value = self.min_memory_bytes
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequestError(
                "min_memory_bytes", f"must be an integer number of bytes, got {value!r}"
            )
        if value < 0:
            raise InvalidRequestError("min_memory_bytes", f"must not be negative, got {value}")
        if self.vendor is not None and not isinstance(self.vendor, Vendor):
            try:
                object.__setattr__(self, "vendor", Vendor(self.vendor))
            except ValueError:
                known = ", ".join(v.value for v in Vendor)
                raise InvalidRequestError(
                    "vendor", f"unknown vendor {self.vendor!r} (known: {known})"
                ) from None

    @property
    def is_trivial(self) -> bool:
        return self.min_memory_bytes == 0 and self.labels is None and self.predicate is None


@dataclass(frozen=True, slots=True)
class RankedDevice:
    """One device as the selector sees it: score breakdown, eligibility and why."""

    device_id: str
    info: GPUDeviceInfo
    breakdown: ScoreBreakdown | None
    eligible: bool
    rejections: tuple[Rejection, ...]
    capacity: CapacityEstimate
    metrics: GPUMetrics | None = None
    reserved_bytes: int = 0

    @property
    def score(self) -> float:
        """Total score (0.0 for a device without metrics)."""
        return 0.0 if self.breakdown is None else self.breakdown.total

    @property
    def reason(self) -> RejectionReason | None:
        """The first rejection code, or None when eligible."""
        return self.rejections[0].code if self.rejections else None


_Key = tuple[float, str]


@dataclass(slots=True, eq=False)
class _DeviceState:
    info: GPUDeviceInfo
    capacity: CapacityEstimate
    labels: dict[str, str] = field(default_factory=dict)
    cordoned: bool = False
    ready: bool = True
    metrics: GPUMetrics | None = None
    reserved: int = 0
    breakdown: ScoreBreakdown | None = None
    key: _Key | None = None
    swept: bool = False


def _gib(value: int) -> str:
    return f"{value / _GIB:.1f} GiB"


class DeviceSelector:
    """Scores, filters and ranks registered devices (see the module docstring for the policy).

    Not thread-safe on its own; ``GPUClusteringManager`` serializes access. ``now`` arguments are
    seconds on the same clock as sample timestamps; ``None`` means "no clock yet" (nothing stale).
    """

    def __init__(self, policy: SelectionPolicy | None = None) -> None:
        self.policy = policy if policy is not None else DEFAULT_POLICY
        self._states: dict[str, _DeviceState] = {}
        self._ordered: list[_Key] = []
        self._ordered_by_vendor: dict[Vendor, list[_Key]] = {v: [] for v in Vendor}
        self._fresh_heap: list[tuple[float, str]] = []
        self._swept_now: float | None = None
        self._capacity_values: dict[str, float] = {}

    # -- membership -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._states

    def add_device(
        self,
        info: GPUDeviceInfo,
        capacity: CapacityEstimate | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Track ``info``; a second add with the same id raises ``DeviceConflictError``."""
        existing = self._states.get(info.device_id)
        if existing is not None:
            if existing.info == info:
                return
            raise DeviceConflictError(info.device_id, identity_differences(existing.info, info))
        state = _DeviceState(
            info=info,
            capacity=capacity if capacity is not None else resolve_compute_capacity(info),
            labels=dict(labels) if labels else {},
        )
        self._states[info.device_id] = state
        self._capacity_values[info.device_id] = state.capacity.value

    def remove_device(self, device_id: str) -> None:
        state = self._state(device_id)
        self._unlist(state)
        del self._states[device_id]
        del self._capacity_values[device_id]

    def replace_info(self, info: GPUDeviceInfo, capacity: CapacityEstimate | None = None) -> None:
        """Swap the identity of a tracked device.

        Flags, labels and the reservation stay. The latest metrics stay only if vendor and
        memory total are unchanged (a sample of a different device means nothing).
        """
        state = self._state(info.device_id)
        self._unlist(state)
        if state.metrics is not None and (
            state.metrics.memory_total_bytes != info.memory_total_bytes
            or state.info.vendor != info.vendor
        ):
            state.metrics = None
            state.breakdown = None
        state.info = info
        state.capacity = capacity if capacity is not None else resolve_compute_capacity(info)
        self._capacity_values[info.device_id] = state.capacity.value
        self._rescore(state)

    # -- inputs -----------------------------------------------------------------------------

    def update_metrics(self, device_id: str, metrics: GPUMetrics) -> None:
        """Make ``metrics`` the device's latest sample and rescore it."""
        state = self._state(device_id)
        state.metrics = metrics
        state.swept = False
        heapq.heappush(self._fresh_heap, (metrics.timestamp, device_id))
        if len(self._fresh_heap) > 2 * len(self._states) + 1024:
            self._rebuild_heap()
        self._rescore(state)

    def set_reserved_bytes(self, device_id: str, reserved_bytes: int) -> None:
        """Memory promised to pods bound to the device; counts as used in the score."""
        _check_bytes("reserved_bytes", reserved_bytes)
        state = self._state(device_id)
        if state.reserved != reserved_bytes:
            state.reserved = reserved_bytes
            self._rescore(state)

    def set_cordoned(self, device_id: str, cordoned: bool) -> None:
        state = self._state(device_id)
        state.cordoned = bool(cordoned)
        self._sync(state)

    def set_ready(self, device_id: str, ready: bool) -> None:
        state = self._state(device_id)
        state.ready = bool(ready)
        self._sync(state)

    def set_labels(self, device_id: str, labels: Mapping[str, str]) -> None:
        self._state(device_id).labels = dict(labels)

    # -- queries ----------------------------------------------------------------------------

    def reserved_bytes(self, device_id: str) -> int:
        return self._state(device_id).reserved

    def breakdown(self, device_id: str) -> ScoreBreakdown | None:
        return self._state(device_id).breakdown

    def capacity(self, device_id: str) -> CapacityEstimate:
        return self._state(device_id).capacity

    def capacity_values(self) -> Mapping[str, float]:
        """Compute capacity figure per device id (a live view: do not mutate)."""
        return self._capacity_values

    def select(
        self, request: SelectionRequest | None = None, now: float | None = None
    ) -> str | None:
        """The best eligible device id for ``request`` at ``now`` (ties by id), or None.

        Walks the score ordering from the top and stops at the first device that passes the
        request's filters: a few steps unless most devices fail them.
        """
        request = request if request is not None else _NO_REQUEST
        self._sweep(now)
        ordered = self._ordering(request)
        if request.is_trivial:
            return ordered[0][1] if ordered else None
        for _, device_id in ordered:
            if self._passes_request(self._states[device_id], request):
                return device_id
        return None

    def eligible_in_order(
        self, request: SelectionRequest | None = None, now: float | None = None
    ) -> list[str]:
        """Ids of every eligible device, best score first (ties by id)."""
        request = request if request is not None else _NO_REQUEST
        self._sweep(now)
        ordered = self._ordering(request)
        if request.is_trivial:
            return list(map(itemgetter(1), ordered))
        states = self._states
        return [d for _, d in ordered if self._passes_request(states[d], request)]

    def evaluate(
        self, device_id: str, request: SelectionRequest | None = None, now: float | None = None
    ) -> RankedDevice:
        """Score breakdown and every reason ``device_id`` is (not) eligible for ``request``."""
        request = request if request is not None else _NO_REQUEST
        return self._evaluate(self._state(device_id), request, now)

    def rank(
        self, request: SelectionRequest | None = None, now: float | None = None
    ) -> list[RankedDevice]:
        """Every device: eligible ones first by score (ties by id), then the rest likewise."""
        request = request if request is not None else _NO_REQUEST
        self._sweep(now)
        ranked = [self._evaluate(state, request, now) for state in self._states.values()]
        ranked.sort(key=lambda r: (not r.eligible, -r.score, r.device_id))
        return ranked

    # -- internals --------------------------------------------------------------------------

    def _state(self, device_id: str) -> _DeviceState:
        state = self._states.get(device_id)
        if state is None:
            raise UnknownDeviceError(device_id)
        return state

    def _ordering(self, request: SelectionRequest) -> list[_Key]:
        if request.vendor is None:
            return self._ordered
        return self._ordered_by_vendor[request.vendor]

    def _passes_request(self, state: _DeviceState, request: SelectionRequest) -> bool:
        breakdown = state.breakdown
        if breakdown is None or breakdown.free_memory_bytes < request.min_memory_bytes:
            return False
        if request.labels is not None:
            labels = state.labels
            for key, value in request.labels.items():
                if labels.get(key) != value:
                    return False
        return request.predicate is None or bool(request.predicate(state.info))

    def _rescore(self, state: _DeviceState) -> None:
        metrics = state.metrics
        if metrics is None:
            state.breakdown = None
        else:
            state.breakdown = score_device(
                state.info.memory_total_bytes,
                metrics.memory_used_bytes,
                metrics.compute_utilization_percent,
                metrics.temperature_celsius,
                state.reserved,
                self.policy,
            )
        self._sync(state)

    def _listable(self, state: _DeviceState) -> bool:
        metrics = state.metrics
        return (
            not state.cordoned
            and state.ready
            and not state.swept
            and metrics is not None
            and state.breakdown is not None
            and not too_hot(metrics.temperature_celsius, self.policy)
        )

    def _sync(self, state: _DeviceState) -> None:
        """Put the device at its place in the score ordering, or take it out."""
        if self._listable(state):
            assert state.breakdown is not None
            key: _Key | None = (-state.breakdown.total, state.info.device_id)
        else:
            key = None
        if key == state.key:
            return
        self._unlist(state)
        if key is not None:
            insort(self._ordered, key)
            insort(self._ordered_by_vendor[state.info.vendor], key)
            state.key = key

    def _unlist(self, state: _DeviceState) -> None:
        key = state.key
        if key is None:
            return
        for ordered in (self._ordered, self._ordered_by_vendor[state.info.vendor]):
            index = bisect_left(ordered, key)
            if index < len(ordered) and ordered[index] == key:
                del ordered[index]
        state.key = None

    def _rebuild_heap(self) -> None:
        self._fresh_heap = [
            (s.metrics.timestamp, d)
            for d, s in self._states.items()
            if s.metrics is not None and not s.swept
        ]
        heapq.heapify(self._fresh_heap)

    def _sweep(self, now: float | None) -> None:
        """Take devices whose latest sample went stale by ``now`` out of the ordering."""
        if now is None:
            return
        if self._swept_now is not None and now < self._swept_now:
            # The clock went backwards: devices swept earlier may be fresh again.
            for state in self._states.values():
                if state.swept:
                    state.swept = False
                    self._sync(state)
            self._rebuild_heap()
        self._swept_now = now
        cutoff = now - self.policy.stale_after_seconds
        heap = self._fresh_heap
        states = self._states
        while heap and heap[0][0] < cutoff:
            timestamp, device_id = heapq.heappop(heap)
            entry = states.get(device_id)
            if (
                entry is None
                or entry.swept
                or entry.metrics is None
                or entry.metrics.timestamp != timestamp
            ):
                continue
            entry.swept = True
            self._sync(entry)

    def _evaluate(
        self, state: _DeviceState, request: SelectionRequest, now: float | None
    ) -> RankedDevice:
        policy = self.policy
        rejections: list[Rejection] = []
        metrics = state.metrics
        info = state.info
        if state.cordoned:
            rejections.append(
                Rejection(RejectionReason.CORDONED, "device is cordoned (marked unschedulable)")
            )
        if not state.ready:
            rejections.append(Rejection(RejectionReason.NOT_READY, "device is not Ready"))
        if metrics is None:
            rejections.append(
                Rejection(RejectionReason.NO_METRICS, "device has not reported any metrics yet")
            )
        else:
            if now is not None and metrics.timestamp < now - policy.stale_after_seconds:
                rejections.append(
                    Rejection(
                        RejectionReason.STALE,
                        f"latest sample is {now - metrics.timestamp:.0f} s old "
                        f"(stale after {policy.stale_after_seconds:.0f} s)",
                    )
                )
            if too_hot(metrics.temperature_celsius, policy):
                rejections.append(
                    Rejection(
                        RejectionReason.TOO_HOT,
                        f"temperature {metrics.temperature_celsius:.1f} C is at or above the "
                        f"{policy.thermal_max_celsius:.1f} C limit",
                    )
                )
        if request.vendor is not None and info.vendor != request.vendor:
            rejections.append(
                Rejection(
                    RejectionReason.VENDOR_MISMATCH,
                    f"vendor {info.vendor.value} does not match the requested "
                    f"{request.vendor.value}",
                )
            )
        if request.labels is not None:
            missing = {k: v for k, v in request.labels.items() if state.labels.get(k) != v}
            if missing:
                rejections.append(
                    Rejection(
                        RejectionReason.SELECTOR_MISMATCH,
                        f"device labels do not match {dict(sorted(missing.items()))}",
                    )
                )
        if request.predicate is not None and not request.predicate(info):
            rejections.append(
                Rejection(RejectionReason.SELECTOR_MISMATCH, "excluded by the request's predicate")
            )
        breakdown = state.breakdown
        if (
            breakdown is not None
            and request.min_memory_bytes > 0
            and breakdown.free_memory_bytes < request.min_memory_bytes
        ):
            reserved = f" with {_gib(state.reserved)} reserved" if state.reserved else ""
            rejections.append(
                Rejection(
                    RejectionReason.INSUFFICIENT_MEMORY,
                    f"free memory {_gib(breakdown.free_memory_bytes)}{reserved} is below the "
                    f"requested {_gib(request.min_memory_bytes)}",
                )
            )
        return RankedDevice(
            device_id=info.device_id,
            info=info,
            breakdown=breakdown,
            eligible=not rejections,
            rejections=tuple(rejections),
            capacity=state.capacity,
            metrics=metrics,
            reserved_bytes=state.reserved,
        )


_NO_REQUEST = SelectionRequest()


def _check_bytes(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(name, f"must be an integer number of bytes, got {value!r}")
    if value < 0:
        raise InvalidRequestError(name, f"must not be negative, got {value}")


def identity_differences(
    old: GPUDeviceInfo, new: GPUDeviceInfo
) -> dict[str, tuple[object, object]]:
    """Fields whose values differ between two identities of one device: ``{field: (old, new)}``."""
    return {
        name: (getattr(old, name), getattr(new, name))
        for name in GPUDeviceInfo.model_fields
        if getattr(old, name) != getattr(new, name)
    }
