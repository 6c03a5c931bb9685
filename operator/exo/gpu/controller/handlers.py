"""The controller's reconcile logic and the kopf handlers that call it.

One :class:`Controller` per process holds what the handlers share (the ``ClusterView``, the API
layer, a cache of workloads and of the pods they own) and does the work; :func:`build_registry`
wires it to kopf on an explicit ``kopf.OperatorRegistry`` (nothing is registered globally, so two
controllers can run in one test process).

Reconcile is level-triggered and idempotent: it recomputes the plan from the workload, its last
written status and the view, creates the pods the plan wants and deletes the ones it no longer
wants (names are deterministic, so a second run creates nothing), and writes status only when it
changed. It is called on create/update/resume, on events of owned pods, and by a resync loop that
revisits every live workload (a device going stale is noticed there, without per-object kopf
timers: those would need a finalizer on every workload and one task per object). Events are
posted on transitions only (new plan, phase change), never per resync.

The device-health loop marks GPUDevices whose exporter stopped writing: condition ``Stale``
(True/False) and ``Ready=False`` with reason ``HeartbeatLost``, plus an Event. Only the controller
writes ``Stale``; the exporter sets ``Ready`` back when it reports again.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ..k8s.models import (
    API_VERSION,
    GROUP,
    VERSION,
    Condition,
    GPUDevice,
    find_condition,
    set_condition,
)
from ..k8s.view import (
    ANNOTATION_DEVICE,
    ANNOTATION_DEVICE_UUID,
    ANNOTATION_MIN_MEMORY,
    ANNOTATION_TASKS,
    ANNOTATION_VENDOR,
    ANNOTATION_WORKLOAD,
    GPU_RESOURCE,
    ClusterView,
    Reservation,
    Slot,
)
from ..k8s.workload import KIND, PLURAL, GPUWorkload, GPUWorkloadStatus
from . import planning
from .api import ControllerAPI
from .planning import Plan, PlannedPlacement

log = logging.getLogger(__name__)

#: Label on controller-made pods (the annotation of the same name carries the same value).
LABEL_WORKLOAD = ANNOTATION_WORKLOAD
CONDITION_PLACED = "Placed"
CONDITION_PODS_READY = "PodsReady"
CONDITION_STALE = "Stale"
CONDITION_READY = "Ready"

#: Environment variables that make a vendor's runtime see exactly the bound device.
VISIBLE_DEVICE_ENV: dict[str, tuple[str, ...]] = {
    "nvidia": ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"),
    "amd": ("ROCR_VISIBLE_DEVICES",),
    "intel": ("ZE_AFFINITY_MASK",),
}
TERMINAL = ("Succeeded", "Failed")


@dataclass
class ControllerConfig:
    """Intervals of the background loops (seconds)."""

    resync_interval: float = 15.0
    health_interval: float = 10.0


@dataclass
class PodInfo:
    uid: str
    phase: str | None
    deleting: bool


@dataclass
class Controller:
    """What the handlers share, and the reconcile logic."""

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
            self.workloads[uid] = _plain(body)

    def is_echo(self, body: Mapping[str, Any]) -> bool:
        """True when ``body`` only reflects our own last status write (nothing to do)."""
        metadata = body.get("metadata") or {}
        written = self.written.get(metadata.get("uid", ""))
        return written is not None and metadata.get("deletionTimestamp") is None and \
            written.get("observedGeneration") == metadata.get("generation") and \
            _plain(body.get("status") or {}) == written

    def forget_workload(self, uid: str) -> None:
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
        namespace, name = metadata.get("namespace") or "default", metadata["name"]
        generation = metadata.get("generation")
        current = self.written.get(uid) or body.get("status") or {}
        try:
            status = GPUWorkloadStatus.model_validate(current)
        except ValidationError:
            status = GPUWorkloadStatus()
        workload, invalid = planning.parse_workload(body)
        if workload is None:
            assert invalid is not None
            return self._write(body, uid, current, invalid, [], invalid.phase, invalid.message,
                               generation, status, template=False)
        same_generation = status.observed_generation == generation
        if same_generation and status.phase in TERMINAL:
            return status.phase
        previous = status.placements if same_generation and status.phase in (
            "Placed", "Running") else None
        plan = planning.plan(workload, self.view, previous)
        placements = list(plan.placements)
        phase, message = plan.phase, plan.message
        template = workload.spec.template is not None
        if not self.is_leader():
            return None  # leadership lapsed while planning: write nothing
        if template:
            desired = {planning.pod_name(name, p.device, p.tasks_text): p for p in placements} \
                if plan.placed else {}
            known = dict(self.pods.get(uid, {}))
            for pod, info in known.items():
                if pod not in desired and not info.deleting:
                    self.api.delete_pod(namespace, pod, info.uid)
            for pod, placement in desired.items():
                if pod not in known:
                    self.api.create_pod(namespace, build_pod(body, workload, placement, pod))
            if plan.placed:
                phase, pods_message = planning.rollup(
                    known[p].phase if p in known and not known[p].deleting else None
                    for p in desired)
                message = f"{message}; {pods_message}"
        return self._write(body, uid, current, plan, placements, phase, message, generation,
                           status, template)

    def _write(self, body: Mapping[str, Any], uid: str, current: Mapping[str, Any], plan: Plan,
               placements: list[PlannedPlacement], phase: str, message: str,
               generation: int | None, status: GPUWorkloadStatus, template: bool) -> str:
        metadata = body["metadata"]
        name = metadata["name"]
        now = datetime.now(UTC)
        conditions: list[Condition] = list(status.conditions)
        conditions = set_condition(
            conditions, CONDITION_PLACED, "True" if plan.placed else "False", plan.reason,
            plan.message, now, generation)
        if template and plan.placed:
            ready = phase in ("Running", "Succeeded")
            reason = {"Running": "PodsRunning", "Succeeded": "PodsSucceeded",
                      "Failed": "PodFailed"}.get(phase, "PodsPending")
            conditions = set_condition(conditions, CONDITION_PODS_READY,
                                       "True" if ready else "False", reason, message, now,
                                       generation)
        else:
            conditions = [c for c in conditions if c.type != CONDITION_PODS_READY]
        old_keys = [(p.device, p.tasks) for p in status.placements]
        new_keys = [(p.device, p.tasks_text) for p in placements]
        revision = (status.plan_revision or 0) + (1 if new_keys != old_keys else 0)
        new = GPUWorkloadStatus(
            phase=phase,
            placements=[p.to_status(planning.pod_name(name, p.device, p.tasks_text)
                                    if template else None) for p in placements],
            task_count=sum(len(p.tasks) for p in placements),
            device_count=len(placements), message=message[:32768], conditions=conditions,
            observed_generation=generation, plan_revision=revision,
        ).to_api()
        if new == dict(current):
            return phase
        if not self.is_leader():
            return phase
        written = self.api.patch_workload_status(metadata.get("namespace") or "default", name,
                                                 new, uid=uid)
        if written is None:
            return phase  # the workload is gone
        self.written[uid] = new
        if phase in ("Placed", "Running", "Succeeded") and uid not in self.placed_at:
            self.placed_at[uid] = self.clock()
        self._events(body, status, plan, phase, message, new_keys != old_keys)
        return phase

    def _events(self, body: Mapping[str, Any], old: GPUWorkloadStatus, plan: Plan, phase: str,
                message: str, replanned: bool) -> None:
        involved = {"apiVersion": API_VERSION, "kind": KIND, "metadata": body["metadata"]}
        if plan.placed and replanned:
            reason = "Replanned" if plan.failed_devices else "Placed"
            why = ""
            if plan.failed_devices:
                why = "devices failed: " + ", ".join(
                    f"{d} ({w})" for d, w in sorted(plan.failed_devices.items())) + "; "
            self.post_event(involved, "Normal", reason,
                                f"{why}{plan.mode} plan: {plan.summary()}")
        elif not plan.placed and (old.phase != phase or old.message != message):
            self.post_event(involved, "Warning", plan.reason, plan.message)
        if plan.placed and old.phase != phase and phase in ("Running", "Succeeded", "Failed"):
            self.post_event(involved, "Warning" if phase == "Failed" else "Normal",
                                phase, message)

    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str,
                   message: str) -> None:
        if not self.async_events:
            self.api.post_event(involved, type_, reason, message)
            return
        try:
            self._event_queue.put_nowait((_plain(involved), type_, reason, message))
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
            if wanted is None or not _needs_write(device, wanted):
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
            if wanted is None or not _needs_write(device, wanted):
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
            self.post_event(involved, "Warning", "HeartbeatLost",
                                f"no heartbeat from the exporter for more than "
                                f"{stale_after:.0f} s: marked Stale and not Ready")
        else:
            self.post_event(involved, "Normal", "HeartbeatResumed",
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
            summaries = {slot.name: device_summary(slot, held.get(slot.name, []))
                         for node in self.view.slots_by_node.values()
                         for slot in node.values()}
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


# --------------------------------------------------------------------------------------------
# device health (pure parts)
# --------------------------------------------------------------------------------------------


def heartbeat(device: GPUDevice) -> float | None:
    """When the exporter last wrote (heartbeat or sample), epoch seconds; None if never."""
    status = device.status
    if status is None:
        return None
    times = [t.timestamp() for t in (status.last_heartbeat_time,
                                     status.metrics.timestamp if status.metrics else None)
             if t is not None]
    return max(times) if times else None


def stale_state(device: GPUDevice, now: float, stale_after: float) -> bool | None:
    """True when the heartbeat is older than ``stale_after``; None when there never was one."""
    beat = heartbeat(device)
    return None if beat is None else now - beat > stale_after


def _needs_write(device: GPUDevice, stale: bool) -> bool:
    conditions = device.status.conditions if device.status else []
    current = find_condition(conditions, CONDITION_STALE)
    if stale:
        ready = find_condition(conditions, CONDITION_READY)
        return current is None or current.status != "True" or \
            (ready is not None and ready.status == "True")
    return current is not None and current.status != "False"


def health_conditions(device: GPUDevice, stale: bool, now: float,
                      stale_after: float) -> list[Condition]:
    """The device's conditions with Stale (and, when stale, Ready=False) set."""
    moment = datetime.fromtimestamp(now, UTC)
    conditions = list(device.status.conditions if device.status else [])
    beat = heartbeat(device)
    age = f"{now - beat:.0f} s" if beat is not None else "ever"
    if stale:
        message = (f"no heartbeat for {age} (stale after {stale_after:.0f} s): the exporter "
                   "stopped reporting")
        conditions = set_condition(conditions, CONDITION_STALE, "True", "HeartbeatMissed",
                                   message, moment)
        conditions = set_condition(conditions, CONDITION_READY, "False", "HeartbeatLost",
                                   message, moment)
    else:
        conditions = set_condition(conditions, CONDITION_STALE, "False", "HeartbeatResumed",
                                   f"last heartbeat {age} ago", moment)
    return conditions


