"""Preemption for GPU pods, as a pure decision: where to make room for a pod, and whom to evict.

kube-scheduler cannot find GPU victims (docs/extender.md, "Preempt": its dry run runs the filter
plugins only, and ``gpu.exo.dev/gpu`` is ``ignoredByScheduler``), so exo-gpu decides itself, for
a pending pod that no node could take and that failed on some nodes only for memory held by
others (``judged.Judgement.resolvable``: nodes kube-scheduler's own filters had passed).
:func:`decide` answers with the candidates, best first; ``preemptor.Preemptor`` acts on them.

Rules, as kube-scheduler applies them to the resources it sees:

- a pod whose ``preemptionPolicy`` is ``Never`` evicts nobody;
- victims are GPU pods on the node with a strictly lower priority than the pod's, not already
  being deleted;
- pods being deleted are already leaving: a node is judged as if they held nothing. When that is
  enough, nobody is evicted there; if one of them has a lower priority than the pod (an eviction
  for it, ours or kube-scheduler's, still terminating; or a restart of ours in the middle of
  one), the device is held and the pod waits (kube-scheduler's ``PodEligibleToPreemptOthers``
  waits in the same case), otherwise the node is left to kube-scheduler;
- whether evicting a set of pods makes room is the core's decision, asked through ``fits``
  (``ClusterState.choose(..., without=...)``: the filter's rules, with the ledger's figure
  recomputed without them). Memory the exporter measures in use stays in use, and a workload's
  plan keeps holding what it planned even when its pod is evicted (the controller would start
  that pod again), so evicting such a pod frees nothing and it is never chosen;
- on a node, the fewest victims that make room; among as few, the lowest priorities (the highest
  victim priority, then their sum), then names. Every subset is tried, smallest first, up to
  ``MAX_EVALUATIONS`` core calls per node; past that, kube-scheduler's own method: every eligible
  pod evicted, then each given back, highest priority first, while the pod still fits;
- across nodes: fewest victims, then the lowest highest-victim priority, then the lowest sum, then
  the node's name. A node where even every eligible victim gone is not enough is no candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import combinations

__all__ = [
    "MAX_EVALUATIONS",
    "Candidate",
    "Fits",
    "PodFacts",
    "PreemptionDecision",
    "Verdict",
    "decide",
]

#: Core calls per node before the exhaustive search gives way to kube-scheduler's reprieve.
#: A device is shared by a few pods: 8 lower-priority pods on a node take 255 subsets at most.
MAX_EVALUATIONS = 256

#: The devices the pod would get on ``node`` were the pods ``without`` gone (by uid), or None when
#: that is not enough. ``ClusterState.choose`` for the pod's request, in the acting layer.
Fits = Callable[[str, Sequence[str]], Sequence[str] | None]


@dataclass(frozen=True, slots=True)
class PodFacts:
    """A pod holding GPU memory on a candidate node."""

    uid: str
    key: str  # namespace/name
    priority: int
    #: Being deleted (``metadata.deletionTimestamp``).
    leaving: bool = False


@dataclass(frozen=True, slots=True)
class Candidate:
    """Room for the pod on ``node``: its ``devices`` once ``victims`` (to evict, lowest priority
    first) and the pods already ``leaving`` are gone."""

    node: str
    devices: tuple[str, ...]
    victims: tuple[PodFacts, ...] = ()
    leaving: tuple[PodFacts, ...] = ()

    @property
    def without(self) -> tuple[str, ...]:
        """Every pod the choice was judged without."""
        return tuple(p.uid for p in self.leaving + self.victims)

    @property
    def rank(self) -> tuple[int, float, int, str]:
        priorities = [v.priority for v in self.victims]
        return (len(priorities), max(priorities, default=-math.inf), sum(priorities), self.node)


class Verdict(StrEnum):
    """What :func:`decide` concluded (an Event reason on the pod when nothing is done)."""

    PREEMPT = "Preempt"
    #: Room comes with pods already leaving: hold the device, evict no one more.
    WAIT = "WaitForVictims"
    POLICY_NEVER = "PreemptionPolicyNever"
    NOT_HELPFUL = "PreemptionNotHelpful"


@dataclass(frozen=True, slots=True)
class PreemptionDecision:
    verdict: Verdict
    #: Best first; the acting layer tries the next when a PodDisruptionBudget refuses one.
    candidates: tuple[Candidate, ...] = ()
    #: Why nothing is done, for people.
    message: str = ""


def decide(priority: int, preempts: bool, nodes: Mapping[str, Sequence[PodFacts]],
           fits: Fits) -> PreemptionDecision:
    """Where to make room for a pod of ``priority`` (``preempts``: its policy is not ``Never``).

    ``nodes``: the candidate nodes and the pods holding GPU memory on each.
    """
    if not preempts:
        return PreemptionDecision(Verdict.POLICY_NEVER,
                                  message="its preemptionPolicy is Never: it evicts no pod")
    if not nodes:
        return PreemptionDecision(Verdict.NOT_HELPFUL, message=(
            "no node where only GPU memory held by other pods stands in the way"))
    candidates = []
    for node in sorted(nodes):
        candidate = _on_node(node, priority, nodes[node], fits)
        if candidate is not None:
            candidates.append(candidate)
    if not candidates:
        return PreemptionDecision(Verdict.NOT_HELPFUL, message=(
            f"evicting every GPU pod of lower priority than {priority} would not free enough "
            f"memory on {_count(len(nodes), 'node')} ({', '.join(sorted(nodes)[:3])}"
            f"{', ...' if len(nodes) > 3 else ''})"))
    candidates.sort(key=lambda c: c.rank)
    verdict = Verdict.WAIT if not candidates[0].victims else Verdict.PREEMPT
    return PreemptionDecision(verdict, tuple(candidates))


def _on_node(node: str, priority: int, pods: Sequence[PodFacts], fits: Fits
             ) -> Candidate | None:
    leaving = tuple(sorted((p for p in pods if p.leaving), key=_order))
    gone = [p.uid for p in leaving]
    room = fits(node, gone)
    if room is not None:  # room already, or once the leaving pods are gone: evict no one
        if any(p.priority < priority for p in leaving):
            return Candidate(node, tuple(room), (), leaving)
        return None  # it fits, or will once they are gone: kube-scheduler places it
    eligible = sorted((p for p in pods if not p.leaving and p.priority < priority), key=_order)
    if not eligible or fits(node, gone + [p.uid for p in eligible]) is None:
        return None
    victims = _fewest(node, eligible, gone, fits)
    devices = fits(node, gone + [p.uid for p in victims])
    assert devices is not None  # _fewest returns a set that fits
    return Candidate(node, tuple(devices), victims, leaving)


def _fewest(node: str, eligible: Sequence[PodFacts], gone: list[str], fits: Fits
            ) -> tuple[PodFacts, ...]:
    """The fewest victims that make room, lowest priorities among as few (see the module
    docstring); ``eligible`` (sorted by :func:`_order`) all gone is known to make room."""
    budget = MAX_EVALUATIONS
    for size in range(1, len(eligible) + 1):
        subsets = math.comb(len(eligible), size)
        if subsets > budget:
            return _reprieve(node, eligible, gone, fits)
        budget -= subsets
        best: tuple[PodFacts, ...] | None = None
        for subset in combinations(eligible, size):
            if fits(node, gone + [p.uid for p in subset]) is not None and \
                    (best is None or _subset_rank(subset) < _subset_rank(best)):
                best = subset
        if best is not None:
            return best
    return tuple(eligible)  # not reached: all of them make room


def _reprieve(node: str, eligible: Sequence[PodFacts], gone: list[str], fits: Fits
              ) -> tuple[PodFacts, ...]:
    """kube-scheduler's ``SelectVictimsOnNode``: all evicted, then each given back, highest
    priority first, while the pod still fits."""
    victims = list(eligible)
    for pod in sorted(eligible, key=lambda p: (-p.priority, p.key)):
        rest = [v for v in victims if v is not pod]
        if fits(node, gone + [v.uid for v in rest]) is not None:
            victims = rest
    return tuple(victims)


def _order(pod: PodFacts) -> tuple[int, str]:
    return pod.priority, pod.key


def _subset_rank(subset: Sequence[PodFacts]) -> tuple[int, int, tuple[str, ...]]:
    return (max(p.priority for p in subset), sum(p.priority for p in subset),
            tuple(p.key for p in subset))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
