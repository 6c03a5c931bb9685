"""Filter: keep the nodes holding enough devices that can take the pod.

Whether a device can take the pod is the core's decision (``exo.gpu.fit``, asked through
``ClusterState.choose`` per node): not cordoned, Ready, reporting, fresh, below the thermal
limit, of the requested vendor, the pod's planned device if it has one (pods of a GPUWorkload are
held to their plan), and with the memory the pod asks for: ``gpu.exo.dev/min-memory`` of free
memory after what others hold and measured use, or, without that annotation, the whole device
(nobody else holds any of it). Memory the pod's own workload holds for it (its plan) is the
pod's to take.

On a node whose devices report links, a pod of several GPUs is judged by the set it would get
(the best-linked set that fits), and a one-GPU pod by the device whose removal breaks the fewest
good sets (``exo.gpu.topology``). A pod's ``gpu.exo.dev/device-affinity`` requires devices
(refused ones say ``SelectorMismatch``) and prefers others.


Nodes fail with a reason a user can act on. The outcome keeps apart the nodes where only memory
held by others stands in the way (``failed``: evicting its holders could make room) from those
where nothing would help (no devices, vendor, health, temperature, staleness, a device too small
whatever happens). kube-scheduler's own preemption cannot find GPU victims, so the server answers
both as ``FailedAndUnresolvableNodes`` and exo-gpu's preemption starts from ``failed``
(``extender.judged``, ``extender.preemptor``).

A pod's own pending hold (:func:`own_hold`) is the pod's to take.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from exo.gpu.fit import Choice, FitRequest, choose
from exo.gpu.k8s.view import ClusterView, Slot, workload_key

from .wire import PodRequest

#: How many devices a failure message names before it summarizes the rest.
MAX_REASONS_PER_NODE = 3
NO_DEVICES = "exo-gpu: no GPU devices known to exo-gpu on this node"

#: What the filter found on one node: the devices the pod would get (best first), or why not.
NodeVerdict = Choice[Slot]


def fit_request(pod: PodRequest) -> FitRequest:
    """The core's request for ``pod`` (its annotations and GPU count; its device affinity:
    required devices as a selector, preferred ones as the preference)."""
    affinity = pod.affinity
    return FitRequest(
        min_memory_bytes=pod.min_memory_bytes or 0,
        whole_device=pod.min_memory_bytes is None,
        vendor=pod.vendor,  # type: ignore[arg-type]  # FitRequest parses the name
        planned=frozenset(d for d in pod.planned_device.split(",") if d)
        if pod.planned_device else None,
        devices=max(pod.gpus, 1),
        workload=workload_key(pod.namespace, pod.workload) if pod.workload else None,
        selector=affinity.required if affinity is not None else None,
        prefer=affinity if affinity is not None and affinity.preferred else None,
    )


def judge_node(view: ClusterView, request: FitRequest, node: str, now: float,
               own: tuple[str, ...] | None = None) -> NodeVerdict:
    """The devices the request would get on ``node`` (best score first, ties by name), or why
    not (the core's ``choose`` with the node's links); ``own``: :func:`own_hold`."""
    return view.state.choose(node, request, now, without=own)


def own_hold(view: ClusterView, pod: PodRequest) -> tuple[str, ...] | None:
    """``(uid,)`` when the ledger already holds memory for this pending pod (a preemption hold,
    or a reservation kept after a bind whose answer was lost): that memory is the pod's own, so
    it is judged without it. None otherwise (the fast path), and for a workload's pod, whose
    request already leaves out what its workload holds."""
    if not pod.uid or pod.workload or pod.uid not in view.reservations:
        return None
    return (pod.uid,)


@dataclass(slots=True)
class FilterOutcome:
    passed: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]
    verdicts: dict[str, NodeVerdict]


def filter_nodes(view: ClusterView, pod: PodRequest, node_names: Iterable[str], now: float
                 ) -> FilterOutcome:
    """Split ``node_names`` into those that can hold ``pod`` and those that cannot (with why)."""
    outcome = FilterOutcome([], {}, {}, {})
    request = fit_request(pod)
    wanted = request.devices
    state = view.state
    known = state.nodes
    policy = state.policy
    linked = state.linked_nodes
    own = own_hold(view, pod)
    passed, verdicts = outcome.passed, outcome.verdicts
    for node in node_names:
        devices = known.get(node)
        if not devices:
            outcome.unresolvable[node] = NO_DEVICES
            continue
        if own is not None:
            verdict = judge_node(view, request, node, now, own)
        elif node in linked:  # every device judged there: the state keeps recent answers
            verdict = state.choose(node, request, now)
        else:
            verdict = choose(devices, request, now, policy)
        verdicts[node] = verdict
        if len(verdict.devices) >= wanted:
            passed.append(node)
        elif verdict.resolvable:
            outcome.failed[node] = message(verdict, wanted)
        else:
            outcome.unresolvable[node] = message(verdict, wanted)
    return outcome


def message(verdict: NodeVerdict, wanted: int) -> str:
    """``exo-gpu: no eligible GPU: dev: Reason (why); ...`` (at most 3 devices named)."""
    head = (f"exo-gpu: {len(verdict.devices)} of {wanted} requested GPUs eligible"
            if verdict.devices else "exo-gpu: no eligible GPU")
    shown = [r.describe() for r in verdict.rejections[:MAX_REASONS_PER_NODE]]
    more = len(verdict.rejections) - len(shown)
    tail = f"; and {more} more" if more > 0 else ""
    return f"{head}: {'; '.join(shown)}{tail}"
