"""Device state and the reservation ledger: what every decision about a device reads.

- :class:`DeviceState`: one device's identity, labels, cordon and readiness, latest sample, what
  is reserved on it, and what follows from those (score breakdown, free memory, extender
  priority, the request-independent fit verdict). :meth:`DeviceState.refresh` recomputes the
  derived fields through the core's rules (``exo.gpu.policy``, ``exo.gpu.fit``) whenever an input
  changes; nothing else writes them.
- :class:`Reservation`: memory of one or more devices held for one pod, bound to them or planned
  on them.
- :class:`Ledger`: every reservation, by pod and by planned task of a workload, and what they
  add up to per device.

How holds add up on a device: pods that belong to no workload add up; for each workload, the
device holds the larger of what the workload's plan holds there and what its pods hold there.
So a pod that binds where its workload planned it takes over the plan's hold instead of adding
to it, and whichever of the two is released first (the plan changed, or the pod ended), the
other still holds. ``held`` keeps each workload's share, so that a request of that workload is
not refused for its own memory (``exo.gpu.fit.held_by_others``).

Pure: no I/O, no clock, no lock (callers serialize; ``exo.gpu.cluster.ClusterState`` and the
Kubernetes view do).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from exo.gpu.capabilities import CapacityEstimate
from exo.gpu.errors import InvalidRequestError
from exo.gpu.fit import FitReason, device_verdict
from exo.gpu.policy import (
    ScoreBreakdown,
    SelectionPolicy,
    free_memory_bytes,
    fresh_until,
    priority,
    score_sample,
)
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics

__all__ = ["DeviceState", "Ledger", "Reservation"]


@dataclass(slots=True, eq=False)
class DeviceState:
    """One device as decisions see it. Inputs are set by the owner, then :meth:`refresh`.

    A new state already holds what :meth:`refresh` derives for a device that has not reported
    (no sample, so ``NoMetrics``); set any other input, then refresh.
    """

    info: GPUDeviceInfo
    capacity: CapacityEstimate
    labels: dict[str, str] = field(default_factory=dict)
    cordoned: bool = False
    ready: bool = True
    #: Why it is not Ready (the owner's condition reason and message), for the NotReady message.
    ready_detail: str = ""
    metrics: GPUMetrics | None = None
    #: Everything the ledger holds on the device, and each workload's share of it.
    reserved: int = 0
    held: dict[str, int] | None = None
    # -- derived by refresh() ------------------------------------------------------------
    device_id: str = field(init=False)
    breakdown: ScoreBreakdown | None = field(default=None, init=False)
    free: int = field(default=0, init=False)
    score: float = field(default=0.0, init=False)
    #: ``score`` as kube-scheduler's integer extender priority 0..10.
    priority: int = field(default=0, init=False)
    #: The request-independent verdict: which of Cordoned, NotReady, NoMetrics hold, TooHot.
    blocked: tuple[FitReason, ...] = field(default=(FitReason.NO_METRICS,), init=False)
    hot: bool = field(default=False, init=False)
    #: Nothing but staleness (judged at query time against ``fresh_until``) stands in the way.
    available: bool = field(default=False, init=False)
    fresh_until: float = field(default=-math.inf, init=False)
    # -- kept by DeviceSelector for its score ordering ------------------------------------
    key: tuple[float, str] | None = field(default=None, init=False)
    swept: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.device_id = self.info.device_id
        self.free = free_memory_bytes(self.info.memory_total_bytes, 0, self.reserved)

    @property
    def node(self) -> str:
        return self.info.node or ""

    @property
    def sample_time(self) -> float | None:
        """The latest sample's time (None before the first)."""
        return self.metrics.timestamp if self.metrics is not None else None

    @property
    def used(self) -> int:
        """Measured memory use (0 before the first sample)."""
        return self.metrics.memory_used_bytes if self.metrics is not None else 0

    @property
    def temperature(self) -> float | None:
        return self.metrics.temperature_celsius if self.metrics is not None else None

    @property
    def total(self) -> int:
        return self.info.memory_total_bytes

    @property
    def vendor(self) -> str:
        return self.info.vendor.value

    @property
    def uuid(self) -> str | None:
        return self.info.uuid

    @property
    def name(self) -> str:
        return self.device_id

    def set_info(self, info: GPUDeviceInfo) -> None:
        self.info = info
        self.device_id = info.device_id

    def refresh(self, policy: SelectionPolicy) -> None:
        """Recompute every derived field from the inputs, through the core's rules."""
        metrics = self.metrics
        total = self.info.memory_total_bytes
        if metrics is None:
            self.breakdown = None
            self.free = free_memory_bytes(total, 0, self.reserved)
            self.score = 0.0
            self.fresh_until = -math.inf
            temperature = None
        else:
            # A None temperature (not reported by the hardware) means no thermal penalty and
            # never TooHot: score_device and device_verdict both take it as it comes.
            temperature = metrics.temperature_celsius
            # A validated sample: score_device's formula without its checks.
            breakdown = score_sample(total, metrics.memory_used_bytes,
                                     metrics.compute_utilization_percent, temperature,
                                     self.reserved, policy)
            self.breakdown = breakdown
            self.free = breakdown.free_memory_bytes
            self.score = breakdown.total
            self.fresh_until = fresh_until(metrics.timestamp, policy)
        self.priority = priority(self.score)
        self.blocked, self.hot = device_verdict(self.cordoned, self.ready, metrics is not None,
                                                temperature, policy)
        self.available = not self.blocked and not self.hot


