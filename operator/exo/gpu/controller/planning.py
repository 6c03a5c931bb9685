"""Placement decisions for a ``GPUWorkload``, as plain data (no I/O, no kopf, no API client).

The controller's handlers call :func:`plan` with the workload and the shared ``ClusterView`` and
write what comes back; ``exo-gpu plan`` prints it; tests assert on it. Keeping every decision here
keeps it explainable: a :class:`Plan` carries the phase, a CamelCase reason and a sentence, and per
placement the score breakdown that put the tasks there.

Replanning, in order of preference:

1. ``kept``: the previous placements of the same generation are all still on healthy devices
   (registered, Ready, reporting, not too hot): nothing moves, so running pods are left alone. A
   cordon does not evict: it only stops new placements.
2. ``partial``: some placements sit on failed devices. Only their tasks are spread again, over
   eligible devices that hold none of this workload's tasks yet (so no healthy pod is replaced),
   with the same strategy, capacities and cap.
3. ``full``: a new spec (generation), no previous plan, or the partial replan found no room: all
   tasks are spread again from scratch.

Which devices can take the workload's tasks is the core's decision (``exo.gpu.fit``), asked with
the workload's :func:`fit_request`: the same request its pods make of the extender (a memory size,
or the whole device without ``minMemoryBytes``), made on behalf of the workload, so that what the
workload itself holds does not count against it and what other workloads planned or pods hold
does. A plan decides placements only; the controller records what they hold (:func:`plan_holds`)
in the ledger under the same lock, so the next plan sees it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from exo.gpu.errors import (
    DistributionError,
    GPUClusteringError,
    InsufficientCapacityError,
    UnknownDeviceError,
)
from exo.gpu.fit import FitReason, FitRequest, free_for
from exo.gpu.telemetry_protocol import GPUDeviceInfo

from ..k8s.view import ClusterView, device_labels, workload_key
from ..k8s.workload import GPUWorkload, GPUWorkloadSpec, Placement
from ..quantity import format_bytes
from .reasons import PlanMode, PodPhase, Reason, WorkloadPhase

PLACED = WorkloadPhase.PLACED
UNSCHEDULABLE = WorkloadPhase.UNSCHEDULABLE
INVALID = WorkloadPhase.INVALID


@dataclass(frozen=True)
class PlannedPlacement:
    """The tasks of one device and why that device."""

    device: str
    node: str
    vendor: str
    tasks: tuple[str, ...]
    tasks_text: str
    score: float
    memory: float
    compute: float
    thermal: float
    weight: float | None = None

    def to_status(self, pod: str | None = None) -> Placement:
        from ..k8s.workload import PlacementBreakdown

        return Placement(
            device=self.device, node=self.node, tasks=self.tasks_text, task_count=len(self.tasks),
            score=round(_unit(self.score), 4),
            breakdown=PlacementBreakdown(memory=round(_unit(self.memory), 4),
                                         compute=round(_unit(self.compute), 4),
                                         thermal=round(_unit(self.thermal), 4)),
            weight=None if self.weight is None else round(self.weight, 4), pod=pod)


@dataclass(frozen=True)
class Plan:
    """The answer for one workload: placements, or the reason there are none."""

    phase: WorkloadPhase  # Placed | Unschedulable | Invalid
    reason: Reason
    message: str
    placements: tuple[PlannedPlacement, ...] = ()
    mode: PlanMode = PlanMode.FULL
    #: Devices that lost their tasks in this plan, with why (partial or full replans).
    failed_devices: Mapping[str, str] = field(default_factory=dict)
    #: Devices named in capacities that took no part, with why.
    excluded: Mapping[str, str] = field(default_factory=dict)
    #: The reason of each entry of ``failed_devices`` and ``excluded``.
    reasons: Mapping[str, FitReason | Reason] = field(default_factory=dict)

    @property
    def placed(self) -> bool:
        return self.phase == PLACED

    def summary(self, limit: int = 8) -> str:
        """``dev-a: 0-3 (score 0.82), dev-b: 4-6 (score 0.71)``, shortened past ``limit``."""
        parts = [f"{p.device}: {p.tasks_text or '-'} (score {p.score:.2f})"
                 for p in self.placements[:limit]]
        if len(self.placements) > limit:
            parts.append(f"... {len(self.placements) - limit} more")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------


def parse_workload(obj: Mapping[str, Any]) -> tuple[GPUWorkload | None, Plan | None]:
    """The workload, or an ``Invalid`` plan naming the field and the reason (never raises)."""
    try:
        return GPUWorkload.model_validate(obj), None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        message = f"{_camel_path(where)}: {first.get('msg', 'invalid')}{more}"
        return None, Plan(INVALID, Reason.INVALID_SPEC, message, mode=PlanMode.NONE)


def _camel_path(path: str) -> str:
    out = []
    for part in path.split("."):
        head, *rest = part.split("_")
        out.append(head + "".join(r[:1].upper() + r[1:] for r in rest))
    return ".".join(out)


# --------------------------------------------------------------------------------------------
# helpers over the view
# --------------------------------------------------------------------------------------------


def device_labels_of(view: ClusterView, name: str) -> dict[str, str]:
    """A device's labels, with node and vendor implied from its spec when not labelled."""
    device = view.devices.get(name)
    return {} if device is None else device_labels(device)


