"""Device ranking: the seed's ``DeviceSelector`` over the core's device state and fit rules.

The score formula lives in ``exo.gpu.policy.score_device`` (re-exported here with the policy
constants, so ``from exo.gpu.selector import score_device`` keeps working); whether a device can
take a request is ``exo.gpu.fit`` (the reasons are ``exo.gpu.fit.FitReason``, re-exported here as
``RejectionReason``, the seed's name for the same enum). This module only keeps devices in score
order so that selection is cheap.

``DeviceSelector`` keeps one ``exo.gpu.state.DeviceState`` per device (identity, latest metrics,
reservation, cordon and readiness flags, labels) whose score and request-independent verdict are
recomputed only when that device's inputs change. Devices with no request-independent reason
against them are kept in score order (a sorted list per cluster and per vendor), so ``select``
usually inspects a handful of devices instead of rescoring thousands. Staleness depends on time,
not on events, so a min-heap of "fresh until" times drops devices from the ordering as the clock
passes them (lazily, on the next query) and a new sample puts them back.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter

from exo.gpu.capabilities import CapacityEstimate, resolve_compute_capacity
from exo.gpu.errors import (
    DeviceConflictError,
    InvalidRequestError,
    UnknownDeviceError,
)
from exo.gpu.fit import FitReason, FitRequest, FitResult, explain, fit
from exo.gpu.policy import (
    DEFAULT_POLICY,
    ScoreBreakdown,
    SelectionPolicy,
    extender_score,
    score_device,
)
from exo.gpu.state import DeviceState
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
]

#: The seed's names for the core's fit types: one enum of reasons, one result, one request.
RejectionReason = FitReason
Rejection = FitResult
SelectionRequest = FitRequest


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


class DeviceSelector:
    """Scores, filters and ranks registered devices (see the module docstring for the policy).

    Not thread-safe on its own; ``GPUClusteringManager`` serializes access. ``now`` arguments are
    seconds on the same clock as sample timestamps; ``None`` means "no clock yet" (nothing stale).
    """

    def __init__(self, policy: SelectionPolicy | None = None) -> None:
        self.policy = policy if policy is not None else DEFAULT_POLICY
        self._states: dict[str, DeviceState] = {}
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
        state = DeviceState(  # as refresh() leaves a device without a sample
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
        state.set_info(info)
        state.capacity = capacity if capacity is not None else resolve_compute_capacity(info)
        self._capacity_values[info.device_id] = state.capacity.value
        self._rescore(state)

    # -- inputs -----------------------------------------------------------------------------

    def update_metrics(self, device_id: str, metrics: GPUMetrics) -> None:
        """Make ``metrics`` the device's latest sample and rescore it."""
        state = self._state(device_id)
        state.metrics = metrics
        state.swept = False
        self._rescore(state)
        heapq.heappush(self._fresh_heap, (state.fresh_until, device_id))
        if len(self._fresh_heap) > 2 * len(self._states) + 1024:
            self._rebuild_heap()

    def set_reserved_bytes(self, device_id: str, reserved_bytes: int) -> None:
        """Memory promised to pods bound to the device; counts as used in the score."""
        _check_bytes("reserved_bytes", reserved_bytes)
        self.set_holds(device_id, reserved_bytes, None)

    def set_holds(self, device_id: str, reserved_bytes: int,
                  held: dict[str, int] | None) -> None:
        """Everything held on the device and each workload's share (``exo.gpu.state.Ledger``)."""
        state = self._state(device_id)
        if state.reserved != reserved_bytes or state.held != held:
            state.reserved = reserved_bytes
            state.held = held
            self._rescore(state)

    def set_cordoned(self, device_id: str, cordoned: bool) -> None:
        state = self._state(device_id)
        if state.cordoned != bool(cordoned):
            state.cordoned = bool(cordoned)
            self._rescore(state)

    def set_ready(self, device_id: str, ready: bool, detail: str = "") -> None:
        state = self._state(device_id)
        if state.ready != bool(ready) or state.ready_detail != detail:
            state.ready = bool(ready)
            state.ready_detail = detail
            self._rescore(state)

    def set_labels(self, device_id: str, labels: Mapping[str, str]) -> None:
        self._state(device_id).labels = dict(labels)

    # -- queries ----------------------------------------------------------------------------

    def device_state(self, device_id: str) -> DeviceState:
        """The device's state (read it; change it through this selector)."""
        return self._state(device_id)

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
        states, policy = self._states, self.policy
        for _, device_id in ordered:
            if fit(states[device_id], request, now, policy).reason is None:
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
        states, policy = self._states, self.policy
        return [d for _, d in ordered if fit(states[d], request, now, policy).reason is None]

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

    def _state(self, device_id: str) -> DeviceState:
        state = self._states.get(device_id)
        if state is None:
            raise UnknownDeviceError(device_id)
        return state

    def _ordering(self, request: SelectionRequest) -> list[_Key]:
        if request.vendor is None:
            return self._ordered
        return self._ordered_by_vendor[request.vendor]

    def _rescore(self, state: DeviceState) -> None:
        state.refresh(self.policy)
        self._sync(state)

    def _sync(self, state: DeviceState) -> None:
        """Put the device at its place in the score ordering, or take it out."""
        if state.available and not state.swept:
            key: _Key | None = (-state.score, state.device_id)
        else:
            key = None
        if key == state.key:
            return
        self._unlist(state)
        if key is not None:
            insort(self._ordered, key)
            insort(self._ordered_by_vendor[state.info.vendor], key)
            state.key = key

    def _unlist(self, state: DeviceState) -> None:
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
            (s.fresh_until, d)
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
        heap = self._fresh_heap
        states = self._states
        while heap and heap[0][0] < now:  # the Stale rule: fresh_until < now
            until, device_id = heapq.heappop(heap)
            entry = states.get(device_id)
            if (
                entry is None
                or entry.swept
                or entry.metrics is None
                or entry.fresh_until != until
            ):
                continue
            entry.swept = True
            self._sync(entry)

    def _evaluate(
        self, state: DeviceState, request: SelectionRequest, now: float | None
    ) -> RankedDevice:
        rejections = explain(state, request, now, self.policy)
        return RankedDevice(
            device_id=state.device_id,
            info=state.info,
            breakdown=state.breakdown,
            eligible=not rejections,
            rejections=rejections,
            capacity=state.capacity,
            metrics=state.metrics,
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
