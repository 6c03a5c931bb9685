"""The Kubernetes adapter of the core's cluster state: GPUDevices and Pods in, decisions out.

The controller and the scheduler extender answer from one ``ClusterView``, never from the API
server on their hot paths. It is fed with GPUDevice and Pod objects (by an informer or by kopf
handlers) and turns them into the core's terms, in ``exo.gpu.cluster.ClusterState`` (``state``):

- a GPUDevice becomes a device (identity, labels with the node and vendor implied, cordon, the
  Ready condition and its reason, the latest sample);
- a pod becomes a reservation in the ledger. A bound pod holds what its ``gpu.exo.dev/device``
  and ``gpu.exo.dev/reserved-memory`` annotations say (written at bind). A pod of a GPUWorkload
  (``gpu.exo.dev/workload``) planned on a device (``gpu.exo.dev/device``) and not bound yet holds
  what it asks there (``gpu.exo.dev/min-memory``, or the whole device), so the planned memory is
  held even for an extender that never saw the plan (a restart, or ``exo-gpu extender`` on its
  own). Pods that end, and unbound pods being deleted, release what they held; a bound pod being
  deleted keeps its reservation until it ends or is gone (it may still use the device during its
  grace period). The source of truth is the API: a fresh view rebuilds the ledger from a pod
  listing;
- the controller adds the holds of its plans (``set_plan_holds``) under the same lock as the
  planning, and the extender commits a bind's reservation under it together with the device
  choice, so two pods, or two plans, or a plan and a pod, can never be given the same memory;
- a GPUDevice's ``status.topology`` becomes its links (its node's topology), and a Node's labels
  its network domains (``apply_node``; ``domain_keys`` says which labels name racks and blocks).

Every rule (what fits, what is free, what is stale) is the core's; this module only translates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from exo.gpu.cluster import ClusterState
from exo.gpu.clustering import GPUClusteringManager
from exo.gpu.policy import DEFAULT_POLICY, SelectionPolicy
from exo.gpu.quantity import parse_quantity
from exo.gpu.state import DeviceState, Reservation
from exo.gpu.topology import DEFAULT_DOMAIN_KEYS, DeviceLinks, DomainKeys

from .models import LABEL_MODEL, LABEL_NODE, LABEL_VENDOR, GPUDevice, find_condition, label_value

log = logging.getLogger(__name__)

ANNOTATION_DEVICE = "gpu.exo.dev/device"
ANNOTATION_DEVICE_UUID = "gpu.exo.dev/device-uuid"
ANNOTATION_RESERVED = "gpu.exo.dev/reserved-memory"
ANNOTATION_WORKLOAD = "gpu.exo.dev/workload"
ANNOTATION_TASKS = "gpu.exo.dev/tasks"
ANNOTATION_MIN_MEMORY = "gpu.exo.dev/min-memory"
ANNOTATION_VENDOR = "gpu.exo.dev/vendor"
#: A pod's device affinity: JSON of ``exo.gpu.k8s.workload.DeviceAffinity`` (required and
#: preferred devices by vendor, model and labels).
ANNOTATION_DEVICE_AFFINITY = "gpu.exo.dev/device-affinity"
#: With ``gpu.exo.dev/workload``: the level (node, rack, block, zone) whose domain the
#: workload's pods already use scores higher for the pod.
ANNOTATION_PACK_WITHIN = "gpu.exo.dev/pack-within"
#: Written at bind for a pod of several devices: the set's link scores, pair by pair.
ANNOTATION_LINKS = "gpu.exo.dev/device-links"
GPU_RESOURCE = "gpu.exo.dev/gpu"

#: The core's per-device state, under the name the extender used for it.
Slot = DeviceState

__all__ = [
    "ANNOTATION_DEVICE",
    "ANNOTATION_DEVICE_AFFINITY",
    "ANNOTATION_DEVICE_UUID",
    "ANNOTATION_LINKS",
    "ANNOTATION_MIN_MEMORY",
    "ANNOTATION_PACK_WITHIN",
    "ANNOTATION_RESERVED",
    "ANNOTATION_TASKS",
    "ANNOTATION_VENDOR",
    "ANNOTATION_WORKLOAD",
    "GPU_RESOURCE",
    "ClusterView",
    "Reservation",
    "Slot",
    "device_labels",
    "workload_key",
]


def workload_key(namespace: str | None, name: str) -> str:
    """How the ledger names a GPUWorkload: ``namespace/name``."""
    return f"{namespace or 'default'}/{name}"


def device_labels(device: GPUDevice) -> dict[str, str]:
    """A device's labels, with node, vendor and model implied from its spec when not
    labelled."""
    labels = {LABEL_NODE: device.spec.node, LABEL_VENDOR: device.spec.vendor.value}
    model = label_value(device.spec.model)
    if model:
        labels[LABEL_MODEL] = model
    labels.update(device.metadata.labels)
    return labels


@dataclass
class ClusterView:
    """GPUDevices and pods, as the core's ``ClusterState``. Thread-safe: every method takes
    ``lock``; callers that read and then commit (bind, planning) hold it around both."""

    policy: SelectionPolicy = DEFAULT_POLICY
    clock: Callable[[], float] = time.time
    #: Samples kept per device. Every reader of the view (scoring, planning, aggregation) uses
    #: the latest sample; one more keeps a late sample in order. At 2-3 KiB a sample, the core's
    #: default of 300 would cost gigabytes at 10,000 devices.
    history_size: int = 2
    #: Which node labels name each network domain (zone, block, rack).
    domain_keys: DomainKeys = DEFAULT_DOMAIN_KEYS
    state: ClusterState = field(init=False)
    lock: threading.RLock = field(default_factory=threading.RLock)
    devices: dict[str, GPUDevice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = ClusterState(self.policy, clock=self.clock, history_size=self.history_size,
                                  domain_keys=self.domain_keys)

    # ------------------------------------------------------------------ the core's parts
    @property
    def manager(self) -> GPUClusteringManager:
        return self.state.manager

    @property
    def generation(self) -> int:
        """Bumped on every change; caches keyed by it (the extender's per-pod results) stay
        exact."""
        return self.state.generation

    @property
    def reservations(self) -> Mapping[str, Reservation]:
        """Every pod holding memory, by uid (bound, or planned and pending)."""
        return self.state.ledger.pods

    @property
    def reserved_by_device(self) -> dict[str, int]:
        return self.state.ledger.reserved_by_device()

    @property
    def ordered_by_node(self) -> Mapping[str, Sequence[DeviceState]]:
        """Per node, its devices best score first (ties by name)."""
        return self.state.nodes

    @property
    def slots_by_node(self) -> dict[str, dict[str, DeviceState]]:
        return {node: {d.device_id: d for d in devices}
                for node, devices in self.state.nodes.items()}

    def node_slots(self, node: str) -> dict[str, DeviceState]:
        return {d.device_id: d for d in self.state.node_devices(node)}

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
            info = None
            if previous is None or previous.spec != device.spec:
                info = device.to_device_info()
            labels = None
            if previous is None or previous.metadata.labels != device.metadata.labels or \
                    previous.spec.node != device.spec.node:
                labels = device_labels(device)
            ready, detail = _readiness(device)
            links = _links(device)
            self.devices[device.name] = device
            try:
                self.state.update_device(device.name, info=info, labels=labels,
                                         cordoned=device.spec.unschedulable, ready=ready,
                                         ready_detail=detail, sample=device.latest_sample(),
                                         links=links)
            except ValueError as error:
                log.warning("metrics of %s skipped: %s", device.name, error)
            return device

    # ------------------------------------------------------------------ nodes
    def apply_node(self, obj: Mapping[str, Any]) -> None:
        """Record a Node's labels (its network domains); nothing else of a Node is read."""
        metadata = obj.get("metadata") or {}
        name = metadata.get("name")
        if not name:
            return
        labels = metadata.get("labels") or {}
        with self.lock:
            self.state.set_node_labels(name, {str(k): str(v) for k, v in labels.items()})

    def remove_node(self, name: str) -> None:
        with self.lock:
            self.state.remove_node(name)

    def resync_nodes(self, nodes: Iterable[Mapping[str, Any]]) -> None:
        """Make the node labels match a full listing."""
        nodes = list(nodes)
        live = {(n.get("metadata") or {}).get("name") for n in nodes}
        with self.lock:
            for gone in [n for n in self.state.node_labels if n not in live]:
                self.state.remove_node(gone)
            for node in nodes:
                self.apply_node(node)

    def remove_device(self, name: str) -> None:
        with self.lock:
            if self.devices.pop(name, None) is not None:
                self.state.remove_device(name)

    # ------------------------------------------------------------------ pods and the ledger
    def apply_pod(self, pod: Mapping[str, Any]) -> None:
        """Track a pod: a bound pod holding a device keeps its reservation, a workload's pod
        planned on a device holds what it asks there, a pod that ended (or was deleted before it
        was bound) releases what it held; a bound pod being deleted keeps holding until it ends
        or is gone."""
        metadata = pod.get("metadata") or {}
        uid = metadata.get("uid")
        if not uid:
            return
        status = pod.get("status") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        # A bound pod being deleted still runs (its grace period) and may still use its device:
        # it keeps its reservation until it ends or is gone. An unbound one never ran.
        finished = (
            status.get("phase") in ("Succeeded", "Failed")
            or (metadata.get("deletionTimestamp") is not None and not node)
        )
        if finished:
            self.release(uid)
            return
        annotations = metadata.get("annotations") or {}
        devices = tuple(d for d in (annotations.get(ANNOTATION_DEVICE) or "").split(",") if d)
        if not devices:
            return
        namespace = metadata.get("namespace")
        key = f"{namespace}/{metadata.get('name')}"
        workload = annotations.get(ANNOTATION_WORKLOAD)
        owner = workload_key(namespace, workload) if workload else None
        reserved = annotations.get(ANNOTATION_RESERVED)
        with self.lock:
            held = self.state.ledger.pods.get(uid)
            if node and reserved is not None:
                if held is not None and held.bound:
                    return  # recorded at bind, or already applied
                try:
                    per_device = int(reserved)
                except ValueError:
                    log.warning("pod %s: bad %s annotation %r", key, ANNOTATION_RESERVED,
                                reserved)
                    return
                self.commit(Reservation(uid, key, node, devices, per_device, owner))
            elif not node and owner is not None and held is None:
                asked = self._asked(annotations, devices, key)
                if asked is not None:
                    self.commit(Reservation(uid, key, "", devices, asked, owner, bound=False))

    def _asked(self, annotations: Mapping[str, Any], devices: Sequence[str],
               key: str) -> int | None:
        """What a planned pod asks of each of its devices (None: nothing to hold)."""
        text = annotations.get(ANNOTATION_MIN_MEMORY)
        if text is not None:
            try:
                return parse_quantity(text, ANNOTATION_MIN_MEMORY)
            except ValueError as error:
                log.warning("pod %s: %s", key, error)
                return None
        totals = [d.total for name in devices if (d := self.state.device(name)) is not None]
        return max(totals) if totals else None

    def remove_pod(self, pod: Mapping[str, Any]) -> None:
        uid = (pod.get("metadata") or {}).get("uid")
        if uid:
            self.release(uid)

    def resync_pods(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """Make the ledger match a full pod listing (start, or after a lost watch)."""
        pods = list(pods)
        live = {(p.get("metadata") or {}).get("uid") for p in pods}
        with self.lock:
            for uid in [uid for uid in self.state.ledger.pods if uid not in live]:
                self.release(uid)
            for pod in pods:
                self.apply_pod(pod)

    def commit(self, reservation: Reservation) -> None:
        """Record a reservation (call under ``lock`` together with the choice that made it)."""
        with self.lock:
            self.state.hold(reservation)

    def release(self, pod_uid: str) -> Reservation | None:
        with self.lock:
            return self.state.release(pod_uid)

    def set_plan_holds(self, workload: str, holds: Mapping[str, int]) -> None:
        """What the planned tasks of ``workload`` (``namespace/name``) hold, device -> bytes
        (empty: nothing). Call under ``lock`` together with the planning that decided it."""
        with self.lock:
            self.state.set_plan(workload, holds)

    # ------------------------------------------------------------------ queries
    def reservations_on(self, device: str) -> list[Reservation]:
        with self.lock:
            return self.state.ledger.on_device(device)


_NO_LINKS = DeviceLinks()


def _links(device: GPUDevice) -> DeviceLinks:
    """The device's links; a report the core cannot use is logged and counts as none."""
    try:
        return device.links() or _NO_LINKS
    except ValueError as error:
        log.warning("links of %s skipped: %s", device.name, error)
        return _NO_LINKS


def _readiness(device: GPUDevice) -> tuple[bool, str]:
    """The Ready condition as (ready, why not)."""
    if device.status is None:
        return True, ""  # no conditions yet: judged by metrics (NoMetrics) instead
    ready = find_condition(device.status.conditions, "Ready")
    if ready is None or ready.status == "True":
        return True, ""
    return False, f"{ready.reason}: {ready.message}" if ready.message else ready.reason
