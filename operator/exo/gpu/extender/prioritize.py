"""Prioritize: a node scores what the devices the pod would get there score.

For a one-GPU pod that is the node's best device that fits; for a pod asking for N GPUs, the
N-th best (the weakest of those bind would choose). Which devices fit is the core's decision
(``exo.gpu.fit.choose``, the same as the filter's).

The device score is the core policy's (``exo.gpu.policy.score_device``: free memory, compute
headroom, thermal penalty, in 0..1), mapped to kube-scheduler's integer extender priority 0..10 by
``exo.gpu.policy.extender_score`` when the device changes (``DeviceState.priority``).
A node with no device that fits scores 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from exo.gpu.fit import choose
from exo.gpu.k8s.view import ClusterView

from .filter import NodeVerdict, fit_request, judge_node, own_hold
from .wire import PodRequest


def prioritize_nodes(view: ClusterView, pod: PodRequest, node_names: Iterable[str], now: float,
                     known: Mapping[str, NodeVerdict] | None = None) -> dict[str, int]:
    """Integer scores 0..10 per node. ``known`` reuses verdicts the filter just computed."""
    request = fit_request(pod)
    wanted = request.devices
    nodes, policy = view.state.nodes, view.state.policy
    own = own_hold(view, pod)
    scores: dict[str, int] = {}
    for node in node_names:
        verdict = known.get(node) if known is not None else None
        if verdict is None:
            verdict = choose(nodes.get(node, ()), request, now, policy) if own is None else \
                judge_node(view, request, node, now, own)
        devices = verdict.devices
        scores[node] = devices[wanted - 1].priority if len(devices) >= wanted else 0
    return scores