@dataclass(frozen=True, slots=True)
class Reservation:
    """Memory of one or more devices held for one pod.

    ``bound``: the pod is bound to the devices (recorded at bind, rebuilt from the pod's
    ``gpu.exo.dev/device`` and ``gpu.exo.dev/reserved-memory`` annotations); otherwise the pod
    of a workload is planned on them and not bound yet. ``workload`` (``namespace/name``) ties
    the pod to its workload's plan.
    """

    pod_uid: str
    pod_key: str  # namespace/name
    node: str
    devices: tuple[str, ...]
    bytes_per_device: int
    workload: str | None = None
    bound: bool = True


@dataclass(slots=True)
class _DeviceHolds:
    pods: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    plans: dict[str, int] = field(default_factory=dict)

    def totals(self) -> tuple[int, dict[str, int] | None]:
        loose = 0
        by_pods: dict[str, int] = {}
        for workload, amount in self.pods.values():
            if workload is None:
                loose += amount
            else:
                by_pods[workload] = by_pods.get(workload, 0) + amount
        if not by_pods and not self.plans:
            return loose, None
        held = {w: max(self.plans.get(w, 0), by_pods.get(w, 0))
                for w in by_pods.keys() | self.plans.keys()}
        return loose + sum(held.values()), held


class Ledger:
    """Reservations by pod uid and by planned task (workload, device), summed per device.

    Every change returns the devices whose totals moved, for the owner to refresh.
    """

    def __init__(self) -> None:
        self.pods: dict[str, Reservation] = {}
        #: workload -> device -> bytes held for its planned tasks there.
        self.plans: dict[str, dict[str, int]] = {}
        self._on: dict[str, _DeviceHolds] = {}

    # ------------------------------------------------------------------ pods
    def hold(self, reservation: Reservation) -> set[str]:
        """Record ``reservation`` (replacing the pod's previous one, if any)."""
        if reservation.bytes_per_device < 0 or isinstance(reservation.bytes_per_device, bool):
            raise InvalidRequestError("bytes_per_device", "must not be negative, got "
                                                          f"{reservation.bytes_per_device}")
        touched = self._drop_pod(reservation.pod_uid)
        self.pods[reservation.pod_uid] = reservation
        for device in reservation.devices:
            holds = self._on.setdefault(device, _DeviceHolds())
            previous = holds.pods.get(reservation.pod_uid, (None, 0))[1]
            holds.pods[reservation.pod_uid] = (reservation.workload,
                                               previous + reservation.bytes_per_device)
            touched.add(device)
        return touched

    def release(self, pod_uid: str) -> tuple[Reservation | None, set[str]]:
        reservation = self.pods.get(pod_uid)
        return reservation, self._drop_pod(pod_uid)

    def _drop_pod(self, pod_uid: str) -> set[str]:
        reservation = self.pods.pop(pod_uid, None)
        if reservation is None:
            return set()
        for device in reservation.devices:
            holds = self._on.get(device)
            if holds is not None:
                holds.pods.pop(pod_uid, None)
                self._prune(device, holds)
        return set(reservation.devices)

    # ------------------------------------------------------------------ plans
    def set_plan(self, workload: str, holds: Mapping[str, int]) -> set[str]:
        """Make ``holds`` (device -> bytes) the workload's planned holds; empty clears them."""
        for device, amount in holds.items():
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
                raise InvalidRequestError(f"holds[{device!r}]", "must be a number of bytes >= 0,"
                                                                f" got {amount!r}")
        previous = self.plans.pop(workload, {})
        wanted = {d: b for d, b in holds.items() if b > 0}
        touched = {d for d in previous.keys() | wanted.keys()
                   if previous.get(d) != wanted.get(d)}
        for device in previous:
            plan_holds = self._on.get(device)
            if plan_holds is not None:
                plan_holds.plans.pop(workload, None)
                self._prune(device, plan_holds)
        for device, amount in wanted.items():
            self._on.setdefault(device, _DeviceHolds()).plans[workload] = amount
        if wanted:
            self.plans[workload] = wanted
        return touched

    def _prune(self, device: str, holds: _DeviceHolds) -> None:
        if not holds.pods and not holds.plans:
            del self._on[device]

    # ------------------------------------------------------------------ totals
    def totals(self, device: str) -> tuple[int, dict[str, int] | None]:
        """(everything held on ``device``, each workload's share or None)."""
        holds = self._on.get(device)
        return (0, None) if holds is None else holds.totals()

    def reserved(self, device: str) -> int:
        return self.totals(device)[0]

    def reserved_by_device(self) -> dict[str, int]:
        """Every device with something held on it, and how much."""
        out = {}
        for device, holds in self._on.items():
            total = holds.totals()[0]
            if total:
                out[device] = total
        return out

    def reserved_without(self, device: str, workload: str | None,
                         pods: Iterable[str]) -> int:
        """What others than ``workload`` would hold on ``device`` were ``pods`` gone."""
        holds = self._on.get(device)
        if holds is None:
            return 0
        gone = set(pods)
        rest = _DeviceHolds({uid: hold for uid, hold in holds.pods.items() if uid not in gone},
                            dict(holds.plans))
        total, held = rest.totals()
        if workload is not None and held is not None:
            total -= held.get(workload, 0)
        return total

    def on_device(self, device: str) -> list[Reservation]:
        """The pods holding memory of ``device``."""
        holds = self._on.get(device)
        return [] if holds is None else [self.pods[uid] for uid in holds.pods]