def fit_request(workload: GPUWorkload,
                exclude: frozenset[str] = frozenset()) -> FitRequest:
    """What ``workload`` asks of each device, on behalf of the workload (what it holds is its
    own), with its ``deviceSelector``: what its pods will ask of the extender, so that the two
    agree. With a template that is ``minMemoryBytes`` of free memory, or without it the whole
    device. Without a template no pod will come: ``minMemoryBytes`` is a filter on free memory
    and its absence asks for nothing. ``exclude``: devices that take no part whatever they are
    (a partial replan's)."""
    spec = workload.spec
    minimum = spec.min_memory()
    if spec.template is None:
        return FitRequest(min_memory_bytes=minimum or 0, selector=spec.device_selector,
                          predicate=_excluding(exclude),
                          workload=workload_key(workload.namespace, workload.name))
    return FitRequest(min_memory_bytes=minimum or 0, whole_device=minimum is None,
                      selector=spec.device_selector, predicate=_excluding(exclude),
                      workload=workload_key(workload.namespace, workload.name))


def _excluding(exclude: frozenset[str]) -> Callable[[GPUDeviceInfo], bool] | None:
    if not exclude:
        return None

    def predicate(info: GPUDeviceInfo) -> bool:
        return info.device_id not in exclude

    return predicate


def plan_holds(workload: GPUWorkload, view: ClusterView,
               placements: Iterable[PlannedPlacement]) -> dict[str, int]:
    """What ``placements`` of ``workload`` hold, device -> bytes: what its pod there will ask
    (``minMemoryBytes``, or the whole device)."""
    request = fit_request(workload)
    holds = {}
    for placement in placements:
        device = view.state.device(placement.device)
        if device is not None:
            holds[placement.device] = request.reserves(device.total)
    return holds


def task_text(tasks: Sequence[str], counted: bool) -> str:
    """Tasks as the pod annotation writes them: ``first-last`` for a counted run, else ids."""
    if not tasks:
        return ""
    if counted:
        numbers = [int(t) for t in tasks]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return str(numbers[0]) if len(numbers) == 1 else f"{numbers[0]}-{numbers[-1]}"
    return ",".join(tasks)


def parse_task_text(text: str, counted: bool) -> list[str]:
    """Inverse of :func:`task_text`."""
    if not text:
        return []
    if counted and "," not in text:
        first, _, last = text.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            end = int(last) if last else int(first)
            return [str(i) for i in range(int(first), end + 1)]
    return text.split(",")


def pod_name(workload: str, device: str, tasks_text: str) -> str:
    """Deterministic pod name of a placement: a restarted controller finds, never duplicates."""
    digest = hashlib.sha256(f"{device}\0{tasks_text}".encode()).hexdigest()[:10]
    return f"{workload[:242]}-{digest}"


def _unit(value: float) -> float:
    return min(max(value, 0.0), 1.0)


# --------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------


