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
from exo.gpu.selector import RejectionReason
from exo.gpu.telemetry_protocol import GPUDeviceInfo

from ..k8s.models import LABEL_NODE, LABEL_VENDOR
from ..k8s.view import ClusterView
from ..k8s.workload import GPUWorkload, GPUWorkloadSpec, Placement
from ..quantity import format_bytes

PLACED = "Placed"
UNSCHEDULABLE = "Unschedulable"
INVALID = "Invalid"

#: Device-level rejections that make a device unfit to keep the tasks it holds.
FAILED_DEVICE = frozenset({
    RejectionReason.NOT_READY,
    RejectionReason.NO_METRICS,
    RejectionReason.STALE,
    RejectionReason.TOO_HOT,
})


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

    phase: str  # Placed | Unschedulable | Invalid
    reason: str  # CamelCase, as in a condition
    message: str
    placements: tuple[PlannedPlacement, ...] = ()
    mode: str = "full"  # kept | partial | full | none
    #: Devices that lost their tasks in this plan, with why (partial or full replans).
    failed_devices: Mapping[str, str] = field(default_factory=dict)
    #: Devices named in capacities that took no part, with why.
    excluded: Mapping[str, str] = field(default_factory=dict)

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
        return None, Plan(INVALID, "InvalidSpec", message, mode="none")


def _camel_path(path: str) -> str:
    out = []
    for part in path.split("."):
        head, *rest = part.split("_")
        out.append(head + "".join(r[:1].upper() + r[1:] for r in rest))
    return ".".join(out)


# --------------------------------------------------------------------------------------------
# helpers over the view
# --------------------------------------------------------------------------------------------


def device_labels(view: ClusterView, name: str) -> dict[str, str]:
    """A device's labels, with node and vendor implied from its spec when not labelled."""
    device = view.devices.get(name)
    if device is None:
        return {}
    labels = {LABEL_NODE: device.spec.node, LABEL_VENDOR: device.spec.vendor.value}
    labels.update(device.metadata.labels)
    return labels


def _selector_predicate(view: ClusterView, spec: GPUWorkloadSpec,
                        exclude: frozenset[str] = frozenset()
                        ) -> Callable[[GPUDeviceInfo], bool] | None:
    selector = spec.device_selector
    if selector is None and not exclude:
        return None

    def predicate(info: GPUDeviceInfo) -> bool:
        if info.device_id in exclude:
            return False
        return selector is None or selector.matches(device_labels(view, info.device_id))

    return predicate


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


def device_failure(view: ClusterView, device: str) -> str | None:
    """Why ``device`` can no longer hold tasks (None when it still can)."""
    if device not in view.manager:
        return "DeviceGone: the GPUDevice no longer exists"
    ranked = view.manager.explain_device(device)
    for rejection in ranked.rejections:
        if rejection.code in FAILED_DEVICE:
            return f"{rejection.code.value}: {rejection.message}"
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
                failed = {d: why for d in held if (why := device_failure(view, d)) is not None}
                if not failed:
                    kept = tuple(_planned_from_status(p, view, counted) for p in previous)
                    return Plan(PLACED, "Placed", _placed_message(kept, len(tasks)), kept, "kept")
                partial = _partial(workload, view, previous, held, failed, counted)
                if partial is not None:
                    return partial
                full = _full(workload, view, tasks, counted)
                return Plan(full.phase, full.reason, full.message, full.placements, "full",
                            failed, full.excluded)
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
             counted: bool) -> Plan | None:
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
                          if d in view.manager and d not in exclude and w > 0}
            if not capacities:
                continue
        if isinstance(caps, dict):
            caps = {d: c for d, c in caps.items() if d in view.manager}
        try:
            result = view.manager.plan_workload(
                orphans, spec.strategy, capacities, caps,
                min_memory_bytes=spec.min_memory(),
                predicate=_selector_predicate(view, spec, exclude=exclude))
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
        moved_list = ", ".join(f"{d} ({why.split(':')[0]})" for d, why in sorted(failed.items()))
        message = (f"{len(orphans)} task(s) of {moved_list} moved to {', '.join(targets)}; "
                   "the other placements were kept")
        return Plan(PLACED, "Replanned", message, tuple(placements), "partial", dict(failed))
    return None