#: A device's written score moves only when the live one leaves this band (or the allocation
#: changes), and a device is written at most once per SUMMARY_MIN_INTERVAL_S: the score follows
#: the exporter's deadbanded metrics, so this keeps the controller's writes below the exporter's.
SCORE_DEADBAND = 0.05
SUMMARY_MIN_INTERVAL_S = 10.0
MAX_ALLOCATION_PODS = 1024


def device_summary(slot: Slot, reservations: Iterable[Reservation]) -> dict[str, Any]:
    """The controller's part of a GPUDevice status: ``score`` and ``allocation``."""
    held = sorted(reservations, key=lambda r: r.pod_key)
    return {
        "score": round(slot.score, 3),
        "allocation": {
            "podCount": len(held),
            "memoryReservedBytes": min(slot.total, sum(r.bytes_per_device for r in held)),
            "pods": [r.pod_key for r in held[:MAX_ALLOCATION_PODS]],
        },
    }


def summary_needs_write(summary: Mapping[str, Any],
                        previous: tuple[Mapping[str, Any], float] | None, now: float) -> bool:
    """Whether ``summary`` differs enough from what was last written, and not too soon."""
    if previous is None:
        return True
    written, when = previous
    if now - when < SUMMARY_MIN_INTERVAL_S:
        return False
    return written["allocation"] != summary["allocation"] or \
        abs(float(written["score"]) - float(summary["score"])) >= SCORE_DEADBAND


