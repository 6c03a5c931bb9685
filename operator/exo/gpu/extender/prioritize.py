"""Prioritize: a node scores what the devices the pod would get there score.

For a one-GPU pod that is the node's best eligible device; for a pod asking for N GPUs, the
N-th best (the weakest of those bind would choose).

The device score is the core policy's (``exo.gpu.selector.score_device``: free memory, compute
headroom, thermal penalty, in 0..1), mapped to kube-scheduler's integer extender priority 0..10 by
``exo.gpu.selector.extender_score`` when the view refreshes the device (``Slot.priority``).
A node with no eligible device scores 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from exo.gpu.k8s.view import ClusterView

from .filter import NodeVerdict, judge_node
from .wire import PodRequest


def prioritize_nodes(view: ClusterView, pod: PodRequest, node_names: Iterable[str], now: float,
                     known: Mapping[str, NodeVerdict] | None = None) -> dict[str, int]:
    """Integer scores 0..10 per node. ``known`` reuses verdicts the filter just computed."""
    wanted = max(pod.gpus, 1)
    stale_before = view.stale_before(now)
    scores: dict[str, int] = {}
    for node in node_names:
        verdict = known.get(node) if known is not None else None
        if verdict is None:
            verdict = judge_node(view, pod, node, stale_before)
        eligible = verdict.eligible
        scores[node] = eligible[wanted - 1].priority if len(eligible) >= wanted else 0
    return scores
