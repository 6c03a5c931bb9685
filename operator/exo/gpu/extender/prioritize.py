"""Prioritize: a node scores what the devices the pod would get there are worth to it.

Which devices the pod would get is the core's decision (``exo.gpu.fit.choose``, the same as the
filter's and bind's); what they are worth is the core's ``exo.gpu.fit.choice_priority``: the
weakest chosen device's score (``exo.gpu.policy.score_device``: free memory, compute headroom,
thermal penalty), averaged, where they apply, with how well a set is linked (a pod of several
GPUs), how much of the pod's preferred device affinity it meets, and whether the node lies in the
domain the pod's workload already uses (``gpu.exo.dev/pack-within`` with ``gpu.exo.dev/workload``),
mapped to kube-scheduler's integer extender priority 0..10. A one-GPU pod with none of these
scores its device's priority. A node with no device that fits scores 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from exo.gpu.fit import choice_priority, choose
from exo.gpu.k8s.view import ClusterView, workload_key

from .filter import NodeVerdict, fit_request, judge_node, own_hold
from .wire import PodRequest


def prioritize_nodes(view: ClusterView, pod: PodRequest, node_names: Iterable[str], now: float,
                     known: Mapping[str, NodeVerdict] | None = None) -> dict[str, int]:
    """Integer scores 0..10 per node. ``known`` reuses verdicts the filter just computed."""
    request = fit_request(pod)
    state = view.state
    known_nodes, policy, linked = state.nodes, state.policy, state.linked_nodes
    level = pod.pack_within
    domains = state.workload_domains(workload_key(pod.namespace, pod.workload), level) \
        if level is not None and pod.workload else set()
    own = own_hold(view, pod)
    scores: dict[str, int] = {}
    for node in node_names:
        verdict = known.get(node) if known is not None else None
        if verdict is None:
            if own is not None:
                verdict = judge_node(view, request, node, now, own)
            elif node in linked:
                verdict = state.choose(node, request, now)
            else:
                verdict = choose(known_nodes.get(node, ()), request, now, policy)
        in_domain = state.domain_of(node, level) in domains if domains and level else None
        scores[node] = choice_priority(verdict, request, in_domain)
    return scores