def device_failure(view: ClusterView, device: str) -> tuple[FitReason | Reason, str] | None:
    """Why ``device`` can no longer hold tasks, as (reason, "Reason: message"); None when it
    still can (the core's ``FitReason.device_failed``; a cordon does not evict)."""
    if device not in view.state:
        return Reason.DEVICE_GONE, "DeviceGone: the GPUDevice no longer exists"
    for rejection in view.state.explain(device, FitRequest(), view.manager.now()):
        if rejection.reason is not None and rejection.reason.device_failed:
            return rejection.reason, f"{rejection.reason}: {rejection.message}"
    return None


def plan(workload: GPUWorkload, view: ClusterView,
         previous: Sequence[Placement] | None = None) -> Plan:
    """Place ``workload`` on the view (call under ``view.lock`` for a consistent snapshot).

    ``previous``: the placements already made for this generation (from status), if any.
    """
    with view.lock:
        spec = workload.spec
        counted = isinstance(spec.tasks, int)
        tasks = spec.task_ids()
        if previous:
            held = {p.device: parse_task_text(p.tasks, counted) for p in previous}
            if sorted(t for ts in held.values() for t in ts) == sorted(tasks):
                failures = {d: why for d in held if (why := device_failure(view, d)) is not None}
                if not failures:
                    kept = tuple(_planned_from_status(p, view, counted) for p in previous)
                    return Plan(PLACED, Reason.PLACED, _placed_message(kept, len(tasks)), kept,
                                PlanMode.KEPT)
                failed = {d: text for d, (_, text) in failures.items()}
                reasons = {d: reason for d, (reason, _) in failures.items()}
                partial = _partial(workload, view, previous, held, failed, reasons, counted)
                if partial is not None:
                    return partial
                full = _full(workload, view, tasks, counted)
                return Plan(full.phase, full.reason, full.message, full.placements,
                            PlanMode.FULL, failed, full.excluded, {**full.reasons, **reasons})
        return _full(workload, view, tasks, counted)


def _planned_from_status(p: Placement, view: ClusterView, counted: bool) -> PlannedPlacement:
    device = view.devices.get(p.device)
    return PlannedPlacement(
        device=p.device, node=p.node,
        vendor=device.spec.vendor.value if device is not None else "",
        tasks=tuple(parse_task_text(p.tasks, counted)), tasks_text=p.tasks, score=p.score,
        memory=p.breakdown.memory, compute=p.breakdown.compute, thermal=p.breakdown.thermal,
        weight=p.weight)


def _partial(workload: GPUWorkload, view: ClusterView, previous: Sequence[Placement],
             held: Mapping[str, list[str]], failed: Mapping[str, str],
             reasons: Mapping[str, FitReason | Reason], counted: bool) -> Plan | None:
    """Move only the tasks of failed devices: first to devices this workload does not use yet
    (no healthy pod changes), else merged into healthy placements that are under the cap (only
    those placements change). None when neither fits."""
    spec = workload.spec
    order = {t: i for i, t in enumerate(spec.task_ids())}
    orphans = sorted((t for d in held if d in failed for t in held[d]), key=order.__getitem__)
    if not orphans:
        return None
    healthy = {d: ts for d, ts in held.items() if d not in failed}
    cap = spec.max_tasks_per_device
    attempts: list[tuple[frozenset[str], int | dict[str, int] | None]] = [
        (frozenset(held), cap)]
    if healthy:
        full = frozenset(failed) | frozenset(
            d for d, ts in healthy.items() if cap is not None and len(ts) >= cap)
        caps: int | dict[str, int] | None = cap
        if cap is not None:
            caps = {d: cap - len(ts) for d, ts in healthy.items() if d not in full}
            caps.update({d: cap for d in view.devices if d not in held})
        attempts.append((full, caps))
    for exclude, caps in attempts:
        capacities = spec.capacities
        if capacities is not None:
            capacities = {d: w for d, w in capacities.items()
                          if d in view.state and d not in exclude and w > 0}
            if not capacities:
                continue
        if isinstance(caps, dict):
            caps = {d: c for d, c in caps.items() if d in view.state}
        try:
            result = view.manager.plan_workload(orphans, spec.strategy, capacities, caps,
                                                request=fit_request(workload, exclude))
        except GPUClusteringError:
            continue
        moved = {p.device: p for p in _placements(view, result.assignments, result.scores,
                                                  result.weights, spec, counted)}
        placements: list[PlannedPlacement] = []
        for p in previous:
            if p.device in failed:
                continue
            kept = _planned_from_status(p, view, counted)
            extra = moved.pop(p.device, None)
            if extra is not None:  # merged: this placement (and its pod) changes
                tasks = tuple(sorted(kept.tasks + extra.tasks, key=order.__getitem__))
                kept = PlannedPlacement(
                    kept.device, kept.node, kept.vendor, tasks, task_text(tasks, counted),
                    extra.score, extra.memory, extra.compute, extra.thermal, kept.weight)
            placements.append(kept)
        placements.extend(moved.values())
        targets = sorted(set(result.assignments) & {d for d, ts in result.assignments.items()
                                                    if ts})
        moved_list = ", ".join(f"{d} ({reasons[d]})" for d in sorted(failed))
        message = (f"{len(orphans)} task(s) of {moved_list} moved to {', '.join(targets)}; "
                   "the other placements were kept")
        return Plan(PLACED, Reason.REPLANNED, message, tuple(placements), PlanMode.PARTIAL,
                    dict(failed), reasons=dict(reasons))
    return None