# --------------------------------------------------------------------------------------------
# pods
# --------------------------------------------------------------------------------------------


def build_pod(body: Mapping[str, Any], workload: GPUWorkload, placement: PlannedPlacement,
              name: str) -> dict[str, Any]:
    """The pod that runs ``placement`` (DESIGN.md section 7).

    From the workload's template: owner reference to the workload (garbage collection deletes
    the pod with it), the workload/device/tasks annotations, one ``gpu.exo.dev/gpu`` on the first
    container, the vendor's visible-device variables from the downward API (the extender writes
    ``gpu.exo.dev/device-uuid`` at bind), ``EXO_GPU_TASKS``, and a required node affinity to the
    planned device's node so kube-scheduler and the extender place it where the plan says.
    """
    raw = (body.get("spec") or {}).get("template") or {}
    template = copy.deepcopy(dict(raw))
    metadata = template.get("metadata") or {}
    spec = template.get("spec") or {}
    workload_name = workload.name
    labels = {**(metadata.get("labels") or {}), LABEL_WORKLOAD: label_value(workload_name)}
    annotations = {
        **(metadata.get("annotations") or {}),
        ANNOTATION_WORKLOAD: workload_name,
        ANNOTATION_DEVICE: placement.device,
        ANNOTATION_TASKS: placement.tasks_text,
    }
    if placement.vendor:
        annotations[ANNOTATION_VENDOR] = placement.vendor
    if workload.spec.min_memory_bytes is not None:
        annotations[ANNOTATION_MIN_MEMORY] = str(workload.spec.min_memory())
    env = [{"name": var, "valueFrom": {"fieldRef": {
        "fieldPath": f"metadata.annotations['{ANNOTATION_DEVICE_UUID}']"}}}
        for var in VISIBLE_DEVICE_ENV.get(placement.vendor, ())]
    env += [{"name": "EXO_GPU_TASKS", "value": ",".join(placement.tasks)},
            {"name": "EXO_GPU_WORKLOAD", "value": workload_name},
            {"name": "EXO_GPU_DEVICE", "value": placement.device}]
    names = {e["name"] for e in env}
    containers = spec.get("containers") or []
    for i, container in enumerate(containers):
        container["env"] = [e for e in container.get("env") or [] if e.get("name") not in names]
        container["env"] += copy.deepcopy(env)
        if i == 0:
            resources = container.setdefault("resources", {})
            resources.setdefault("limits", {})[GPU_RESOURCE] = "1"
            if GPU_RESOURCE in (resources.get("requests") or {}):
                resources["requests"][GPU_RESOURCE] = "1"
    spec.setdefault("restartPolicy", "Never")
    if placement.node:
        _pin_to_node(spec, placement.node)
    body_metadata = body.get("metadata") or {}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": body_metadata.get("namespace"),
            "labels": labels, "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                "name": body_metadata.get("name"), "uid": body_metadata.get("uid"),
                "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": spec,
    }


