"""exo-gpu's preemption loop: acts on ``preemption.decide`` for pending GPU pods.

kube-scheduler's own preemption never finds GPU victims (docs/extender.md, "Preemption"), so the
extender preempts itself. Every ``PREEMPT_INTERVAL_S`` it takes the pods its filter judged
unschedulable since the last round (``judged.Judged.unschedulable``: no node could take them, and
on some only memory held by others stood in the way), highest priority first, and for each:

1. reads the pod from the API (still pending, same uid, not being deleted; otherwise nothing);
2. lists the pods on each candidate node (their priority and whether they are being deleted)
   and asks :func:`preemption.decide`, whose ``fits`` is the core's ``ClusterState.choose`` with
   the ledger recomputed without the victims (and without the pod's own hold);
3. ``Preempt``: for the best candidate, every eviction is first tried as a dry run (the Eviction
   API with ``dryRun``), so a PodDisruptionBudget that refuses one victim refuses the candidate
   before anything is evicted: an Event ``PreemptionBlocked`` on the pod names the victim and the
   budget's answer, and the next candidate is tried (at most ``MAX_CANDIDATES``). A candidate
   whose dry runs all pass gets, in this order: a hold in the ledger for the pod on the devices
   ``decide`` chose (:class:`~exo.gpu.k8s.view.Reservation` with ``bound=False``: other pods are
   refused that memory, the pod's own filter and bind do not count it, ``filter.own_hold``), the
   pod's ``status.nominatedNodeName``, the evictions (each with the victim's uid as a
   precondition; never a plain delete: a budget that refuses now, after its dry run passed, is an
   Event, and the victim stays), an Event ``Preempted`` on each victim and ``Preempting`` on the
   pod. ``WaitForVictims`` (room comes with lower-priority pods already leaving): the hold only.
   ``PreemptionNotHelpful`` and ``PreemptionPolicyNever``: an Event on the pod, nothing else;
4. watches its holds: once the victims are gone from the ledger it sets ``nominatedNodeName``
   again (a pod update: kube-scheduler retries the pod at once, rather than at its next periodic
   retry, and its filter now sees the room); a hold whose pod is still pending ``HOLD_TTL_S``
   after its victims left is released. A pod that binds (anywhere) replaces its hold with its
   reservation; a pod deleted releases it (the informer).

Pods of a GPUWorkload are not preempted for: their devices are the controller's plan.

Faults:

- API server gone: a round whose reads fail does nothing and the pod is tried again next round;
  an eviction that fails stops the candidate (what was evicted stays evicted, the hold stays and
  expires as above). Nothing is deleted outright, ever.
- Restart mid-way: holds and records are in memory and lost; the victims already evicted are
  being deleted, so the next filter of the pod judges them leaving and ``decide`` answers
  ``WaitForVictims``: the room is held again and nobody else is evicted.
- Two copies: in ``exo-gpu controller`` the extender, and with it this loop, runs only in the
  leader (``ready``). Two ``exo-gpu extender`` processes both act: the second to decide sees
  the first one's victims leaving and waits (``WaitForVictims``); in the short window before it
  sees them, it may pick other victims. Each holds the room in its own ledger only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from exo.gpu.k8s.aioclient import ApiError, AsyncKubeClient
from exo.gpu.k8s.view import ClusterView, Reservation

from .filter import fit_request
from .judged import Judged, Judgement
from .preemption import Candidate, PodFacts, PreemptionDecision, Verdict, decide
from .wire import PodRequest

__all__ = ["HOLD_TTL_S", "MAX_CANDIDATES", "PREEMPT_INTERVAL_S", "Hold", "Preemptor"]

log = logging.getLogger(__name__)

#: Seconds between rounds.
PREEMPT_INTERVAL_S = 2.0
#: Seconds the room stays held for a pod still pending after its victims are gone.
HOLD_TTL_S = 120.0
#: Candidates tried per pod when PodDisruptionBudgets refuse the best ones.
MAX_CANDIDATES = 3
#: Pods preempted for per round (the highest priorities first).
MAX_PODS_PER_ROUND = 10
EVENT_COMPONENT = "exo-gpu-extender"


@dataclass(slots=True)
class Hold:
    """Room held for a preemptor: its node and devices, whom it waits for."""

    pod: PodRequest
    candidate: Candidate
    #: When the victims were all gone (``time.monotonic``), None while some remain.
    victims_gone_at: float | None = None
    victims: frozenset[str] = field(default_factory=frozenset)


class Preemptor:
    """The loop of the module docstring; one per extender, on the server's event loop."""

    def __init__(self, view: ClusterView, judged: Judged, client: AsyncKubeClient,
                 ready: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.view, self.judged, self.client = view, judged, client
        self.ready, self.clock, self.monotonic = ready, clock, monotonic
        #: The judgement time last acted on, per pod uid (one attempt per filter round).
        self._acted: dict[str, float] = {}
        self.holds: dict[str, Hold] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until ``stop``; a round that fails is logged and the next one runs."""
        while not stop.is_set():
            if self.ready():
                try:
                    await self.round()
                except Exception:  # one bad round never ends preemption
                    log.exception("preemption round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PREEMPT_INTERVAL_S)

    async def round(self) -> None:
        await self._tend_holds()
        pending = [j for j in self.judged.unschedulable()
                   if self._acted.get(j.pod.uid) != j.at and not j.pod.workload]
        pending.sort(key=lambda j: (-j.pod.priority, j.pod.key))
        for judgement in pending[:MAX_PODS_PER_ROUND]:
            try:
                await self.preempt_for(judgement)
            except ApiError as error:  # the API is away: try again next round
                log.warning("preemption for %s: %s", judgement.pod.key, error)
                continue
            self._acted[judgement.pod.uid] = judgement.at
        live = {j.pod.uid for j in self.judged.unschedulable()}
        for uid in [u for u in self._acted if u not in live]:
            del self._acted[uid]

    # ------------------------------------------------------------------ one pod
    async def preempt_for(self, judgement: Judgement) -> PreemptionDecision | None:
        """Decide for one judged pod and act (module docstring); None when the pod is no longer
        pending."""
        pod = judgement.pod
        body = await self._pending(pod)
        if body is None:
            return None
        facts = await self._facts(pod, judgement.resolvable)
        decision = decide(pod.priority, pod.preempts, facts, self._fits(pod))
        if decision.verdict in (Verdict.NOT_HELPFUL, Verdict.POLICY_NEVER):
            await self._event(body, "Normal", decision.verdict.value,
                              f"exo-gpu preempts no pod for it: {decision.message}")
            return decision
        if decision.verdict is Verdict.WAIT:
            best = decision.candidates[0]
            self._hold(pod, best)
            await self._event(body, "Normal", decision.verdict.value, (
                f"GPU memory on {best.node} ({', '.join(best.devices)}) held for it while "
                f"{_keys(best.leaving)} leave"))
            return decision
        for candidate in decision.candidates[:MAX_CANDIDATES]:
            refusal = await self._dry_run(candidate.victims)
            if refusal is not None:
                await self._event(body, "Warning", "PreemptionBlocked", (
                    f"not preempting on {candidate.node}: {refusal}"))
                continue
            await self._preempt(pod, body, candidate)
            return decision
        return decision

    async def _pending(self, pod: PodRequest) -> dict[str, Any] | None:
        try:
            body = dict(await self.client.request("GET", _pod_path(pod.namespace, pod.name)))
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        metadata, spec = body.get("metadata") or {}, body.get("spec") or {}
        if metadata.get("uid") != pod.uid or spec.get("nodeName") or \
                metadata.get("deletionTimestamp"):
            return None
        return body

    async def _facts(self, pod: PodRequest, nodes: Iterable[str]
                     ) -> dict[str, list[PodFacts]]:
        """The pods holding GPU memory on each node, as the API describes them now."""
        facts: dict[str, list[PodFacts]] = {}
        for node in nodes:
            with self.view.lock:
                holders = {r.pod_uid for d in self.view.state.nodes.get(node, ())
                           for r in self.view.reservations_on(d.name)} - {pod.uid}
            if not holders:
                facts[node] = []
                continue
            listing = await self.client.request(
                "GET", "/api/v1/pods", params={"fieldSelector": f"spec.nodeName={node}"})
            facts[node] = [f for item in listing.get("items") or []
                           if (f := _pod_facts(item)) is not None and f.uid in holders]
        return facts

    def _fits(self, pod: PodRequest) -> Callable[[str, Sequence[str]], Sequence[str] | None]:
        request = fit_request(pod)
        now = self.clock()

        def fits(node: str, without: Sequence[str]) -> Sequence[str] | None:
            with self.view.lock:
                choice = self.view.state.choose(node, request, now,
                                                without=[pod.uid, *without])
            if len(choice.devices) < request.devices:
                return None
            return [d.name for d in choice.devices[:request.devices]]

        return fits

    async def _dry_run(self, victims: Sequence[PodFacts]) -> str | None:
        """Why a PodDisruptionBudget (or the API) refuses one of the evictions; None: none."""
        for victim in victims:
            try:
                await self._evict(victim, dry_run=True)
            except ApiError as error:
                if error.status == 404:
                    continue  # gone already
                return f"evicting {victim.key} would be refused: {error.message or error}"
        return None

    async def _preempt(self, pod: PodRequest, body: Mapping[str, Any],
                       candidate: Candidate) -> None:
        self._hold(pod, candidate)
        await self._nominate(pod, candidate.node)
        evicted: list[str] = []
        for victim in candidate.victims:
            try:
                await self._evict(victim, dry_run=False)
            except ApiError as error:
                if error.status == 404:
                    continue
                await self._event(body, "Warning", "PreemptionBlocked", (
                    f"evicting {victim.key} on {candidate.node} was refused: "
                    f"{error.message or error}; the pods evicted so far stay evicted"))
                if error.retriable and error.status != 429:
                    raise
                return
            evicted.append(victim.key)
            await self._event(_victim_ref(victim), "Normal", "Preempted", (
                f"evicted by exo-gpu for {pod.key} (priority {pod.priority}) to free GPU memory "
                f"on {candidate.node}"))
        log.info("preempting for %s on %s: evicted %s", pod.key, candidate.node,
                 ", ".join(evicted))
        await self._event(body, "Normal", "Preempting", (
            f"evicting {_keys(candidate.victims)} on {candidate.node} frees "
            f"{', '.join(candidate.devices)}; held for it"))

    # ------------------------------------------------------------------ holds
    def _hold(self, pod: PodRequest, candidate: Candidate) -> None:
        request = fit_request(pod)
        with self.view.lock:
            held = self.view.reservations.get(pod.uid)
            if held is not None and held.bound:
                return  # bound meanwhile
            totals = [d.total for name in candidate.devices
                      if (d := self.view.state.device(name)) is not None]
            if len(totals) < len(candidate.devices):
                return  # a device left meanwhile
            self.view.commit(Reservation(
                pod_uid=pod.uid, pod_key=pod.key, node=candidate.node,
                devices=tuple(candidate.devices),
                bytes_per_device=max(request.reserves(t) for t in totals), bound=False))
        self.holds[pod.uid] = Hold(pod, candidate,
                                   victims=frozenset(candidate.without))

    async def _tend_holds(self) -> None:
        now = self.monotonic()
        for uid, hold in list(self.holds.items()):
            with self.view.lock:
                held = self.view.reservations.get(uid)
                remaining = [v for v in hold.victims if v in self.view.reservations]
            if held is None or held.bound:
                del self.holds[uid]  # bound, or gone
                continue
            if remaining:
                continue
            if hold.victims_gone_at is None:
                hold.victims_gone_at = now
                try:  # kube-scheduler retries the pod now, and its filter sees the room
                    await self._nominate(hold.pod, hold.candidate.node)
                except ApiError as error:
                    log.warning("nominating %s: %s", hold.pod.key, error)
            elif now - hold.victims_gone_at > HOLD_TTL_S:
                log.info("%s still pending %.0f s after its victims left: hold released",
                         hold.pod.key, HOLD_TTL_S)
                self.view.release(uid)
                del self.holds[uid]

    # ------------------------------------------------------------------ API calls
    async def _evict(self, victim: PodFacts, dry_run: bool) -> None:
        namespace, name = victim.key.split("/", 1)
        options: dict[str, Any] = {"preconditions": {"uid": victim.uid}}
        if dry_run:
            options["dryRun"] = ["All"]
        await self.client.request("POST", _pod_path(namespace, name) + "/eviction", {
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace}, "deleteOptions": options})

    async def _nominate(self, pod: PodRequest, node: str) -> None:
        await self.client.request("PATCH", _pod_path(pod.namespace, pod.name) + "/status",
                                  {"status": {"nominatedNodeName": node}},
                                  content_type="application/merge-patch+json")

    async def _event(self, involved: Mapping[str, Any], type_: str, reason: str,
                     message: str) -> None:
        """A core/v1 Event (best effort: one that cannot be written is logged)."""
        metadata = involved.get("metadata") or {}
        namespace = metadata.get("namespace") or "default"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{str(metadata.get('name', 'pod'))[:200]}."},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": metadata.get("name"),
                               "namespace": namespace, "uid": metadata.get("uid")},
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": EVENT_COMPONENT}, "reportingComponent": EVENT_COMPONENT}
        try:
            await self.client.request(
                "POST", f"/api/v1/namespaces/{quote(namespace, safe='')}/events", event)
        except ApiError as error:
            log.warning("event %s on %s not written: %s", reason, metadata.get("name"), error)


def _pod_facts(item: Mapping[str, Any]) -> PodFacts | None:
    metadata, spec = item.get("metadata") or {}, item.get("spec") or {}
    status = item.get("status") or {}
    uid, priority = metadata.get("uid"), spec.get("priority", 0)
    if not uid or status.get("phase") in ("Succeeded", "Failed"):
        return None
    if isinstance(priority, bool) or not isinstance(priority, int):
        priority = 0  # the API server always sets it; a value it did not set is no priority
    return PodFacts(uid=uid, key=f"{metadata.get('namespace')}/{metadata.get('name')}",
                    priority=priority, leaving=metadata.get("deletionTimestamp") is not None)


def _victim_ref(victim: PodFacts) -> dict[str, Any]:
    namespace, name = victim.key.split("/", 1)
    return {"metadata": {"namespace": namespace, "name": name, "uid": victim.uid}}


def _pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"


def _keys(pods: Sequence[PodFacts]) -> str:
    return ", ".join(p.key for p in pods)

