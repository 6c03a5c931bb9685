"""``ClusterState``: the cluster's devices by node and the reservation ledger, in one object.

This is the state every component decides on. The Kubernetes view (``exo.gpu.k8s.view``) feeds it
from the informer (devices, samples, bound and planned pods), the controller adds the holds of
its plans, and then

- the extender asks :meth:`ClusterState.choose` for a node (filter, prioritize, bind, preempt),
- the planner asks the seed API of :attr:`ClusterState.manager` (``plan_workload`` with an
  ``exo.gpu.fit.FitRequest``), which asks :func:`exo.gpu.fit.fit` per device,
- ``exo-gpu plan`` / ``top`` and the controller's device health ask :meth:`fit`/:meth:`explain`.

One ``exo.gpu.state.DeviceState`` per device is shared by all of them: the manager's selector
keeps it (score order for selection) and this object keeps the same records per node, best score
first (ties by name), so filtering a node usually stops at its first device.

Topology: each device's links (``exo.gpu.topology.DeviceLinks``, from its GPUDevice status) make
up its node's ``NodeTopology`` (:meth:`ClusterState.topology`, rebuilt only when a link of the
node changes), which :meth:`ClusterState.choose` hands to the core's ``choose``; the nodes'
labels (:meth:`ClusterState.set_node_labels`) place each node in its network domains
(:meth:`ClusterState.domain_of`, with ``domain_keys`` naming the labels).

Not thread-safe on its own: the view holds its lock around every call, and the controller and
the extender take that lock around read-decide-commit (so a plan and its holds, or a bind's choice
and its reservation, are one step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from exo.gpu.clustering import GPUClusteringManager
from exo.gpu.fit import Choice, FitRequest, FitResult, choose, explain, fit
from exo.gpu.policy import SelectionPolicy
from exo.gpu.state import DeviceState, Ledger, Reservation
from exo.gpu.telemetry import DEFAULT_HISTORY_SIZE, RecordResult
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics
from exo.gpu.topology import (
    DEFAULT_DOMAIN_KEYS,
    EMPTY_TOPOLOGY,
    DeviceLinks,
    DomainKeys,
    DomainLevel,
    NodeTopology,
)

__all__ = ["ClusterState"]

_NO_LINKS = DeviceLinks()


def _order_key(device: DeviceState) -> tuple[float, str]:
    return -device.score, device.device_id


class ClusterState:
    """Devices by node, their state, and every reservation (see the module docstring)."""

    def __init__(self, policy: SelectionPolicy | None = None, *,
                 clock: Callable[[], float] | None = None,
                 history_size: int = DEFAULT_HISTORY_SIZE,
                 domain_keys: DomainKeys = DEFAULT_DOMAIN_KEYS) -> None:
        self.manager = GPUClusteringManager(policy=policy, clock=clock,
                                            history_size=history_size)
        self.policy = self.manager.policy
        self.ledger = Ledger()
        self.domain_keys = domain_keys
        #: node -> its devices, best score first (ties by name).
        self.nodes: dict[str, list[DeviceState]] = {}
        #: node -> its labels (network domains), for the nodes known.
        self.node_labels: dict[str, dict[str, str]] = {}
        self._devices: dict[str, DeviceState] = {}
        self._links: dict[str, DeviceLinks] = {}
        self._topologies: dict[str, NodeTopology] = {}
        #: The nodes some of whose devices report links (their choices compare sets).
        self.linked_nodes: set[str] = set()
        #: node -> bumped on every change of its devices (their samples, holds, flags, links).
        self._versions: dict[str, int] = {}
        #: node -> request key -> (node version, valid until, the choice): see choose().
        self._choices: dict[str, dict[tuple[int, bool, int], tuple[int, float, Choice[Any]]]] = {}
        #: Bumped on every change: results cached against it stay exact.
        self.generation = 0

    # ------------------------------------------------------------------ devices
    def __contains__(self, name: object) -> bool:
        return name in self._devices

    def __len__(self) -> int:
        return len(self._devices)

    def device(self, name: str) -> DeviceState | None:
        return self._devices.get(name)

    def devices(self) -> Iterable[DeviceState]:
        return self._devices.values()

    def node_devices(self, node: str) -> Sequence[DeviceState]:
        """The node's devices, best score first (empty for an unknown node)."""
        return self.nodes.get(node, ())

    def update_device(self, name: str, *, info: GPUDeviceInfo | None = None,
                      cordoned: bool | None = None, ready: bool | None = None,
                      ready_detail: str = "", labels: Mapping[str, str] | None = None,
                      sample: GPUMetrics | None = None,
                      links: DeviceLinks | None = None) -> RecordResult | None:
        """Create or change a device; fields left None are unchanged (``DeviceLinks()``: no
        links).

        ``info`` registers the device, or replaces its identity when it changed (flags, labels
        and holds stay; history only while vendor and memory total stay). ``sample`` is recorded
        (a replay of a sample already held is ignored; a bad one raises the core's
        ``ValueError`` naming the field, and nothing else of the call is lost).
        """
        manager = self.manager
        device = self._devices.get(name)
        if info is not None:
            if info.device_id != name:
                raise ValueError(f"info.device_id: {info.device_id!r} is not {name!r}")
            if device is None:
                manager.register_device(info)
                device = manager.device_state(name)
                self._devices[name] = device
                self._apply_holds(name)
                self._place(device)
            elif device.info != info:
                old_node = device.node
                manager.register_device(info, replace=True)
                if device.node != old_node:
                    self._unplace(device, old_node)
                    self._place(device)
                    self._relink(old_node)
                    self._relink(device.node)
        if device is None:
            raise KeyError(name)
        if links is not None and self._links.get(name, _NO_LINKS) != links:
            if links == _NO_LINKS:
                self._links.pop(name, None)
            else:
                self._links[name] = links
            self._relink(device.node)
        if cordoned is not None:
            manager.set_cordoned(name, cordoned)
        if ready is not None:
            manager.set_ready(name, ready, ready_detail if not ready else "")
        if labels is not None and labels != device.labels:
            manager.set_labels(name, labels)
        result = None
        if sample is not None:
            latest = device.metrics
            if latest is None or sample.timestamp > latest.timestamp:
                try:
                    result = manager.record_metrics_sync(sample)
                finally:
                    self._resort(device.node)
                    self.generation += 1
                return result
        self._resort(device.node)
        self.generation += 1
        return result

    def remove_device(self, name: str) -> None:
        device = self._devices.pop(name, None)
        if device is None:
            return
        self._choices.pop(device.node, None)
        self.manager.unregister_device(name)
        self._unplace(device, device.node)
        self._links.pop(name, None)
        self._relink(device.node)
        self.generation += 1

    def _place(self, device: DeviceState) -> None:
        self.nodes.setdefault(device.node, []).append(device)
        self._resort(device.node)
        self._relink(device.node)

    def _unplace(self, device: DeviceState, node: str) -> None:
        self._versions[node] = self._versions.get(node, 0) + 1
        listed = self.nodes.get(node)
        if listed is None:
            return
        listed[:] = [d for d in listed if d is not device]
        if not listed:
            del self.nodes[node]

    def _resort(self, node: str) -> None:
        self._versions[node] = self._versions.get(node, 0) + 1
        listed = self.nodes.get(node)
        if listed is not None and len(listed) > 1:
            listed.sort(key=_order_key)

    def _relink(self, node: str) -> None:
        """The node's links changed (a report, a device came or went): rebuild on next use."""
        self._topologies.pop(node, None)
        if any((links := self._links.get(d.device_id)) is not None and links.peers
               for d in self.nodes.get(node, ())):
            self.linked_nodes.add(node)
        else:
            self.linked_nodes.discard(node)

    # ------------------------------------------------------------------ topology
    def links(self, name: str) -> DeviceLinks | None:
        """What the device's exporter reports of its links (None: nothing)."""
        return self._links.get(name)

    def topology(self, node: str) -> NodeTopology:
        """The node's pairwise link scores (built from its devices' links, then cached)."""
        found = self._topologies.get(node)
        if found is None:
            devices = self.nodes.get(node, ())
            reports = {d.device_id: self._links[d.device_id] for d in devices
                       if d.device_id in self._links}
            found = NodeTopology(reports) if reports else EMPTY_TOPOLOGY
            self._topologies[node] = found
        return found

    def set_node_labels(self, node: str, labels: Mapping[str, str]) -> bool:
        """Record a node's labels (its network domains); True when they changed."""
        if self.node_labels.get(node) == labels:
            return False
        self.node_labels[node] = dict(labels)
        self.generation += 1
        return True

    def remove_node(self, node: str) -> None:
        if self.node_labels.pop(node, None) is not None:
            self.generation += 1

    def domain_of(self, node: str, level: DomainLevel) -> str | None:
        """The domain ``node`` lies in at ``level`` (None: its labels do not say)."""
        return self.domain_keys.domain_of(node, self.node_labels.get(node), level)

    def workload_domains(self, workload: str, level: DomainLevel) -> set[str]:
        """The domains at ``level`` where ``workload`` (its plan or its pods) holds devices."""
        out = set()
        for name in self.ledger.workload_devices(workload):
            device = self._devices.get(name)
            if device is not None:
                domain = self.domain_of(device.node, level)
                if domain is not None:
                    out.add(domain)
        return out

    # ------------------------------------------------------------------ ledger
    def hold(self, reservation: Reservation) -> None:
        """Record memory held for a pod (bound, or planned and pending); replaces its last."""
        self._refresh(self.ledger.hold(reservation))

    def release(self, pod_uid: str) -> Reservation | None:
        reservation, touched = self.ledger.release(pod_uid)
        self._refresh(touched)
        return reservation

    def set_plan(self, workload: str, holds: Mapping[str, int]) -> None:
        """Make ``holds`` (device -> bytes) what the workload's planned tasks hold."""
        self._refresh(self.ledger.set_plan(workload, holds))

    def _refresh(self, touched: set[str]) -> None:
        if not touched:
            return  # nothing moved: results cached against the generation stay exact
        nodes = set()
        for name in touched:
            if name in self._devices:
                self._apply_holds(name)
                nodes.add(self._devices[name].node)
        for node in nodes:
            self._resort(node)
        self.generation += 1

    def _apply_holds(self, name: str) -> None:
        reserved, held = self.ledger.totals(name)
        self.manager.set_holds(name, reserved, held)

    # ------------------------------------------------------------------ decisions
    def fit(self, name: str, request: FitRequest, now: float | None) -> FitResult:
        """``exo.gpu.fit.fit`` for one device (``KeyError`` for an unknown one)."""
        return fit(self._devices[name], request, now, self.policy)

    def explain(self, name: str, request: FitRequest, now: float | None
                ) -> tuple[FitResult, ...]:
        return explain(self._devices[name], request, now, self.policy)

    def choose(self, node: str, request: FitRequest, now: float | None,
               without: Iterable[str] | None = None) -> Choice[DeviceState]:
        """``exo.gpu.fit.choose`` over the node's devices, with its links. ``without``: judge as
        if these pods (preemption victims) held nothing.

        On a linked node every device is judged, so the answer to a request of the two common
        shapes (a memory size, or whole devices, and a count) is kept until one of the node's
        devices changes or the first available one's sample would go stale: the same request
        on an unchanged node is answered from it.
        """
        devices = self.nodes.get(node, ())
        topology = self.topology(node)
        if without is not None:
            gone = list(without)
            reserved = {d.device_id: self.ledger.reserved_without(d.device_id, request.workload,
                                                                  gone) for d in devices}
            return choose(devices, request, now, self.policy, reserved, topology)
        if not topology.linked or not (request.simple or request.whole):
            return choose(devices, request, now, self.policy, None, topology)
        key = (request.min_memory_bytes, request.whole, request.devices)
        version = self._versions.get(node, 0)
        kept = self._choices.setdefault(node, {})
        entry = kept.get(key)
        if entry is not None and entry[0] == version and (now is None or now <= entry[1]):
            return entry[2]
        choice = choose(devices, request, now, self.policy, None, topology)
        valid_until = min((d.fresh_until for d in devices if d.available), default=math.inf)
        kept[key] = (version, valid_until, choice)
        return choice
