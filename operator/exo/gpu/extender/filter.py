"""Filter: keep the nodes holding enough devices that are eligible for the pod.

A device is eligible for a pod when it is not blocked (cordoned, not Ready, no metrics, too hot),
not stale, of the requested vendor, the pod's planned device if it has one (pods of a GPUWorkload
are held to their plan), and has the memory the pod asks for: ``gpu.exo.dev/min-memory`` of free
memory after reservations and measured use, or, without that annotation, the whole device (no
other pod holds any of it).

Nodes fail with a reason a user can act on. Reasons that preemption cannot cure (no devices,
vendor, health, temperature, staleness, a device too small whatever happens) go to
``FailedAndUnresolvableNodes``; memory held by other pods goes to ``FailedNodes``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from exo.gpu.k8s.view import ClusterView, Slot

from .wire import PodRequest

_GIB = 1024**3
#: How many devices a failure message names before it summarizes the rest.
MAX_REASONS_PER_NODE = 3


@dataclass(slots=True)
class NodeVerdict:
    """The pod's fit on one node: the devices it would get (best first), or why not.

    ``eligible`` holds at most the number of GPUs the pod asks for: the search stops there.
    ``reasons`` is filled only when the node cannot hold the pod.
    """

    eligible: list[Slot] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    resolvable: bool = False


def device_rejection(slot: Slot, pod: PodRequest, stale_before: float
                     ) -> tuple[str, bool] | None:
    """Why ``slot`` cannot take ``pod`` (message, resolvable by preemption), or None if it can.

    ``stale_before``: samples older than this are stale (``ClusterView.stale_before(now)``).
    """
    if pod.planned_device is not None and slot.name not in pod.planned_device.split(","):
        return f"{slot.name}: NotPlanned (the workload planned {pod.planned_device})", False
    if slot.blocked is not None:
        return f"{slot.name}: {slot.blocked}", False
    if slot.sample_time is not None and slot.sample_time < stale_before:
        since = time.strftime("%H:%M:%S", time.gmtime(slot.sample_time))
        return f"{slot.name}: Stale (no metrics since {since} UTC)", False
    if pod.vendor is not None and slot.vendor != pod.vendor:
        return f"{slot.name}: VendorMismatch ({slot.vendor}, pod wants {pod.vendor})", False
    need = pod.min_memory_bytes
    if need is None:
        if slot.reserved > 0:
            return (f"{slot.name}: InUse ({slot.reserved / _GIB:.1f} GiB reserved by other pods; "
                    "the pod asks for the whole device)"), True
        return None
    if need > slot.total:
        return (f"{slot.name}: TooSmall ({slot.total / _GIB:.1f} GiB in all, "
                f"{need / _GIB:.1f} GiB requested)"), False
    if slot.free < need:
        return (f"{slot.name}: InsufficientMemory ({slot.free / _GIB:.1f} GiB free, "
                f"{need / _GIB:.1f} GiB requested)"), True
    return None


def judge_node(view: ClusterView, pod: PodRequest, node: str, stale_before: float
               ) -> NodeVerdict:
    """The devices ``pod`` would get on ``node`` (best score first, ties by name), or reasons.

    Slots are kept in score order, so a node that can hold the pod is usually settled by its
    first device; only a node that cannot is scanned in full, to say why.
    """
    verdict = NodeVerdict()
    ordered = view.ordered_by_node.get(node)
    if not ordered:
        verdict.reasons.append("no GPU devices known to exo-gpu on this node")
        return verdict
    wanted = pod.gpus if pod.gpus > 1 else 1
    eligible = verdict.eligible
    # Fast path, inlined: the common pod (vendor-agnostic, sized, unplanned) on a healthy node.
    need, vendor, planned = pod.min_memory_bytes, pod.vendor, pod.planned_device
    simple = need is not None and vendor is None and planned is None
    for slot in ordered:
        fits = (slot.free >= need and slot.blocked is None
                and (slot.sample_time is None or slot.sample_time >= stale_before)
                ) if simple and need is not None else (
            device_rejection(slot, pod, stale_before) is None)
        if fits:
            eligible.append(slot)
        if len(eligible) == wanted:
            return verdict
    for slot in ordered:  # cannot hold the pod: collect every reason
        rejection = device_rejection(slot, pod, stale_before)
        if rejection is not None:
            verdict.reasons.append(rejection[0])
            verdict.resolvable = verdict.resolvable or rejection[1]
    return verdict


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
    wanted = max(pod.gpus, 1)
    stale_before = view.stale_before(now)
    for node in node_names:
        verdict = judge_node(view, pod, node, stale_before)
        outcome.verdicts[node] = verdict
        if len(verdict.eligible) >= wanted:
            outcome.passed.append(node)
            continue
        message = _message(verdict, wanted)
        if verdict.resolvable:
            outcome.failed[node] = message
        else:
            outcome.unresolvable[node] = message
    return outcome


def _message(verdict: NodeVerdict, wanted: int) -> str:
    head = (f"exo-gpu: {len(verdict.eligible)} of {wanted} requested GPUs eligible"
            if verdict.eligible else "exo-gpu: no eligible GPU")
    shown = verdict.reasons[:MAX_REASONS_PER_NODE]
    more = len(verdict.reasons) - len(shown)
    tail = f"; and {more} more" if more > 0 else ""
    return f"{head}: {'; '.join(shown)}{tail}"
