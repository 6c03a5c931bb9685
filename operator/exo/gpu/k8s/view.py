"""One in-memory view of the cluster's GPUs and of what pods hold on them.

The controller and the scheduler extender answer from this view, never from the API server on
their hot paths. It is fed with GPUDevice and Pod objects (by an informer or by kopf handlers) and
keeps:

- a ``GPUClusteringManager`` with every device, its latest sample, readiness and cordon, so the
  core policies (ranking, distribution, aggregation) see the cluster as it is;
- the allocation ledger: which pod holds how much memory of which device. Its source of truth is
  the API (bound pods' ``gpu.exo.dev/device`` and ``gpu.exo.dev/reserved-memory`` annotations): a
  fresh view rebuilds it from a pod listing, and pods that end or are deleted release what they
  held. Reservations made at bind are committed under the view's lock together with the device
  choice, so two pods can never be given the same memory;
- per node, a small precomputed summary of each device (``Slot``) so that filtering and scoring
  500 candidate nodes costs a dictionary lookup and a few comparisons per node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from exo.gpu.clustering import GPUClusteringManager
from exo.gpu.selector import (
    DEFAULT_POLICY,
    SelectionPolicy,
    extender_score,
    score_device,
    too_hot,
)
from exo.gpu.telemetry_protocol import GPUMetrics

from .models import GPUDevice, find_condition

log = logging.getLogger(__name__)

ANNOTATION_DEVICE = "gpu.exo.dev/device"
ANNOTATION_DEVICE_UUID = "gpu.exo.dev/device-uuid"
ANNOTATION_RESERVED = "gpu.exo.dev/reserved-memory"
ANNOTATION_WORKLOAD = "gpu.exo.dev/workload"
ANNOTATION_TASKS = "gpu.exo.dev/tasks"
ANNOTATION_MIN_MEMORY = "gpu.exo.dev/min-memory"
ANNOTATION_VENDOR = "gpu.exo.dev/vendor"
GPU_RESOURCE = "gpu.exo.dev/gpu"


@dataclass(frozen=True, slots=True)
class Reservation:
    """Memory of one or more devices promised to one pod."""

    pod_uid: str
    pod_key: str  # namespace/name
    node: str
    devices: tuple[str, ...]
    bytes_per_device: int


@dataclass(slots=True)
class Slot:
    """One device as the filter and scorer see it (recomputed when the device or its
    reservations change; staleness is judged at query time)."""

    name: str
    node: str
    vendor: str
    uuid: str | None
    total: int
    used: int  # measured by the exporter (0 before the first sample)
    reserved: int
    free: int  # total - max(measured use, reservations), never negative
    score: float
    #: ``score`` as kube-scheduler's integer extender priority 0..10 (``extender_score``).
    priority: int
    sample_time: float | None
    #: A reason that holds whatever the pod asks (cordoned, not ready, no metrics, too hot).
    blocked: str | None


@dataclass
class ClusterView:
    """Devices, pods and reservations. Thread-safe: every method takes ``lock``."""

    policy: SelectionPolicy = DEFAULT_POLICY
    clock: Callable[[], float] = time.time
    #: Samples kept per device. Every reader of the view (scoring, planning, aggregation) uses
    #: the latest sample; one more keeps a late sample in order. At 2-3 KiB a sample, the core's
    #: default of 300 would cost gigabytes at 10,000 devices.
    history_size: int = 2
    manager: GPUClusteringManager = field(init=False)
    lock: threading.RLock = field(default_factory=threading.RLock)
    devices: dict[str, GPUDevice] = field(default_factory=dict)
    slots_by_node: dict[str, dict[str, Slot]] = field(default_factory=dict)
    #: The same slots per node, best score first (ties by name): most pods stop at the first.
    ordered_by_node: dict[str, list[Slot]] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    reserved_by_device: dict[str, int] = field(default_factory=dict)
    #: Bumped on every change; caches keyed by it (the extender's per-pod results) stay exact.
    generation: int = 0

    def __post_init__(self) -> None:
        self.manager = GPUClusteringManager(policy=self.policy, clock=self.clock,
                                            history_size=self.history_size)

    # ------------------------------------------------------------------ devices
    def apply_device(self, obj: Mapping[str, Any]) -> GPUDevice | None:
        """Create or update a device from a GPUDevice object; invalid objects are skipped."""
        try:
            device = GPUDevice.model_validate(obj)
        except ValidationError as error:
            name = (obj.get("metadata") or {}).get("name", "?")
            log.warning("GPUDevice %s skipped: %s", name, error.errors()[0].get("msg"))
            return None
        with self.lock:
            previous = self.devices.get(device.name)
            # Most updates carry new metrics only: build the identity only when the spec moved
            # (a cordon changes the spec but not the identity, and keeps the history).
            if previous is not None and previous.spec != device.spec and \
                    previous.to_device_info() != device.to_device_info():
                self._forget_device(device.name)
                previous = None
            if previous is None:
                self.manager.register_device(device.to_device_info())
            self.devices[device.name] = device
            self.manager.set_cordoned(device.name, device.spec.unschedulable)
            self.manager.set_ready(device.name, _is_ready(device))
            sample = device.latest_sample()
            if sample is not None:
                self._record(sample)
            self._refresh_slot(device.name, sample)
            self.generation += 1
            return device

    def remove_device(self, name: str) -> None:
        with self.lock:
            if name in self.devices:
                self._forget_device(name)
                self.generation += 1

    def _forget_device(self, name: str) -> None:
        device = self.devices.pop(name)
        self.manager.unregister_device(name)
        node_slots = self.slots_by_node.get(device.spec.node, {})
        node_slots.pop(name, None)
        if node_slots:
            self._order(device.spec.node)
        else:
            self.slots_by_node.pop(device.spec.node, None)
            self.ordered_by_node.pop(device.spec.node, None)

    def _record(self, sample: GPUMetrics) -> None:
        latest = self.manager.get_metrics(sample.device_id)
        if latest is not None and latest.timestamp >= sample.timestamp:
            return  # a replay of what the view already has
        try:
            self.manager.record_metrics_sync(sample)
        except ValueError as error:
            log.warning("metrics of %s skipped: %s", sample.device_id, error)

    def _refresh_slot(self, name: str, sample: GPUMetrics | None) -> None:
        """Recompute the device's slot from ``sample``, its latest metrics."""
        device = self.devices[name]
        total = device.spec.memory_total_bytes
        reserved = min(self.reserved_by_device.get(name, 0), total)
        blocked: str | None = None
        if device.spec.unschedulable:
            blocked = "Cordoned: the device is cordoned (spec.unschedulable)"
        elif not _is_ready(device):
            ready = find_condition(device.status.conditions if device.status else [], "Ready")
            why = f"{ready.reason}: {ready.message}" if ready else "no Ready condition"
            blocked = f"NotReady: {why}"
        if sample is None:
            blocked = blocked or "NoMetrics: the exporter has not reported metrics yet"
            breakdown_score, free = 0.0, max(total - reserved, 0)
        else:
            breakdown = score_device(
                total,
                sample.memory_used_bytes,
                sample.compute_utilization_percent,
                sample.temperature_celsius,
                reserved,
                self.policy,
            )
            breakdown_score, free = breakdown.total, breakdown.free_memory_bytes
            if too_hot(sample.temperature_celsius, self.policy):
                blocked = blocked or (
                    f"TooHot: {sample.temperature_celsius:.0f} C is at or above "
                    f"{self.policy.thermal_max_celsius:.0f} C"
                )
        self.slots_by_node.setdefault(device.spec.node, {})[name] = Slot(
            name=name,
            node=device.spec.node,
            vendor=str(device.spec.vendor.value),
            uuid=device.spec.uuid,
            total=total,
            reserved=reserved,
            used=sample.memory_used_bytes if sample else 0,
            free=free,
            score=breakdown_score,
            priority=extender_score(breakdown_score),
            sample_time=sample.timestamp if sample else None,
            blocked=blocked,
        )
        self._order(device.spec.node)

    def _order(self, node: str) -> None:
        self.ordered_by_node[node] = sorted(
            self.slots_by_node[node].values(), key=lambda slot: (-slot.score, slot.name)
        )

    # ------------------------------------------------------------------ pods and the ledger
    def apply_pod(self, pod: Mapping[str, Any]) -> None:
        """Track a pod: a bound pod holding a device keeps its reservation; a pod that ended or
        is being deleted releases it."""
        metadata = pod.get("metadata") or {}
        uid = metadata.get("uid")
        if not uid:
            return
        status = pod.get("status") or {}
        finished = (
            status.get("phase") in ("Succeeded", "Failed")
            or metadata.get("deletionTimestamp") is not None
        )
        if finished:
            self.release(uid)
            return
        annotations = metadata.get("annotations") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        devices = tuple(d for d in (annotations.get(ANNOTATION_DEVICE) or "").split(",") if d)
        reserved = annotations.get(ANNOTATION_RESERVED)
        if not node or not devices or reserved is None:
            return
        try:
            per_device = int(reserved)
        except ValueError:
            log.warning(
                "pod %s/%s: bad %s annotation %r",
                metadata.get("namespace"),
                metadata.get("name"),
                ANNOTATION_RESERVED,
                reserved,
            )
            return
        with self.lock:
            if uid not in self.reservations:
                self.commit(
                    Reservation(
                        pod_uid=uid,
                        pod_key=f"{metadata.get('namespace')}/{metadata.get('name')}",
                        node=node,
                        devices=devices,
                        bytes_per_device=per_device,
                    )
                )

    def remove_pod(self, pod: Mapping[str, Any]) -> None:
        uid = (pod.get("metadata") or {}).get("uid")
        if uid:
            self.release(uid)

    def resync_pods(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """Make the ledger match a full pod listing (start, or after a lost watch)."""
        pods = list(pods)
        live = {(p.get("metadata") or {}).get("uid") for p in pods}
        with self.lock:
            for uid in [uid for uid in self.reservations if uid not in live]:
                self.release(uid)
            for pod in pods:
                self.apply_pod(pod)

    def commit(self, reservation: Reservation) -> None:
        """Record a reservation (call under ``lock`` together with the choice that made it)."""
        with self.lock:
            self.reservations[reservation.pod_uid] = reservation
            for device in reservation.devices:
                self.reserved_by_device[device] = (
                    self.reserved_by_device.get(device, 0) + reservation.bytes_per_device
                )
                self._apply_reserved(device)
            self.generation += 1

    def release(self, pod_uid: str) -> Reservation | None:
        with self.lock:
            reservation = self.reservations.pop(pod_uid, None)
            if reservation is None:
                return None
            for device in reservation.devices:
                left = self.reserved_by_device.get(device, 0) - reservation.bytes_per_device
                if left > 0:
                    self.reserved_by_device[device] = left
                else:
                    self.reserved_by_device.pop(device, None)
                self._apply_reserved(device)
            self.generation += 1
            return reservation

    def _apply_reserved(self, device: str) -> None:
        if device in self.devices:
            total = self.devices[device].spec.memory_total_bytes
            self.manager.set_reservation(device, min(self.reserved_by_device.get(device, 0), total))
            self._refresh_slot(device, self.devices[device].latest_sample())

    # ------------------------------------------------------------------ queries
    def node_slots(self, node: str) -> Mapping[str, Slot]:
        return self.slots_by_node.get(node, {})

    def stale_before(self, now: float) -> float:
        """Samples older than this are stale at ``now``."""
        return now - self.policy.stale_after_seconds

    def reservations_on(self, device: str) -> list[Reservation]:
        with self.lock:
            return [r for r in self.reservations.values() if device in r.devices]


def _is_ready(device: GPUDevice) -> bool:
    if device.status is None:
        return True  # no conditions yet: judged by metrics (NoMetrics) instead
    ready = find_condition(device.status.conditions, "Ready")
    return ready is None or ready.status == "True"
