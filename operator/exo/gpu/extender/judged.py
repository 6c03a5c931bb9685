"""What the filter judged, per pod: ``/bind`` binds only those pods; preemption starts from them.

kube-scheduler filters a pod before it binds it. The extender remembers, by pod uid, what its
filter saw (:class:`Judged`: the pod's request, when, and the nodes where only memory held by
others stood in the way), bounded in number (``JUDGED_SIZE``) and age (``JUDGED_TTL_S``).

- ``/bind`` asks :func:`bind_refusal`: it binds a pod only when the pod is scheduled by the exo-gpu
  scheduler (``--scheduler-name``, the chart's ``controller.extender.schedulerNames``), asks for
  ``gpu.exo.dev/gpu``, is not bound yet, and was judged by this extender's filter (the filter's
  copy of the pod is the one checked; a pod the extender never filtered is read from the API for
  the reason only). Anything else is refused with the reason. A pod filtered by the process that
  ran before a restart is refused too: kube-scheduler filters a pod again before it binds it
  again, so a refused bind costs one retry, and kube-scheduler's other filters (taints,
  affinity), which the extender cannot judge again, are never bypassed. The device choice itself
  is judged again at bind in every case (``bind.reserve``). Once bound, the judgement is
  forgotten: a second bind of the pod is refused.
- exo-gpu's preemption (``preemptor.Preemptor``) starts from the pods that no node could take and
  that failed on some nodes only for memory held by others (:attr:`Judgement.resolvable`).
  kube-scheduler sends the extender only the nodes that passed its own filters (CPU, memory,
  taints, affinity), so those are exactly the nodes where evicting GPU pods could make room.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from itertools import islice

from .wire import GPU_RESOURCE, PodRequest

__all__ = [
    "JUDGED_SIZE",
    "JUDGED_TTL_S",
    "MAX_PREEMPTION_NODES",
    "SCHEDULER_NAME",
    "Judged",
    "Judgement",
    "bind_refusal",
]

#: The exo-gpu scheduler's name by default (the chart's ``scheduler.schedulerName``).
SCHEDULER_NAME = "exo-gpu-scheduler"
#: Pods remembered. kube-scheduler binds a pod within its binding cycle (milliseconds to seconds
#: after the filter); 10,000 covers that many pods filtered in between. About 0.5 KiB each.
JUDGED_SIZE = 10_000
#: Seconds a judgement is kept: kube-scheduler retries an unschedulable pod at least every
#: 5 minutes (``podMaxInUnschedulablePodsDuration``), so a pending pod's record stays fresh.
JUDGED_TTL_S = 600.0
#: Nodes remembered per pod for preemption: kube-scheduler's own preemption looks at no more
#: than 100 candidate nodes (``minCandidateNodesAbsolute``) or 10 % of the cluster.
MAX_PREEMPTION_NODES = 100


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the filter saw of one pod."""

    pod: PodRequest
    #: When (``Judged``'s clock, monotonic).
    at: float
    #: No node could take the pod, and on these only memory held by others stood in the way
    #: (``exo.gpu.fit.FitReason.resolvable``); empty when a node passed or none was resolvable.
    resolvable: tuple[str, ...] = ()


class Judged:
    """Recent judgements by pod uid (see the module docstring). Not thread-safe: used from the
    server's event loop."""

    def __init__(self, size: int = JUDGED_SIZE, ttl_s: float = JUDGED_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1 or ttl_s <= 0:
            raise ValueError(f"size and ttl_s must be positive, got {size}, {ttl_s}")
        self.size, self.ttl_s, self.clock = size, ttl_s, clock
        self._pods: OrderedDict[str, Judgement] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pods)

    def remember(self, pod: PodRequest, passed: Collection[str],
                 resolvable: Iterable[str]) -> None:
        """Record a filter's answer for ``pod``: the nodes that passed, and those that failed
        only for memory held by others."""
        key = pod.uid or pod.key
        nodes: tuple[str, ...] = ()
        if not passed:
            nodes = tuple(islice(resolvable, MAX_PREEMPTION_NODES))
        self._pods[key] = Judgement(pod, self.clock(), nodes)
        self._pods.move_to_end(key)
        while len(self._pods) > self.size:
            self._pods.popitem(last=False)

    def get(self, uid: str) -> Judgement | None:
        """The pod's judgement, if it is recent enough."""
        judgement = self._pods.get(uid)
        if judgement is None or self.clock() - judgement.at > self.ttl_s:
            return None
        return judgement

    def forget(self, uid: str) -> None:
        self._pods.pop(uid, None)

    def unschedulable(self) -> list[Judgement]:
        """Recent judgements of pods that only preemption could place, newest first; expired
        ones are dropped."""
        now = self.clock()
        while self._pods:
            oldest = next(iter(self._pods.values()))
            if now - oldest.at <= self.ttl_s:
                break
            self._pods.popitem(last=False)
        return [j for j in reversed(self._pods.values()) if j.resolvable]


def bind_refusal(pod: PodRequest, schedulers: Collection[str], judged: bool) -> str | None:
    """Why ``/bind`` must not bind ``pod`` (None: it may, its device judged again at bind);
    ``judged``: this extender's filter saw the pod (see the module docstring)."""
    if pod.scheduler_name not in schedulers:
        return (f"pod {pod.key} is scheduled by {pod.scheduler_name!r}, not by "
                f"{', '.join(sorted(schedulers))} (--scheduler-name): exo-gpu binds only the "
                "pods of its scheduler")
    if pod.gpus < 1:
        return (f"pod {pod.key} asks for no {GPU_RESOURCE}: exo-gpu binds only the GPU pods "
                "it filtered")
    if pod.node_name:
        return f"pod {pod.key} is already bound to {pod.node_name}"
    if not judged:
        return (f"pod {pod.key} was never filtered by this extender: it binds only pods it "
                "judged in /filter (kube-scheduler filters a pod again before it binds it)")
    return None
