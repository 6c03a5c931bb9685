"""Plans of workloads placed as a whole: device sets, tasks together or apart, network domains.

``planning._full`` asks :func:`group` first. The decisions are the core's
(``exo.gpu.placement``: which domain, which devices apart, which sets); this module turns the
workload's spec into their inputs and their answers into a plan:

- ``spec.topology`` (and ``affinity.tasks`` ``keep: Together``, the same rule by another name):
  the tasks are packed into the smallest domain of the level that holds them all
  (``placement.choose_domains``); required: Unschedulable (``NoDomainFits``) when none does,
  preferred: the fewest domains. No node carrying the level's label at all is reported
  (``TopologyLabelMissing``: the key is unknown to the cluster), and waits when required;
- ``affinity.tasks`` ``keep: Apart``: one device (or set) per domain of the level
  (``placement.apart_devices``, ``placement.plan_sets``); required: Unschedulable
  (``TooFewDomains``) without enough domains, preferred: round after round;
- ``devicesPerTask`` above 1: one set per task (``placement.plan_sets``), each placement holding
  the set, its pairwise link scores and its domain; a set larger than any node is
  ``SetTooLarge``, too few sets ``NoDeviceSet``.

Otherwise :func:`group` returns a :class:`Grouping` that restricts the normal distribution (the
domain's nodes, the devices kept apart) and says where each placement lies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from exo.gpu import placement
from exo.gpu.fit import FitReason, FitRequest
from exo.gpu.placement import SetPlacement
from exo.gpu.telemetry_protocol import GPUDeviceInfo
from exo.gpu.topology import DomainLevel

from ..k8s.view import ClusterView
from ..k8s.workload import GPUWorkload, Placement, PlacementLinks, TopologySpec
from .planning import (
    PLACED,
    UNSCHEDULABLE,
    Plan,
    PlannedPlacement,
    _planned_from_status,
    fit_request,
    parse_task_text,
    task_text,
)
from .reasons import PlanMode, Reason

__all__ = ["Grouping", "group", "replan_sets"]


@dataclass(frozen=True)
class Grouping:
    """How the normal distribution is restricted (nothing, by default)."""

    #: The request to distribute with (None: the workload's own).
    request: FitRequest | None = None
    #: Tasks per device, when the grouping fixes it (tasks apart: 1).
    cap: int | None = None
    #: Said after the placement message.
    note: str = ""
    #: node -> the domain it lies in (``rack=r1``), for the placements.
    domains: Mapping[str, str] = field(default_factory=dict)

    def caps(self, own: int | None) -> int | None:
        return self.cap if self.cap is not None else own

    def placed(self, placements: Iterable[PlannedPlacement]) -> tuple[PlannedPlacement, ...]:
        """The placements, each with its domain."""
        return tuple(dataclasses.replace(p, domain=self.domains.get(p.node))
                     if self.domains else p for p in placements)


NO_GROUPING = Grouping()


def _packing(workload: GPUWorkload) -> TopologySpec | None:
    spec = workload.spec
    tasks = spec.affinity.tasks if spec.affinity is not None else None
    if spec.topology is not None:
        return spec.topology
    if tasks is not None and tasks.keep == "Together":
        return TopologySpec(pack_within=tasks.by, required=tasks.required)
    return None


def _field(workload: GPUWorkload) -> str:
    return "spec.topology.packWithin" if workload.spec.topology is not None \
        else "spec.affinity.tasks"


def _domain_text(view: ClusterView, level: DomainLevel, node: str) -> str:
    name = view.state.domain_of(node, level)
    return f"{level}={name}" if name is not None else f"node={node}"


def group(workload: GPUWorkload, view: ClusterView, tasks: Sequence[str],
          counted: bool) -> Plan | Grouping:
    """A plan (device sets, or a refusal), or how to restrict the normal distribution."""
    spec = workload.spec
    size = spec.set_size
    packing = _packing(workload)
    apart = spec.affinity.tasks if spec.affinity is not None and spec.affinity.tasks is not \
        None and spec.affinity.tasks.keep == "Apart" else None
    if size == 1 and packing is None and apart is None:
        return NO_GROUPING
    state = view.state
    now = view.manager.now()
    request = fit_request(workload)
    if size > 1:
        largest = max(((len(devices), node) for node, devices in state.nodes.items()),
                      default=(0, ""))
        if size > largest[0]:
            where = f": the largest, {largest[1]}, has {largest[0]}" if largest[1] else ""
            return _refuse(Reason.SET_TOO_LARGE,
                           f"spec.devicesPerTask {size} is more GPUDevices than any node "
                           f"has{where}")
    note, domains = "", {}
    nodes: frozenset[str] | None = None
    if packing is not None:
        level = DomainLevel(packing.pack_within)
        candidates = placement.domains(
            state, dataclasses.replace(request, devices=size), level, now,
            cap=spec.max_tasks_per_device,
            apart=DomainLevel(apart.by) if apart is not None and apart.required else None)
        key = state.domain_keys.label(level)
        if key is not None and not any(d.labelled for d in candidates):
            missing = (f"{_field(workload)}: {level}: no node carries the {level} label {key}")
            if packing.required:
                return _refuse(Reason.TOPOLOGY_LABEL_MISSING, missing)
            note = f"; {missing}, so the tasks were placed without it"
        else:
            choice = placement.choose_domains(candidates, len(tasks), packing.required)
            if not choice.chosen and packing.required:
                return _refuse(Reason.NO_DOMAIN_FITS,
                               f"{_field(workload)} {level} (required): {choice.message}")
            if choice.chosen:
                nodes = choice.nodes
                request = dataclasses.replace(request, nodes=nodes, domain=choice.describe())
                note = f"; {choice.message}"
                domains = {n: _domain_text(view, level, n) for n in nodes}
    if size > 1:
        return _plan_sets(workload, view, request, tasks, counted, nodes, note, domains)
    if apart is not None:
        level = DomainLevel(apart.by)
        chosen, available = placement.apart_devices(state, request, len(tasks), level, now)
        if available < len(tasks):
            if apart.required:
                return _refuse(Reason.TOO_FEW_DOMAINS,
                               f"spec.affinity.tasks: Apart by {level} needs {len(tasks)} "
                               f"{level} domain(s) with a device that fits; {available} have one")
            note += (f"; only {available} {level} domain(s) have a device that fits, so some "
                     f"tasks share one")
        else:
            request = dataclasses.replace(request, predicate=_only(frozenset(chosen)))
            note += f"; each task in its own {level}"
            if not domains:  # a packed domain says more than the node of each task
                nodes_of = {view.state.device(d) for d in chosen}
                domains = {d.node: _domain_text(view, level, d.node) for d in nodes_of
                           if d is not None}
            return Grouping(request, 1, note, domains)
    return Grouping(request, None, note, domains)


def _only(devices: frozenset[str]) -> Callable[[GPUDeviceInfo], bool]:
    """Only these devices take part (the devices chosen apart)."""

    def predicate(info: GPUDeviceInfo) -> bool:
        return info.device_id in devices

    return predicate


def _refuse(reason: Reason, message: str) -> Plan:
    return Plan(UNSCHEDULABLE, reason, message, mode=PlanMode.NONE)


def _plan_sets(workload: GPUWorkload, view: ClusterView, request: FitRequest,
               tasks: Sequence[str], counted: bool, nodes: frozenset[str] | None, note: str,
               domains: Mapping[str, str], keep: Sequence[PlannedPlacement] = ()) -> Plan:
    spec = workload.spec
    size = spec.set_size
    state = view.state
    apart = spec.affinity.tasks if spec.affinity is not None and spec.affinity.tasks is not \
        None and spec.affinity.tasks.keep == "Apart" else None
    level = DomainLevel(apart.by) if apart is not None else None
    sets = placement.plan_sets(state, dataclasses.replace(request, devices=size), len(tasks),
                               view.manager.now(), nodes, level,
                               apart.required if apart is not None else True)
    if len(sets) < len(tasks):
        return _no_sets(workload, view, request, len(tasks), len(sets), nodes, level)
    placements = [*keep, *(_set_placement(view, s, task, counted, domains)
                           for task, s in zip(tasks, sets, strict=True))]
    weakest = min((s.links.weakest for s in sets if s.links is not None), default=0)
    message = (f"{len(tasks)} task(s) on {len(sets)} set(s) of {size} devices (weakest pair "
               f"scores {weakest}){note}")
    return Plan(PLACED, Reason.PLACED, message, tuple(placements), PlanMode.FULL)


def _set_placement(view: ClusterView, chosen: SetPlacement, task: str, counted: bool,
                   domains: Mapping[str, str]) -> PlannedPlacement:
    weakest = min(chosen.devices, key=lambda d: (d.score, d.device_id))
    breakdown = weakest.breakdown
    return PlannedPlacement(
        device=chosen.names[0], node=chosen.node, vendor=weakest.vendor, tasks=(task,),
        tasks_text=task_text([task], counted), score=weakest.score,
        memory=breakdown.memory if breakdown is not None else 0.0,
        compute=breakdown.compute if breakdown is not None else 0.0,
        thermal=breakdown.thermal if breakdown is not None else 0.0,
        devices=chosen.names,
        links=PlacementLinks.from_score(chosen.links) if chosen.links is not None else None,
        domain=domains.get(chosen.node))


def _no_sets(workload: GPUWorkload, view: ClusterView, request: FitRequest, wanted: int,
             found: int, nodes: frozenset[str] | None, level: DomainLevel | None) -> Plan:
    size = workload.spec.set_size
    fitting = placement.fitting_by_node(view.state, request, view.manager.now(), nodes)
    most = max(((len(devices), node) for node, devices in fitting.items()), default=(0, ""))
    where = f" in {request.domain}" if request.domain else ""
    if level is not None and found and most[0] >= size:
        return _refuse(Reason.TOO_FEW_DOMAINS,
                       f"spec.affinity.tasks: Apart by {level}: {wanted} set(s) of {size} "
                       f"device(s) need {wanted} {level} domain(s) with room{where}; {found} "
                       f"have one")
    reasons: dict[FitReason, int] = {}
    now = view.manager.now()
    for node in fitting:
        for device in view.state.node_devices(node):
            for rejection in view.state.explain(device.device_id, request, now)[:1]:
                if rejection.reason is not None:
                    reasons[rejection.reason] = reasons.get(rejection.reason, 0) + 1
    summary = ", ".join(f"{n} {code}" for code, n in sorted(reasons.items()))
    best = f"; the most any node offers is {most[0]} ({most[1]})" if most[1] else ""
    return _refuse(Reason.NO_DEVICE_SET,
                   f"{wanted} task(s) of {size} device(s) each (spec.devicesPerTask) but only "
                   f"{found} set(s) fit{where}{best}" + (f" ({summary})" if summary else ""))


def replan_sets(workload: GPUWorkload, view: ClusterView, previous: Sequence[Placement],
                failed: Mapping[str, str], reasons: Mapping[str, FitReason | Reason],
                counted: bool) -> Plan | None:
    """Only the tasks of sets with a failed device get new sets; the others are kept (their
    pods are left alone). None when nothing is kept or no new sets fit (a full replan)."""
    kept = [p for p in previous if not any(d in failed for d in p.device_set())]
    if not kept:
        return None
    orphans = [t for p in previous if any(d in failed for d in p.device_set())
               for t in parse_task_text(p.tasks, counted)]
    taken = frozenset(d for p in kept for d in p.device_set())
    request = fit_request(workload, taken | frozenset(failed))
    packing = _packing(workload)
    nodes: frozenset[str] | None = None
    domains: dict[str, str] = {}
    if packing is not None and packing.required:
        level = DomainLevel(packing.pack_within)
        held = {view.state.domain_of(p.node, level) or p.node for p in kept}
        nodes = frozenset(n for n in view.state.nodes
                          if (view.state.domain_of(n, level) or n) in held)
        request = dataclasses.replace(request, nodes=nodes, domain=", ".join(sorted(held)))
        domains = {n: _domain_text(view, level, n) for n in nodes}
    plan = _plan_sets(workload, view, request, orphans, counted, nodes, "", domains,
                      keep=[_planned_from_status(p, view, counted) for p in kept])
    if not plan.placed:
        return None
    moved = ", ".join(f"{d} ({reasons[d]})" for d in sorted(failed))
    return Plan(PLACED, Reason.REPLANNED,
                f"{len(orphans)} task(s) of sets with failed devices {moved} got new sets; the "
                f"other sets were kept", plan.placements, PlanMode.PARTIAL, dict(failed),
                reasons=dict(reasons))

