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

Not thread-safe on its own: the view holds its lock around every call, and the controller and
the extender take that lock around read-decide-commit (so a plan and its holds, or a bind's choice
and its reservation, are one step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from exo.gpu.clustering import GPUClusteringManager
from exo.gpu.fit import Choice, FitRequest, FitResult, choose, explain, fit
from exo.gpu.policy import SelectionPolicy
from exo.gpu.state import DeviceState, Ledger, Reservation
from exo.gpu.telemetry import DEFAULT_HISTORY_SIZE, RecordResult
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics

__all__ = ["ClusterState"]


def _order_key(device: DeviceState) -> tuple[float, str]:
    return -device.score, device.device_id


class ClusterState:
    """Devices by node, their state, and every reservation (see the module docstring)."""

    def __init__(self, policy: SelectionPolicy | None = None, *,
                 clock: Callable[[], float] | None = None,
                 history_size: int = DEFAULT_HISTORY_SIZE) -> None:
        self.manager = GPUClusteringManager(policy=policy, clock=clock,
                                            history_size=history_size)
        self.policy = self.manager.policy
        self.ledger = Ledger()
        #: node -> its devices, best score first (ties by name).
        self.nodes: dict[str, list[DeviceState]] = {}
        self._devices: dict[str, DeviceState] = {}
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
                      sample: GPUMetrics | None = None) -> RecordResult | None:
        """Create or change a device; fields left None are unchanged.

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
        if device is None:
            raise KeyError(name)
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
        self.manager.unregister_device(name)
        self._unplace(device, device.node)
        self.generation += 1

    def _place(self, device: DeviceState) -> None:
        self.nodes.setdefault(device.node, []).append(device)
        self._resort(device.node)

    def _unplace(self, device: DeviceState, node: str) -> None:
        listed = self.nodes.get(node)
        if listed is None:
            return
        listed[:] = [d for d in listed if d is not device]
        if not listed:
            del self.nodes[node]

    def _resort(self, node: str) -> None:
        listed = self.nodes.get(node)
        if listed is not None and len(listed) > 1:
            listed.sort(key=_order_key)

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
        """``exo.gpu.fit.choose`` over the node's devices. ``without``: judge as if these pods
        (preemption victims) held nothing."""
        devices = self.nodes.get(node, ())
        reserved = None
        if without is not None:
            gone = list(without)
            reserved = {d.device_id: self.ledger.reserved_without(d.device_id, request.workload,
                                                                  gone) for d in devices}
        return choose(devices, request, now, self.policy, reserved)
