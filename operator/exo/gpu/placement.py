"""Where a workload's tasks go as a whole: network domains, tasks kept apart, device sets.

The planner (``exo.gpu.controller.planning``) asks these decisions before it distributes tasks;
each is a pure function over the cluster state and the workload's ``FitRequest`` (so every
device rule is still ``exo.gpu.fit``'s):

- :func:`domains`: the domains of one level (node, rack, block, zone: ``exo.gpu.topology``),
  each with its nodes, the devices in it that fit the request, and how many tasks it can take;
- :func:`choose_domains`: packing. The smallest domain that holds every task (fewest fitting
  devices, then name: larger domains stay free for larger work, as KAI packs into the fullest
  rack that fits). When none does: ``required`` answers nothing (the workload waits), otherwise
  the fewest domains, largest first;
- :func:`apart_devices`: tasks kept apart, one device per domain, the domains with the best
  devices first;
- :func:`plan_sets`: a set of ``request.devices`` devices on one node per task, each the set
  ``exo.gpu.fit.choose`` gives on the node that is worth most to the request
  (``exo.gpu.fit.choice_rank``), so that a task's pod later gets exactly that set from the
  extender.

How many tasks a domain can take: with one device per task, any number when the workload has
no ``maxTasksPerDevice`` (tasks are items; a device may hold many), else the sum of the caps of
its fitting devices; with sets of ``n``, the sets its nodes can form (``fitting // n`` per
node). A node without the level's label is a domain of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exo.gpu.cluster import ClusterState
from exo.gpu.fit import FitRequest, choice_rank, choose, fit
from exo.gpu.state import DeviceState
from exo.gpu.topology import DomainLevel, SetScore

__all__ = [
    "Domain",
    "DomainChoice",
    "SetPlacement",
    "apart_devices",
    "choose_domains",
    "domains",
    "fitting_by_node",
    "plan_sets",
]


@dataclass(frozen=True, slots=True)
class Domain:
    """One domain of a level: its nodes, the fitting devices in it, the tasks it can take
    (None: any number). ``labelled``: the nodes carry the level's label (else the domain is a
    lone node without it)."""

    level: DomainLevel
    name: str
    nodes: tuple[str, ...]
    devices: int
    capacity: int | None
    labelled: bool = True

    def holds(self, tasks: int) -> bool:
        return self.devices > 0 and (self.capacity is None or self.capacity >= tasks)

    def describe(self) -> str:
        return f"{self.level} {self.name}"


@dataclass(frozen=True, slots=True)
class DomainChoice:
    """The domains chosen for a workload (empty: none will do), and why."""

    chosen: tuple[Domain, ...]
    message: str
    #: Every candidate domain, in the order considered (for explanations).
    considered: tuple[Domain, ...] = ()

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(n for d in self.chosen for n in d.nodes)

    @property
    def packed(self) -> bool:
        """One domain holds every task."""
        return len(self.chosen) == 1

    def describe(self) -> str:
        return ", ".join(d.describe() for d in self.chosen)


def fitting_by_node(state: ClusterState, request: FitRequest, now: float | None,
                    nodes: Iterable[str] | None = None) -> dict[str, list[DeviceState]]:
    """Per node (all, or ``nodes``), its devices that fit ``request`` (one device's worth),
    best score first."""
    single = dataclasses.replace(request, devices=1)
    out: dict[str, list[DeviceState]] = {}
    names = state.nodes if nodes is None else [n for n in nodes if n in state.nodes]
    for node in names:
        out[node] = [d for d in state.nodes[node]
                     if fit(d, single, now, state.policy).reason is None]
    return out


def domains(state: ClusterState, request: FitRequest, level: DomainLevel, now: float | None,
            cap: int | None = None, apart: DomainLevel | None = None) -> list[Domain]:
    """The domains of ``level`` over the nodes holding devices, by name.

    ``request.devices`` is the set size; ``cap`` the workload's ``maxTasksPerDevice`` (with one
    device per task); ``apart``: the tasks are kept apart by this (smaller) level, so a domain
    takes at most one task per domain of that level with room in it.
    """
    fitting = fitting_by_node(state, request, now)
    members: dict[tuple[bool, str], list[str]] = {}
    for node in sorted(fitting):
        domain = state.domain_of(node, level)
        key = (True, domain) if domain is not None else (False, node)
        members.setdefault(key, []).append(node)
    out = []
    size = request.devices
    for (labelled, name), nodes in sorted(members.items(), key=lambda item: item[0][1]):
        devices = sum(len(fitting[n]) for n in nodes)
        capacity: int | None
        if size > 1:
            capacity = sum(len(fitting[n]) // size for n in nodes)
        elif cap is None:
            capacity = None if devices else 0
        else:
            capacity = devices * cap
        if apart is not None:
            inner = len({state.domain_of(n, apart) or f"node {n}" for n in nodes
                         if len(fitting[n]) >= size})
            capacity = inner if capacity is None else min(capacity, inner)
        out.append(Domain(level, name, tuple(nodes), devices, capacity, labelled))
    return out


def choose_domains(candidates: Sequence[Domain], tasks: int, required: bool) -> DomainChoice:
    """Where to pack ``tasks`` tasks (see the module docstring); ``required``: one domain or
    nothing."""
    level = candidates[0].level if candidates else DomainLevel.NODE
    fits = [d for d in candidates if d.holds(tasks)]
    if fits:
        best = min(fits, key=lambda d: (d.devices, d.name))
        others = len([d for d in candidates if d.devices > 0]) - 1
        return DomainChoice((best,), f"in {best.describe()}, the smallest of "
                                     f"{others + 1} {level} domain(s) with room for all "
                                     f"{tasks} task(s)", tuple(candidates))
    usable = [d for d in candidates if d.devices > 0]
    if not usable:
        return DomainChoice((), f"no {level} has a device that fits", tuple(candidates))
    largest = max(usable, key=lambda d: (_room(d), d.name))
    if required:
        return DomainChoice((), f"no {level} holds all {tasks} task(s): the largest, "
                                f"{largest.name}, holds {_room(largest)}", tuple(candidates))
    chosen: list[Domain] = []
    room = 0
    for domain in sorted(usable, key=lambda d: (-_room(d), d.name)):
        chosen.append(domain)
        room += _room(domain)
        if room >= tasks:
            break
    names = ", ".join(d.name for d in chosen)
    return DomainChoice(tuple(chosen), f"no single {level} holds all {tasks} task(s); spread "
                                       f"over the fewest: {names}", tuple(candidates))


def _room(domain: Domain) -> int:
    return domain.capacity if domain.capacity is not None else domain.devices


def apart_devices(state: ClusterState, request: FitRequest, tasks: int, level: DomainLevel,
                  now: float | None) -> tuple[list[str], int]:
    """One fitting device per domain of ``level`` for tasks kept apart: the best device of
    each domain, domains with the best devices first, at most ``tasks`` of them. Returns the
    devices and how many domains had a fitting device (fewer than ``tasks``: not enough)."""
    best: dict[str, DeviceState] = {}
    for node, devices in fitting_by_node(state, request, now).items():
        if not devices:
            continue
        domain = state.domain_of(node, level) or f"node {node}"
        top = devices[0]
        current = best.get(domain)
        if current is None or (-top.score, top.device_id) < (-current.score, current.device_id):
            best[domain] = top
    ordered = sorted(best.values(), key=lambda d: (-d.score, d.device_id))
    return [d.device_id for d in ordered[:tasks]], len(ordered)


@dataclass(frozen=True, slots=True)
class SetPlacement:
    """One task's set: its node, devices (the choice's order) and links."""

    node: str
    devices: tuple[DeviceState, ...]
    links: SetScore | None
    rank: float

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.device_id for d in self.devices)


def plan_sets(state: ClusterState, request: FitRequest, tasks: int, now: float | None,
              nodes: frozenset[str] | None = None, apart: DomainLevel | None = None,
              apart_required: bool = True) -> list[SetPlacement]:
    """A set of ``request.devices`` devices per task (fewer entries than ``tasks``: no room for
    the rest).

    Task after task, the node worth most to the request (``choice_rank`` of its choice among
    the devices this plan has not taken yet; ties by node name) gives its set. ``nodes``
    restricts the nodes (a packed domain); ``apart``: no two sets in one domain of that level
    (``apart_required`` False: round after round, each domain with room taking one set per
    round).
    """
    candidates = sorted(n for n in state.nodes if nodes is None or n in nodes)
    taken: set[str] = set()
    used_domains: set[str] = set()
    cached: dict[str, tuple[float, SetPlacement] | None] = {}

    def judge(node: str) -> tuple[float, SetPlacement] | None:
        devices = [d for d in state.nodes.get(node, ()) if d.device_id not in taken]
        if len(devices) < request.devices:
            return None
        choice = choose(devices, request, now, state.policy, topology=state.topology(node))
        if len(choice.devices) < request.devices:
            return None
        rank = choice_rank(choice, request)
        return rank, SetPlacement(node, tuple(choice.devices), choice.links, rank)

    out: list[SetPlacement] = []
    while len(out) < tasks:
        best: tuple[tuple[float, str], SetPlacement] | None = None
        if apart is not None and not apart_required and used_domains and all(
                _domain(state, n, apart) in used_domains for n in candidates
                if cached.get(n, True) is not None):
            used_domains.clear()  # every domain with room has a set: the next round begins
        for node in candidates:
            if apart is not None and _domain(state, node, apart) in used_domains:
                continue
            if node not in cached:
                cached[node] = judge(node)
            found = cached[node]
            if found is None:
                continue
            key = (-found[0], node)
            if best is None or key < best[0]:
                best = (key, found[1])
        if best is None:
            break
        placement = best[1]
        out.append(placement)
        taken.update(placement.names)
        cached.pop(placement.node, None)
        if apart is not None:
            used_domains.add(_domain(state, placement.node, apart))
    return out


def _domain(state: ClusterState, node: str, level: DomainLevel) -> str:
    return state.domain_of(node, level) or f"node {node}"
