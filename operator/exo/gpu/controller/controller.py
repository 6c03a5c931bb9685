"""The thin layer that performs the controller's decisions, its caches and its loops.

One :class:`Controller` per process holds what the kopf handlers share (the ``ClusterView``, the
API layer, a cache of workloads and of the pods they own). Every decision is a pure function
(:func:`.reconcile.decide` for a workload, :mod:`.health` for devices); this class gathers the
inputs, asks, and carries the answer out against the API.

Reconcile is level-triggered and idempotent: it is called on create/update/resume, on events of
owned pods, and by a resync loop that revisits every live workload (a device going stale is
noticed there, without per-object kopf timers: those would need a finalizer on every workload and
one task per object). The plan and the holds it records are one step under the view's lock, so
two workloads reconciled at once never plan the same memory.

Faults:

- API server gone: a failed write raises out of ``reconcile`` (kopf logs it; the resync loop
  retries); nothing is deleted on a read error, and the holds already recorded keep the planned
  memory until the next successful reconcile decides again.
- Restart mid-way: pods have deterministic names and creation is idempotent, so a restarted
  controller finds what it created; its ledger is rebuilt from the API (bound and planned pods)
  and the holds of its plans from the next reconcile of each workload.
- Two copies: only the Lease holder acts (``is_leader`` is checked before planning and again
  before writing); a follower decides nothing and writes nothing.

The device-health loop marks GPUDevices whose exporter stopped writing (``Stale`` and
``Ready=False``, plus an Event); the summary loop writes each device's score and allocation.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ..k8s.models import API_VERSION, GPUDevice
from ..k8s.view import ClusterView, Reservation, workload_key
from ..k8s.workload import KIND
from .api import ControllerAPI
from .health import (
    device_summary,
    health_conditions,
    needs_health_write,
    stale_state,
    summary_needs_write,
)
from .reasons import EventType, Reason
from .reconcile import Decision, PodInfo, decide

log = logging.getLogger(__name__)

__all__ = ["Controller", "ControllerConfig", "PodInfo"]


@dataclass
class ControllerConfig:
    """Intervals of the background loops (seconds)."""

    resync_interval: float = 15.0
    health_interval: float = 10.0


@dataclass
class Controller:
    """What the handlers share, and the layer that performs decisions."""

    view: ClusterView
    api: ControllerAPI
    config: ControllerConfig = field(default_factory=ControllerConfig)
    is_leader: Callable[[], bool] = lambda: True
    clock: Callable[[], float] = time.time
    #: uid -> latest workload body seen (events) and last status written by us.
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: workload uid -> pod name -> what we know of the pod.
    pods: dict[str, dict[str, PodInfo]] = field(default_factory=dict)
    #: workload uid -> the ledger's name for it (namespace/name), for releasing its holds.
    keys: dict[str, str] = field(default_factory=dict)
    #: workload uid -> wall time it first reached Placed (benchmarks read it).
    placed_at: dict[str, float] = field(default_factory=dict)
    reconciles: int = 0
    errors: int = 0
    #: Post Events from a background thread (never delaying a status write); off in tests.
    async_events: bool = False
    events_dropped: int = 0
    _event_queue: queue.Queue[tuple[dict[str, Any], str, str, str]] = field(
        default_factory=lambda: queue.Queue(maxsize=1000))
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    #: device -> (summary written, when): score and allocation on GPUDevice status.
    _summaries: dict[str, tuple[dict[str, Any], float]] = field(default_factory=dict)

    # ------------------------------------------------------------------ caches
    def _lock(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    def observe_workload(self, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        uid = metadata.get("uid")
        if uid:
            self.workloads[uid] = plain(body)

    def is_echo(self, body: Mapping[str, Any]) -> bool:
        """True when ``body`` only reflects our own last status write (nothing to do)."""
        metadata = body.get("metadata") or {}
        written = self.written.get(metadata.get("uid", ""))
        return written is not None and metadata.get("deletionTimestamp") is None and \
            written.get("observedGeneration") == metadata.get("generation") and \
            plain(body.get("status") or {}) == written

    def forget_workload(self, uid: str, key: str | None = None) -> None:
        """The workload is gone: drop what is cached of it and release what its plan held.

        ``key`` (``namespace/name``, from the deleted object) releases the holds even of a
        workload this controller never reconciled (planned in an earlier leadership term)."""
        key = self.keys.pop(uid, None) or key
        if key is not None:
            self.view.set_plan_holds(key, {})
        for table in (self.workloads, self.written, self.pods, self._locks):
            table.pop(uid, None)

    def observe_pod(self, pod: Mapping[str, Any], deleted: bool) -> str | None:
        """Index a controller-made pod under its owning workload; returns that workload's uid."""
        metadata = pod.get("metadata") or {}
        owner = next((ref for ref in metadata.get("ownerReferences") or []
                      if ref.get("kind") == KIND and ref.get("controller")), None)
        if owner is None:
            return None
        if deleted:
            self.pods.get(owner["uid"], {}).pop(str(metadata.get("name")), None)
        else:
            owned = self.pods.setdefault(owner["uid"], {})
            owned[metadata["name"]] = PodInfo(
                uid=metadata.get("uid", ""), phase=(pod.get("status") or {}).get("phase"),
                deleting=metadata.get("deletionTimestamp") is not None)
        return str(owner["uid"])

    # ------------------------------------------------------------------ reconcile
    def reconcile(self, body: Mapping[str, Any]) -> str | None:
        """Bring one workload in line with the cluster; returns its phase (None: not acted)."""
        metadata = body.get("metadata") or {}
        uid = metadata.get("uid")
        if not uid or metadata.get("deletionTimestamp") or not self.is_leader():
            return None
        with self._lock(uid):
            try:
                self.reconciles += 1
                return self._reconcile(body, uid)
            except Exception:
                self.errors += 1
                raise

    def _reconcile(self, body: Mapping[str, Any], uid: str) -> str | None:
        metadata = body["metadata"]
        key = workload_key(metadata.get("namespace"), metadata["name"])
        self.keys[uid] = key
        current = self.written.get(uid) or body.get("status") or {}
        pods = dict(self.pods.get(uid, {}))
        with self.view.lock:  # the plan and what it holds: one step
            decision = decide(body, current, pods, self.view, datetime.now(UTC))
            self.view.set_plan_holds(key, decision.holds)
        if not self.is_leader():
            return None  # leadership lapsed while planning: write nothing
        self._perform(body, uid, decision)
        return decision.phase

    def _perform(self, body: Mapping[str, Any], uid: str, decision: Decision) -> None:
        metadata = body["metadata"]
        namespace = metadata.get("namespace") or "default"
        for name, pod_uid in decision.delete:
            self.api.delete_pod(namespace, name, pod_uid)
        for _, pod in decision.create:
            self.api.create_pod(namespace, pod)
        if decision.status is None or not self.is_leader():
            return
        written = self.api.patch_workload_status(namespace, metadata["name"], decision.status,
                                                 uid=uid)
        if written is None:
            return  # the workload is gone
        self.written[uid] = decision.status
        if decision.phase is not None and decision.phase.placed and uid not in self.placed_at:
            self.placed_at[uid] = self.clock()
        involved = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata}
        for event in decision.events:
            self.post_event(involved, event.type, event.reason, event.message)

    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str,
                   message: str) -> None:
        if not self.async_events:
            self.api.post_event(involved, type_, reason, message)
            return
        try:
            self._event_queue.put_nowait((plain(involved), type_, reason, message))
        except queue.Full:
            self.events_dropped += 1

    def _post_events(self) -> None:
        while not self._stop.is_set() or not self._event_queue.empty():
            try:
                item = self._event_queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self.api.post_event(*item)

    # ------------------------------------------------------------------ loops
    def resync_once(self) -> int:
        """Reconcile every known live workload once; returns how many were visited."""
        visited = 0
        for uid in [uid for uid, pods in self.pods.items()
                    if uid not in self.workloads and not pods]:
            self.pods.pop(uid, None)  # index entries of workloads that are gone
        for body in list(self.workloads.values()):
            if self._stop.is_set():
                break
            try:
                self.reconcile(body)
                visited += 1
            except Exception as error:  # one workload never stops the others
                log.warning("resync of %s failed: %s", (body.get("metadata") or {}).get("name"),
                            error)
        return visited

    def check_devices_once(self) -> int:
        """Write Stale/Ready for devices whose heartbeat state changed; returns writes made."""
        if not self.is_leader():
            return 0
        now = self.clock()
        stale_after = self.view.policy.stale_after_seconds
        changed = 0
        with self.view.lock:
            devices = list(self.view.devices.values())
        for device in devices:
            wanted = stale_state(device, now, stale_after)
            if wanted is None or not needs_health_write(device, wanted):
                continue
            try:
                if self._write_health(device.name, stale_after):
                    changed += 1
            except Exception as error:
                log.warning("GPUDevice %s: health not written: %s", device.name, error)
        return changed

    def _write_health(self, name: str, stale_after: float) -> bool:
        outcome: dict[str, Any] = {}

        def compute(obj: dict[str, Any]) -> dict[str, Any] | None:
            try:
                device = GPUDevice.model_validate(obj)
            except ValidationError:
                return None
            wanted = stale_state(device, self.clock(), stale_after)
            if wanted is None or not needs_health_write(device, wanted):
                return None
            conditions = health_conditions(device, wanted, self.clock(), stale_after)
            outcome["stale"] = wanted
            return {"conditions": [c.to_api() for c in conditions]}

        written = self.api.update_device_status(name, compute)
        if written is None:
            return False
        stale = outcome["stale"]
        involved = {"apiVersion": API_VERSION, "kind": "GPUDevice",
                    "metadata": written["metadata"]}  # cluster-scoped: the Event goes to default
        if stale:
            self.post_event(involved, EventType.WARNING, Reason.HEARTBEAT_LOST,
                            f"no heartbeat from the exporter for more than "
                            f"{stale_after:.0f} s: marked Stale and not Ready")
        else:
            self.post_event(involved, EventType.NORMAL, Reason.HEARTBEAT_RESUMED,
                            "the exporter reports again")
        return True

    def publish_summaries_once(self) -> int:
        """Write each device's score and allocation where they moved; returns writes made."""
        if not self.is_leader():
            return 0
        now = self.clock()
        with self.view.lock:
            held: dict[str, list[Reservation]] = {}
            for reservation in self.view.reservations.values():
                for name in reservation.devices:
                    held.setdefault(name, []).append(reservation)
            summaries = {device.device_id: device_summary(device, held.get(device.device_id, []))
                         for device in self.view.state.devices()}
        for gone in [name for name in self._summaries if name not in summaries]:
            del self._summaries[gone]
        writes = 0
        for name, summary in summaries.items():
            previous = self._summaries.get(name)
            if not summary_needs_write(summary, previous, now):
                continue
            try:
                self.api.patch_device_status(name, summary)
            except Exception as error:
                log.warning("GPUDevice %s: score and allocation not written: %s", name, error)
                continue
            self._summaries[name] = (summary, now)
            writes += 1
        return writes

    def start_loops(self) -> None:
        self._stop.clear()
        for name, interval, work in (
                ("resync", self.config.resync_interval, self.resync_once),
                ("device-health", self.config.health_interval, self.check_devices_once),
                ("device-summary", self.config.health_interval, self.publish_summaries_once)):
            thread = threading.Thread(target=self._loop, args=(interval, work),
                                      name=f"controller-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.async_events:
            poster = threading.Thread(target=self._post_events, name="controller-events",
                                      daemon=True)
            poster.start()
            self._threads.append(poster)

    def stop_loops(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def _loop(self, interval: float, work: Callable[[], int]) -> None:
        while not self._stop.wait(interval):
            try:
                work()
            except Exception as error:
                log.warning("%s failed: %s", threading.current_thread().name, error)


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A detached deep copy of a kopf body (plain dicts and lists)."""
    def convert(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        return value
    result: dict[str, Any] = convert(body)
    return result