def label_value(name: str) -> str:
    """A valid label value for a workload name (names may be longer than labels allow)."""
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[:52].rstrip('-.')}-{digest}"


def _pin_to_node(spec: dict[str, Any], node: str) -> None:
    term_field = {"key": "metadata.name", "operator": "In", "values": [node]}
    affinity = spec.setdefault("affinity", {})
    node_affinity = affinity.setdefault("nodeAffinity", {})
    required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({})
    for term in terms:
        term.setdefault("matchFields", []).append(dict(term_field))


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A detached deep copy of a kopf body (plain dicts and lists)."""
    def convert(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        return value
    result: dict[str, Any] = convert(body)
    return result


# --------------------------------------------------------------------------------------------
# kopf wiring
# --------------------------------------------------------------------------------------------


def build_registry(controller: Controller) -> Any:
    """A ``kopf.OperatorRegistry`` with the controller's handlers (nothing global)."""
    import kopf

    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.event(*resource, registry=registry, id="workloads")
    def workloads(body: Mapping[str, Any], type: str | None, **_: Any) -> None:
        # Level-triggered: create (ADDED), resume (the initial listing, type None) and update
        # (MODIFIED with a new generation) all arrive here; the echo of our own status write is
        # skipped. No diff-base or progress annotations are written, and no finalizer is added:
        # pods go with the workload through their owner references.
        uid = (body.get("metadata") or {}).get("uid", "")
        if type == "DELETED":
            controller.forget_workload(uid)
            return
        controller.observe_workload(body)
        if controller.is_echo(body):
            return
        try:
            controller.reconcile(body)
        except Exception as error:  # the resync loop retries; other workloads go on
            log.warning("reconcile of %s failed (retried on resync): %s",
                        (body.get("metadata") or {}).get("name"), error)

    @kopf.on.event("", "v1", "pods", registry=registry, id="pods",
                   labels={LABEL_WORKLOAD: kopf.PRESENT})
    def pods(body: Mapping[str, Any], type: str | None, **_: Any) -> None:
        owner = controller.observe_pod(body, deleted=type == "DELETED")
        if owner is None:
            return
        workload = controller.workloads.get(owner)
        if workload is not None:
            try:
                controller.reconcile(workload)
            except Exception as error:
                log.warning("reconcile after a pod event failed: %s", error)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> Any:
        return connection_info(controller.api.api_client)

    @kopf.on.startup(registry=registry)
    def startup(**_: Any) -> None:
        controller.start_loops()

    @kopf.on.cleanup(registry=registry)
    def cleanup(**_: Any) -> None:
        controller.stop_loops()

    @kopf.on.probe(registry=registry, id="devices")
    def devices(**_: Any) -> int:
        return len(controller.view.devices)

    return registry


def connection_info(api_client: Any) -> Any:
    """kopf credentials from a ``kubernetes.client.ApiClient`` (one login for both clients)."""
    import kopf

    cfg = api_client.configuration
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    token = auth.split(" ", 1)[1] if auth and auth.lower().startswith("bearer ") else auth
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file, token=token,
        scheme="Bearer" if token else None)


def iter_placements(status: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """The placements of a status dict (for CLIs)."""
    return status.get("placements") or []
