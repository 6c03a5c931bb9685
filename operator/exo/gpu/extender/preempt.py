"""Preempt: keep the candidate nodes where evicting the chosen victims frees a device for the pod.

kube-scheduler picks victims by CPU, memory and priority; with ``ignoredByScheduler`` it does
not see GPU memory at all, so it may offer to evict pods that hold no GPU the pod could use. For
each candidate node the core judges the node again as if the victims held nothing
(``ClusterState.choose(..., without=victims)``: the same rules as the filter, with the ledger's
figure recomputed without them): a node where the pod still has no device is dropped, the others
are returned with their victims unchanged. Memory the exporter measures in use stays in use, and
a workload's plan keeps holding what it planned even when its pod is a victim (the controller
would start that pod again): evicting a pod frees what it alone held.
"""

from __future__ import annotations

from collections.abc import Mapping

from exo.gpu.k8s.view import ClusterView

from .filter import fit_request
from .wire import PodRequest


def preempt_nodes(view: ClusterView, pod: PodRequest,
                  victims: Mapping[str, tuple[list[str], int]], now: float
                  ) -> dict[str, tuple[list[str], int]]:
    """The subset of ``victims`` (node -> victim UIDs, PDB violations) that makes room."""
    request = fit_request(pod)
    kept: dict[str, tuple[list[str], int]] = {}
    for node, (uids, violations) in victims.items():
        choice = view.state.choose(node, request, now, without=uids)
        if len(choice.devices) >= request.devices:
            kept[node] = (uids, violations)
    return kept