def _full(workload: GPUWorkload, view: ClusterView, tasks: list[str], counted: bool) -> Plan:
    spec = workload.spec
    manager = view.manager
    if spec.capacities is not None:
        unknown = sorted(d for d in spec.capacities if d not in view.state)
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more"
                                              if len(unknown) > 5 else "")
            return Plan(UNSCHEDULABLE, Reason.UNKNOWN_DEVICE,
                        f"spec.capacities names {len(unknown)} device(s) that do not exist: "
                        f"{shown}", mode=PlanMode.NONE)
    try:
        result = manager.plan_workload(
            tasks, spec.strategy, spec.capacities, spec.max_tasks_per_device,
            request=fit_request(workload))
    except InsufficientCapacityError as error:
        return Plan(UNSCHEDULABLE, Reason.CAPS_TOO_LOW,
                    f"spec.maxTasksPerDevice={spec.max_tasks_per_device}: {error.reason}",
                    mode=PlanMode.NONE)
    except UnknownDeviceError as error:
        return Plan(UNSCHEDULABLE, Reason.UNKNOWN_DEVICE, str(error), mode=PlanMode.NONE)
    except DistributionError:
        return _why_no_device(workload, view, len(tasks))
    except GPUClusteringError as error:
        return Plan(INVALID, Reason.INVALID_SPEC, str(error), mode=PlanMode.NONE)
    placements = _placements(view, result.assignments, result.scores, result.weights, spec,
                             counted)
    excluded = {d: "; ".join(f"{r.reason}: {r.message}" for r in rejections)
                for d, rejections in result.excluded.items()}
    reasons: dict[str, FitReason | Reason] = {
        d: rejections[0].reason for d, rejections in result.excluded.items()
        if rejections and rejections[0].reason is not None}
    message = _placed_message(placements, len(tasks))
    if excluded:
        message += f"; {len(excluded)} device(s) in capacities not eligible: " + ", ".join(
            f"{d} ({reasons.get(d, '?')})" for d in sorted(excluded)[:5])
    return Plan(PLACED, Reason.PLACED, message, placements, PlanMode.FULL, {}, excluded, reasons)


def _placements(view: ClusterView, assignments: Mapping[str, list[str]],
                scores: Mapping[str, Any], weights: Mapping[str, float],
                spec: GPUWorkloadSpec, counted: bool) -> tuple[PlannedPlacement, ...]:
    out = []
    for device, assigned in assignments.items():
        if not assigned:
            continue
        breakdown = scores.get(device)
        info = view.manager.get_device(device)
        out.append(PlannedPlacement(
            device=device, node=(info.node or "") if info is not None else "",
            vendor=info.vendor.value if info is not None else "",
            tasks=tuple(assigned), tasks_text=task_text(assigned, counted),
            score=breakdown.total if breakdown is not None else 0.0,
            memory=breakdown.memory if breakdown is not None else 0.0,
            compute=breakdown.compute if breakdown is not None else 0.0,
            thermal=breakdown.thermal if breakdown is not None else 0.0,
            weight=weights.get(device) if spec.strategy == "capacity" else None))
    return tuple(out)


