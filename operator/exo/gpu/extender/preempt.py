"""Preempt: keep the candidate nodes where evicting the chosen victims frees a device for the pod.

kube-scheduler picks victims by CPU, memory and priority; with ``ignoredByScheduler`` it does
not see GPU memory at all, so it may offer to evict pods that hold no GPU the pod could use. For
each candidate node the extender takes the victims' reservations off that node's devices (in a
copy) and judges the node again by the filter's rules: a node where the pod still has no device
is dropped, the others are returned with their victims unchanged. Memory the exporter measures
in use stays in use: evicting a pod frees what it reserved, not what other processes hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from exo.gpu.k8s.view import ClusterView, Slot

from .filter import device_rejection
from .wire import PodRequest


def freed(slot: Slot, released: int) -> Slot:
    """``slot`` with ``released`` bytes of its reservations given back."""
    reserved = max(slot.reserved - released, 0)
    free = min(max(slot.total - max(slot.used, reserved), 0), slot.total)
    return dataclasses.replace(slot, reserved=reserved, free=free)


def preempt_nodes(view: ClusterView, pod: PodRequest,
                  victims: Mapping[str, tuple[list[str], int]], now: float
                  ) -> dict[str, tuple[list[str], int]]:
    """The subset of ``victims`` (node -> victim UIDs, PDB violations) that makes room."""
    stale_before = view.stale_before(now)
    wanted = max(pod.gpus, 1)
    kept: dict[str, tuple[list[str], int]] = {}
    for node, (uids, violations) in victims.items():
        released: dict[str, int] = {}
        for uid in uids:
            reservation = view.reservations.get(uid)
            if reservation is not None and reservation.node == node:
                for device in reservation.devices:
                    released[device] = released.get(device, 0) + reservation.bytes_per_device
        slots = view.ordered_by_node.get(node, [])
        fitting = sum(1 for slot in slots
                      if device_rejection(freed(slot, released.get(slot.name, 0)), pod,
                                          stale_before) is None)
        if fitting >= wanted:
            kept[node] = (uids, violations)
    return kept