def _full(workload: GPUWorkload, view: ClusterView, tasks: list[str], counted: bool) -> Plan:
    spec = workload.spec
    manager = view.manager
    predicate = _selector_predicate(view, spec)
    min_memory = spec.min_memory()
    if spec.capacities is not None:
        unknown = sorted(d for d in spec.capacities if d not in manager)
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more"
                                              if len(unknown) > 5 else "")
            return Plan(UNSCHEDULABLE, "UnknownDevice",
                        f"spec.capacities names {len(unknown)} device(s) that do not exist: "
                        f"{shown}", mode="none")
    try:
        result = manager.plan_workload(
            tasks, spec.strategy, spec.capacities, spec.max_tasks_per_device,
            min_memory_bytes=min_memory, predicate=predicate)
    except InsufficientCapacityError as error:
        return Plan(UNSCHEDULABLE, "CapsTooLow",
                    f"spec.maxTasksPerDevice={spec.max_tasks_per_device}: {error.reason}",
                    mode="none")
    except UnknownDeviceError as error:
        return Plan(UNSCHEDULABLE, "UnknownDevice", str(error), mode="none")
    except DistributionError:
        return _why_no_device(workload, view, len(tasks))
    except GPUClusteringError as error:
        return Plan(INVALID, "InvalidSpec", str(error), mode="none")
    placements = _placements(view, result.assignments, result.scores, result.weights, spec,
                             counted)
    excluded = {d: "; ".join(f"{r.code}: {r.message}" for r in rejections)
                for d, rejections in result.excluded.items()}
    message = _placed_message(placements, len(tasks))
    if excluded:
        message += f"; {len(excluded)} device(s) in capacities not eligible: " + ", ".join(
            f"{d} ({why.split(':')[0]})" for d, why in sorted(excluded.items())[:5])
    return Plan(PLACED, "Placed", message, placements, "full", {}, excluded)


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
    manager = view.manager
    names = [i.device_id for i in manager.list_devices()]
    if not names:
        return Plan(UNSCHEDULABLE, "NoDevices",
                    f"{task_count} task(s) but the cluster has no GPUDevice", mode="none")
    pool = names
    if spec.capacities is not None:
        pool = [d for d in names if d in spec.capacities and spec.capacities[d] > 0]
    if spec.device_selector is not None:
        selector = spec.device_selector
        pool = [d for d in pool if selector.matches(device_labels(view, d))]
        if not pool:
            return Plan(UNSCHEDULABLE, "NoDeviceMatchesSelector",
                        f"spec.deviceSelector {selector.describe()} matches none of the "
                        f"{len(names)} GPUDevice(s)", mode="none")
    min_memory = spec.min_memory()
    reasons: dict[str, int] = {}
    best_free: tuple[int, str] | None = None
    for device in pool:
        ranked = manager.explain_device(device, min_memory_bytes=min_memory)
        if ranked.breakdown is not None and (
                best_free is None or ranked.breakdown.free_memory_bytes > best_free[0]):
            best_free = (ranked.breakdown.free_memory_bytes, device)
        for rejection in ranked.rejections:
            if rejection.code is not None and \
                    rejection.code is not RejectionReason.SELECTOR_MISMATCH:
                reasons[rejection.code.value] = reasons.get(rejection.code.value, 0) + 1
                break
    summary = ", ".join(f"{n} {code}" for code, n in sorted(reasons.items()))
    if min_memory and reasons and set(reasons) <= {RejectionReason.INSUFFICIENT_MEMORY.value,
                                                   RejectionReason.TOO_SMALL.value}:
        largest = (f" (the most free is {format_bytes(best_free[0])} on {best_free[1]})"
                   if best_free else "")
        return Plan(UNSCHEDULABLE, "InsufficientMemory",
                    f"spec.minMemoryBytes {spec.min_memory_bytes} ({format_bytes(min_memory)}) "
                    f"is more than any eligible device has free{largest}", mode="none")
    scope = "selected" if spec.device_selector is not None else (
        "named in capacities" if spec.capacities is not None else "registered")
    return Plan(UNSCHEDULABLE, "NoEligibleDevice",
                f"{task_count} task(s) but none of the {len(pool)} device(s) {scope} is "
                f"eligible ({summary or 'no reason reported'})", mode="none")


# --------------------------------------------------------------------------------------------
# pods: phase roll-up
# --------------------------------------------------------------------------------------------


def rollup(pod_phases: Iterable[str | None]) -> tuple[str, str]:
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
    if counts.get("Failed"):
        return "Failed", f"pods: {detail}"
    if counts.get("Succeeded", 0) == len(phases):
        return "Succeeded", f"pods: {detail}"
    if counts.get("Succeeded", 0) + counts.get("Running", 0) == len(phases):
        return "Running", f"pods: {detail}"
    return PLACED, f"pods: {detail}"