def _placed_message(placements: Sequence[PlannedPlacement], task_count: int) -> str:
    return f"{task_count} task(s) on {len(placements)} device(s)"


def _why_no_device(workload: GPUWorkload, view: ClusterView, task_count: int) -> Plan:
    """An Unschedulable plan whose reason says what is missing."""
    spec = workload.spec
    state = view.state
    names = sorted(d.device_id for d in state.devices())
    if not names:
        return Plan(UNSCHEDULABLE, Reason.NO_DEVICES,
                    f"{task_count} task(s) but the cluster has no GPUDevice", mode=PlanMode.NONE)
    pool = names
    if spec.capacities is not None:
        pool = [d for d in names if d in spec.capacities and spec.capacities[d] > 0]
    if spec.device_selector is not None:
        selector = spec.device_selector
        pool = [d for d in pool if selector.matches(device_labels_of(view, d))]
        if not pool:
            return Plan(UNSCHEDULABLE, Reason.NO_DEVICE_MATCHES_SELECTOR,
                        f"spec.deviceSelector {selector.describe()} matches none of the "
                        f"{len(names)} GPUDevice(s)", mode=PlanMode.NONE)
    request = fit_request(workload)
    now = view.manager.now()
    reasons: dict[FitReason, int] = {}
    best_free: tuple[int, str] | None = None
    for name in pool:
        device = state.device(name)
        assert device is not None
        if device.metrics is not None:
            free = free_for(device, request)
            if best_free is None or free > best_free[0]:
                best_free = (free, name)
        for rejection in state.explain(name, request, now):
            if rejection.reason is not None and \
                    rejection.reason is not FitReason.SELECTOR_MISMATCH:
                reasons[rejection.reason] = reasons.get(rejection.reason, 0) + 1
                break
    summary = ", ".join(f"{n} {code}" for code, n in sorted(reasons.items()))
    if reasons and all(code.memory for code in reasons):
        if request.whole_device:
            return Plan(UNSCHEDULABLE, Reason.INSUFFICIENT_MEMORY,
                        "without spec.minMemoryBytes each task's device is taken whole, and "
                        f"every eligible device is partly held by other pods or plans ({summary})",
                        mode=PlanMode.NONE)
        largest = (f" (the most free is {format_bytes(best_free[0])} on {best_free[1]})"
                   if best_free else "")
        return Plan(UNSCHEDULABLE, Reason.INSUFFICIENT_MEMORY,
                    f"spec.minMemoryBytes {spec.min_memory_bytes} "
                    f"({format_bytes(request.min_memory_bytes)}) is more than any eligible "
                    f"device has free{largest}", mode=PlanMode.NONE)
    scope = "selected" if spec.device_selector is not None else (
        "named in capacities" if spec.capacities is not None else "registered")
    return Plan(UNSCHEDULABLE, Reason.NO_ELIGIBLE_DEVICE,
                f"{task_count} task(s) but none of the {len(pool)} device(s) {scope} is "
                f"eligible ({summary or 'no reason reported'})", mode=PlanMode.NONE)


# --------------------------------------------------------------------------------------------
# pods: phase roll-up
# --------------------------------------------------------------------------------------------


def rollup(pod_phases: Iterable[str | None]) -> tuple[WorkloadPhase, str]:
    """The workload phase from its pods' phases (None for a pod not created yet), and why.

    Any Failed -> Failed; all Succeeded -> Succeeded; all Running or Succeeded -> Running;
    otherwise Placed (pods created, not all running yet).
    """
    phases = list(pod_phases)
    counts: dict[str, int] = {}
    for phase in phases:
        key = phase or "Missing"
        counts[key] = counts.get(key, 0) + 1
    detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    if not phases:
        return PLACED, "no pods"
    if counts.get(PodPhase.FAILED):
        return WorkloadPhase.FAILED, f"pods: {detail}"
    if counts.get(PodPhase.SUCCEEDED, 0) == len(phases):
        return WorkloadPhase.SUCCEEDED, f"pods: {detail}"
    if counts.get(PodPhase.SUCCEEDED, 0) + counts.get(PodPhase.RUNNING, 0) == len(phases):
        return WorkloadPhase.RUNNING, f"pods: {detail}"
    return PLACED, f"pods: {detail}"
