"""The controller's reconcile step as a pure function: (workload, its pods, device state) ->
:class:`Decision` (pods to create and delete, the status to write, the Events to post, and what
the workload's planned tasks hold in the ledger).

``exo.gpu.controller.controller.Controller`` gathers the inputs, calls :func:`decide` under the
view's lock, records the decision's holds in the same critical section (so the next plan, and
the extender, see them at once), and then performs the rest against the API. Tests drive
:func:`decide` with tables (``tests/test_controller_reconcile.py``).

What is decided here, in order:

1. An invalid spec: phase ``Invalid`` with the field and the reason, nothing else.
2. A terminal phase (``Succeeded``, ``Failed``) of the current generation is final: nothing.
3. Otherwise plan (``planning.plan``, keeping the previous placements of this generation when
   their devices are healthy). With a template, one pod per placement: pods no longer wanted
   are deleted (unless already being deleted), missing ones created (deterministic names make
   this idempotent), and the phase rolls up from the pods' phases.
4. Holds: with a template, each placement whose pod has not finished holds what its pod will
   ask (``minMemoryBytes``, or the whole device), until the pod binds (its reservation takes
   over), the plan changes, or the workload ends. Without a template no pod will ever come, so
   nothing is held.
5. Status: conditions ``Placed`` and (with a template) ``PodsReady``; ``planRevision`` bumped
   when the placements change. Written only when it differs from the last one.
6. Events, posted only with a status write, on transitions: a new plan (``Placed`` or
   ``Replanned`` with the summary), the reason of a new Unschedulable/Invalid state, and phase
   changes to Running, Succeeded or Failed.

This is where the rules of replanning, retries and staleness of a workload belong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..k8s.models import Condition, set_condition
from ..k8s.view import ClusterView
from ..k8s.workload import GPUWorkloadStatus
from . import planning
from .planning import Plan, PlannedPlacement
from .pods import build_pod
from .reasons import ConditionType, EventType, PodPhase, Reason, WorkloadPhase

__all__ = ["Decision", "Event", "PodInfo", "decide"]

#: Phases whose placements are followed from status on the next reconcile.
_FOLLOWED = (WorkloadPhase.PLACED, WorkloadPhase.RUNNING)
_PODS_READY_REASON = {WorkloadPhase.RUNNING: Reason.PODS_RUNNING,
                      WorkloadPhase.SUCCEEDED: Reason.PODS_SUCCEEDED,
                      WorkloadPhase.FAILED: Reason.POD_FAILED}


@dataclass(frozen=True)
class PodInfo:
    """What the controller knows of one of a workload's pods."""

    uid: str
    phase: str | None
    deleting: bool


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """What to do for one workload. ``status`` None: nothing to write; ``events`` go out only
    after the status is written."""

    phase: WorkloadPhase | None
    status: dict[str, Any] | None = None
    create: tuple[tuple[str, dict[str, Any]], ...] = ()
    delete: tuple[tuple[str, str], ...] = ()  # (pod name, uid)
    events: tuple[Event, ...] = ()
    #: device -> bytes the workload's planned tasks hold (empty: nothing).
    holds: Mapping[str, int] = field(default_factory=dict)
    plan: Plan | None = None


def decide(body: Mapping[str, Any], current: Mapping[str, Any],
           pods: Mapping[str, PodInfo], view: ClusterView, now: datetime) -> Decision:
    """The decision for the workload ``body`` (call under ``view.lock``).

    ``current``: the status as last written (by this controller, else as read); ``pods``: the
    workload's pods by name; ``now``: the time written into conditions.
    """
    metadata = body["metadata"]
    name = metadata["name"]
    generation = metadata.get("generation")
    try:
        status = GPUWorkloadStatus.model_validate(current)
    except ValidationError:
        status = GPUWorkloadStatus()
    workload, invalid = planning.parse_workload(body)
    if workload is None:
        assert invalid is not None
        return _decision(body, current, status, invalid, [], invalid.phase, invalid.message,
                         generation, now, template=False)
    same_generation = status.observed_generation == generation
    if same_generation and status.phase is not None and WorkloadPhase(status.phase).terminal:
        return Decision(phase=WorkloadPhase(status.phase))
    previous = status.placements if same_generation and status.phase in _FOLLOWED else None
    plan = planning.plan(workload, view, previous)
    placements = list(plan.placements)
    phase, message = plan.phase, plan.message
    template = workload.spec.template is not None
    create: list[tuple[str, dict[str, Any]]] = []
    delete: list[tuple[str, str]] = []
    holding: list[PlannedPlacement] = []
    if template:
        desired = {planning.pod_name(name, p.device, p.tasks_text): p for p in placements} \
            if plan.placed else {}
        for pod, info in pods.items():
            if pod not in desired and not info.deleting:
                delete.append((pod, info.uid))
        for pod, placement in desired.items():
            if pod not in pods:
                create.append((pod, build_pod(body, workload, placement, pod)))
        if plan.placed:
            live = {p: pods[p] for p in desired if p in pods and not pods[p].deleting}
            phase, pods_message = planning.rollup(
                live[p].phase if p in live else None for p in desired)
            message = f"{message}; {pods_message}"
            if not phase.terminal:
                holding = [placement for pod, placement in desired.items()
                           if pod not in live or not _done(live[pod].phase)]
    decision = _decision(body, current, status, plan, placements, phase, message, generation,
                         now, template)
    return Decision(phase=decision.phase, status=decision.status, create=tuple(create),
                    delete=tuple(delete), events=decision.events,
                    holds=planning.plan_holds(workload, view, holding), plan=plan)


def _done(phase: str | None) -> bool:
    return phase in (PodPhase.SUCCEEDED, PodPhase.FAILED)


def _decision(body: Mapping[str, Any], current: Mapping[str, Any], status: GPUWorkloadStatus,
              plan: Plan, placements: list[PlannedPlacement], phase: WorkloadPhase,
              message: str, generation: int | None, now: datetime, template: bool) -> Decision:
    """The status (None when unchanged) and the Events that go with writing it."""
    name = body["metadata"]["name"]
    conditions: list[Condition] = list(status.conditions)
    conditions = set_condition(
        conditions, ConditionType.PLACED, "True" if plan.placed else "False", plan.reason,
        plan.message, now, generation)
    if template and plan.placed:
        ready = phase in (WorkloadPhase.RUNNING, WorkloadPhase.SUCCEEDED)
        conditions = set_condition(conditions, ConditionType.PODS_READY,
                                   "True" if ready else "False",
                                   _PODS_READY_REASON.get(phase, Reason.PODS_PENDING), message,
                                   now, generation)
    else:
        conditions = [c for c in conditions if c.type != ConditionType.PODS_READY]
    old_keys = [(p.device, p.tasks) for p in status.placements]
    new_keys = [(p.device, p.tasks_text) for p in placements]
    replanned = new_keys != old_keys
    revision = (status.plan_revision or 0) + (1 if replanned else 0)
    new = GPUWorkloadStatus(
        phase=phase,
        placements=[p.to_status(planning.pod_name(name, p.device, p.tasks_text)
                                if template else None) for p in placements],
        task_count=sum(len(p.tasks) for p in placements),
        device_count=len(placements), message=message[:32768], conditions=conditions,
        observed_generation=generation, plan_revision=revision,
    ).to_api()
    if new == dict(current):
        return Decision(phase=phase)
    return Decision(phase=phase, status=new,
                    events=_events(status, plan, phase, message, replanned))


def _events(old: GPUWorkloadStatus, plan: Plan, phase: WorkloadPhase, message: str,
            replanned: bool) -> tuple[Event, ...]:
    events = []
    if plan.placed and replanned:
        why = ""
        if plan.failed_devices:
            why = "devices failed: " + ", ".join(
                f"{d} ({w})" for d, w in sorted(plan.failed_devices.items())) + "; "
        reason = Reason.REPLANNED if plan.failed_devices else Reason.PLACED
        events.append(Event(EventType.NORMAL, reason,
                            f"{why}{plan.mode} plan: {plan.summary()}"))
    elif not plan.placed and (old.phase != phase or old.message != message):
        events.append(Event(EventType.WARNING, plan.reason, plan.message))
    if plan.placed and old.phase != phase and phase in (
            WorkloadPhase.RUNNING, WorkloadPhase.SUCCEEDED, WorkloadPhase.FAILED):
        events.append(Event(EventType.WARNING if phase is WorkloadPhase.FAILED
                            else EventType.NORMAL, phase, message))
    return tuple(events)
