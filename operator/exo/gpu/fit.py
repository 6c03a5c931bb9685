"""Whether a device can take a request, and why not: the one decision every component asks.

The extender's filter, prioritize, bind and preempt, the controller's planner, ``exo-gpu plan``,
``exo-gpu top`` and the seed API (``select_best_device``, ``rank_devices``, ``explain_device``,
``distribute_workload``) all call :func:`fit` (one device), :func:`explain` (every reason, for
people) or :func:`choose` (the best N devices of a sequence, for a node). No other code compares
free memory, temperature or sample age with a limit.

The rules, in the order they are checked; the first that holds is the answer (:func:`explain`
lists every one that holds):

==================== ======================================================= ===========
reason               holds when                                              preemption
==================== ======================================================= ===========
``NotPlanned``       the request is held to planned devices and this is not  no
                     one of them
``Cordoned``         the device is marked unschedulable                      no
``NotReady``         its owner reports it not Ready                          no
``NoMetrics``        no sample yet: its memory use is unknown                no
``Stale``            its latest sample is older than ``stale_after_seconds`` no
``TooHot``           at or above ``thermal_max_celsius``                     no
``VendorMismatch``   not the requested vendor                                no
``SelectorMismatch`` its labels fail the request's labels or selector, or    no
                     the request's predicate refuses it
``OutsideDomain``    its node is not in the topology domain the request is   no
                     packed into (``FitRequest.nodes``)
``TooSmall``         its total memory is below the requested amount          no
``InUse``            the request is for the whole device and others hold     yes
                     some of it
``InsufficientMemory`` free memory (``exo.gpu.policy.free_memory_bytes``,   yes
                     after what others hold) is below the requested amount
==================== ======================================================= ===========

``Cordoned``, ``NotReady``, ``NoMetrics``, ``Stale`` and ``TooHot`` depend only on the device
(and, for ``Stale``, the clock): ``exo.gpu.state`` computes them when the device changes
(:func:`device_verdict`, and the moment the sample goes stale), so a request costs the rest.

*Others* hold: every reservation on the device (pods bound to it, pods planned on it, planned
tasks of workloads) except those of the request's own workload (``FitRequest.workload``): a pod
of a workload may take the memory its workload's plan holds for it, and a replan of a workload
may reuse what the workload holds. The planner and the extender therefore agree on every device
(``tests/test_fit_agreement.py``).

Extension:

- a new rule (ECC errors, a precision the device lacks) is a ``FitReason`` member with its place
  in the order, its ``resolvable``/``device_failed``/``memory`` classes and its sentence in
  :meth:`FitResult.message`, plus one check in :func:`_rules` (in :func:`device_verdict` when it
  depends on the device alone), and a field of :class:`FitRequest` when the request names it;
- ``choose`` keeps fast paths for the common requests (a memory size and nothing else,
  ``FitRequest.simple``; the whole device and nothing else, ``FitRequest.whole``); a request
  field that a rule reads must make the request neither, or the rule must be added to the fast
  paths too (``tests/test_fit.py`` compares them with :func:`fit`);
- anything with the attributes of :class:`FitSubject` can be judged (a simulator's own device
  records).

Device sets and links: :func:`choose` takes ``FitRequest.devices`` devices of one node together.
Given the node's links (``topology``, an ``exo.gpu.topology.NodeTopology``) it collects every
device that fits and takes the set with the best links (``exo.gpu.topology.best_set``); a
one-device request takes the fitting device whose removal breaks the fewest good sets
(``exo.gpu.topology.isolation_cost``). Preferred affinity (``FitRequest.prefer``) comes first in
both. A set is of one vendor. Without links and preferences it keeps the first devices that
fit, best score first.
:func:`choice_rank` is what a node is worth to a request given its choice (the extender's
priority, the planner's order of nodes for a set).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, NamedTuple, Protocol, TypeVar

from exo.gpu.errors import InvalidRequestError
from exo.gpu.policy import DEFAULT_POLICY, SelectionPolicy, free_memory_bytes, priority, too_hot
from exo.gpu.telemetry_protocol import GPUDeviceInfo, Vendor
from exo.gpu.topology import (
    FABRIC_SCORE_PER_LINK,
    NodeTopology,
    SetScore,
    best_set,
    isolation_cost,
    set_score,
    set_totals,
    weakest_pair,
)

__all__ = [
    "FITS",
    "Choice",
    "FitReason",
    "FitRequest",
    "FitResult",
    "FitSubject",
    "LabelMatcher",
    "Preference",
    "choice_priority",
    "choice_rank",
    "choose",
    "device_verdict",
    "explain",
    "fit",
    "free_for",
    "held_by_others",
]

_GIB = 1024**3


class FitReason(StrEnum):
    """Why a device cannot take a request (CamelCase, like a Kubernetes condition reason)."""

    NOT_PLANNED = "NotPlanned"
    CORDONED = "Cordoned"
    NOT_READY = "NotReady"
    NO_METRICS = "NoMetrics"
    STALE = "Stale"
    TOO_HOT = "TooHot"
    VENDOR_MISMATCH = "VendorMismatch"
    SELECTOR_MISMATCH = "SelectorMismatch"
    OUTSIDE_DOMAIN = "OutsideDomain"
    TOO_SMALL = "TooSmall"
    IN_USE = "InUse"
    INSUFFICIENT_MEMORY = "InsufficientMemory"

    @property
    def resolvable(self) -> bool:
        """Evicting the pods that hold memory on the device could make room."""
        return self in _RESOLVABLE

    @property
    def device_failed(self) -> bool:
        """The device cannot keep work already placed on it (a cordon only stops new work)."""
        return self in _DEVICE_FAILED

    @property
    def memory(self) -> bool:
        """A reason about the amount of memory (the request may fit elsewhere or later)."""
        return self in _MEMORY


_RESOLVABLE = frozenset({FitReason.IN_USE, FitReason.INSUFFICIENT_MEMORY})
_DEVICE_FAILED = frozenset({FitReason.NOT_READY, FitReason.NO_METRICS, FitReason.STALE,
                            FitReason.TOO_HOT})
_MEMORY = frozenset({FitReason.TOO_SMALL, FitReason.IN_USE, FitReason.INSUFFICIENT_MEMORY})


def _gib(value: float) -> str:
    return f"{value / _GIB:.1f} GiB"


class FitResult(NamedTuple):
    """The answer for one device: ``reason`` None when it fits, else the rule that refused it
    and the numbers the sentence (:attr:`message`) is made of.

    A tuple, not a dataclass: the filter builds one per refused device, so it must be cheap.
    """

    reason: FitReason | None
    device: str = ""
    requested_bytes: int = 0
    free_bytes: int = 0
    total_bytes: int = 0
    reserved_bytes: int = 0
    #: The measured value a limit refused: a temperature (C) or a sample age (s).
    value: float = 0.0
    limit: float = 0.0
    #: Names the message needs: vendors, planned devices, labels, a NotReady condition.
    detail: str = ""

    @property
    def fits(self) -> bool:
        return self.reason is None

    @property
    def resolvable(self) -> bool:
        """Whether preemption could resolve it (``FailedNodes`` rather than unresolvable)."""
        return self.reason is not None and self.reason.resolvable

    @property
    def code(self) -> FitReason | None:
        """The seed API's name for :attr:`reason` (``Rejection.code``)."""
        return self.reason

    @property
    def message(self) -> str:
        """A sentence for people, from the numbers."""
        reason = self.reason
        if reason is None:
            return "fits"
        if reason is FitReason.NOT_PLANNED:
            return f"the workload planned {self.detail}"
        if reason is FitReason.CORDONED:
            return "device is cordoned (marked unschedulable)"
        if reason is FitReason.NOT_READY:
            return "device is not Ready" + (f" ({self.detail})" if self.detail else "")
        if reason is FitReason.NO_METRICS:
            return "device has not reported any metrics yet"
        if reason is FitReason.STALE:
            return (f"latest sample is {self.value:.0f} s old (stale after {self.limit:.0f} s)")
        if reason is FitReason.TOO_HOT:
            return (f"temperature {self.value:.1f} C is at or above the {self.limit:.1f} C "
                    "limit")
        if reason is FitReason.VENDOR_MISMATCH:
            return f"vendor {self.detail}"
        if reason is FitReason.SELECTOR_MISMATCH or reason is FitReason.OUTSIDE_DOMAIN:
            return self.detail
        if reason is FitReason.TOO_SMALL:
            return (f"{_gib(self.total_bytes)} in all, {_gib(self.requested_bytes)} "
                    "requested")
        if reason is FitReason.IN_USE:
            return (f"{_gib(self.reserved_bytes)} held by other pods or plans; the request is "
                    "for the whole device")
        held = f"; {_gib(self.reserved_bytes)} held by others" if self.reserved_bytes else ""
        return (f"{_gib(self.free_bytes)} free, {_gib(self.requested_bytes)} requested"
                f"{held}")

    def describe(self) -> str:
        """``device: Reason (message)``, as the extender and the planner show it."""
        return f"{self.device}: {self.reason} ({self.message})"


#: The answer for a device that fits.
FITS = FitResult(None)


class LabelMatcher(Protocol):
    """A label selector (``exo.gpu.k8s.workload.LabelSelector`` is one)."""

    def matches(self, labels: dict[str, str]) -> bool: ...

    def describe(self) -> str: ...


class Preference(Protocol):
    """Preferred affinity (``exo.gpu.k8s.workload.DeviceAffinity`` is one): weighted terms over
    a device's labels. ``weight`` sums the weights of the terms the labels match; ``total`` is
    the sum of every term's weight."""

    def weight(self, labels: dict[str, str]) -> int: ...

    @property
    def total(self) -> int: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class FitRequest:
    """What a pod or a workload asks of a device. Every field is optional.

    - ``min_memory_bytes``: free memory the device must have (0: any).
    - ``whole_device``: the request takes the whole device (a pod without
      ``gpu.exo.dev/min-memory``, a workload without ``minMemoryBytes``): nobody else may hold
      any of it, and it reserves all of it.
    - ``vendor``; ``labels`` (all present with equal values), ``selector`` (a label selector)
      and ``predicate`` (any test on the identity): which devices qualify.
    - ``planned``: the request is held to these devices (the pods of a workload).
    - ``devices``: how many devices one request takes together (a pod asking for N GPUs).
    - ``workload``: ``namespace/name`` of the workload the request is for; what that workload
      already holds does not count against it.
    - ``prefer``: preferred affinity: which of the devices that fit come first.
    - ``nodes``: the nodes of the topology domain the request is packed into (``domain`` names
      it, for the ``OutsideDomain`` message).

    The first four fields are the seed's ``SelectionRequest`` (an alias of this class).
    """

    min_memory_bytes: int = 0
    vendor: Vendor | None = None
    labels: Mapping[str, str] | None = None
    predicate: Callable[[GPUDeviceInfo], bool] | None = None
    whole_device: bool = False
    selector: LabelMatcher | None = None
    planned: frozenset[str] | None = None
    devices: int = 1
    workload: str | None = None
    prefer: Preference | None = None
    nodes: frozenset[str] | None = None
    domain: str = ""
    #: Set by __post_init__: the request has nothing but a memory size (the fast path).
    simple: bool = field(default=False, init=False, compare=False, repr=False)
    #: Set by __post_init__: nothing but a vendor (any available device of it qualifies).
    trivial: bool = field(default=False, init=False, compare=False, repr=False)
    #: Set by __post_init__: the whole device and nothing else (the other fast path).
    whole: bool = field(default=False, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        value = self.min_memory_bytes
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequestError(
                "min_memory_bytes", f"must be an integer number of bytes, got {value!r}"
            )
        if value < 0:
            raise InvalidRequestError("min_memory_bytes", f"must not be negative, got {value}")
        if self.vendor is not None and not isinstance(self.vendor, Vendor):
            try:
                object.__setattr__(self, "vendor", Vendor(self.vendor))
            except ValueError:
                known = ", ".join(v.value for v in Vendor)
                raise InvalidRequestError(
                    "vendor", f"unknown vendor {self.vendor!r} (known: {known})"
                ) from None
        if not isinstance(self.whole_device, bool):
            raise InvalidRequestError("whole_device", f"must be True or False, got "
                                                      f"{self.whole_device!r}")
        if self.whole_device and value:
            raise InvalidRequestError("min_memory_bytes", "a whole-device request names no "
                                                          f"amount, got {value}")
        count = self.devices
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidRequestError("devices", f"must be an integer >= 1, got {count!r}")
        if self.planned is not None and not isinstance(self.planned, frozenset):
            object.__setattr__(self, "planned", frozenset(self.planned))
        if self.workload is not None and not (isinstance(self.workload, str) and self.workload):
            raise InvalidRequestError("workload", f"must be a non-empty string, got "
                                                  f"{self.workload!r}")
        if self.nodes is not None and not isinstance(self.nodes, frozenset):
            object.__setattr__(self, "nodes", frozenset(self.nodes))
        bare = self.labels is None and self.selector is None and self.predicate is None \
            and self.planned is None and self.workload is None and self.prefer is None \
            and self.nodes is None
        plain = bare and not self.whole_device
        object.__setattr__(self, "simple", plain and self.vendor is None)
        object.__setattr__(self, "trivial", plain and value == 0)
        object.__setattr__(self, "whole", bare and self.whole_device and self.vendor is None)

    @property
    def is_trivial(self) -> bool:
        """Nothing but (at most) a vendor: every available device of that vendor qualifies."""
        return self.trivial

    def reserves(self, memory_total_bytes: int) -> int:
        """Bytes a device of that size gives this request (per device)."""
        return memory_total_bytes if self.whole_device else self.min_memory_bytes


class FitSubject(Protocol):
    """What :func:`fit` reads of a device (``exo.gpu.state.DeviceState`` is one).

    ``blocked``, ``hot``, ``available`` and ``fresh_until`` are the request-independent verdict,
    computed by :func:`device_verdict` and ``exo.gpu.policy.fresh_until`` when the device
    changes; ``free`` is ``free_memory_bytes(total, used, reserved)``; ``held`` maps a workload
    to what it holds of ``reserved``.
    """

    @property
    def device_id(self) -> str: ...
    @property
    def info(self) -> GPUDeviceInfo: ...
    @property
    def labels(self) -> dict[str, str]: ...
    @property
    def used(self) -> int: ...
    @property
    def reserved(self) -> int: ...
    @property
    def held(self) -> dict[str, int] | None: ...
    @property
    def free(self) -> int: ...
    @property
    def sample_time(self) -> float | None: ...
    @property
    def temperature(self) -> float | None: ...
    @property
    def ready_detail(self) -> str: ...
    @property
    def fresh_until(self) -> float: ...
    @property
    def blocked(self) -> tuple[FitReason, ...]: ...
    @property
    def hot(self) -> bool: ...
    @property
    def available(self) -> bool: ...


S = TypeVar("S", bound=FitSubject)

#: Every combination of the clock-independent device rules, in rule order (no allocation).
_BLOCKED: dict[tuple[bool, bool, bool], tuple[FitReason, ...]] = {
    (cordoned, not_ready, no_metrics): tuple(
        reason for reason, holds in ((FitReason.CORDONED, cordoned),
                                     (FitReason.NOT_READY, not_ready),
                                     (FitReason.NO_METRICS, no_metrics)) if holds)
    for cordoned in (False, True) for not_ready in (False, True) for no_metrics in (False, True)
}


def device_verdict(cordoned: bool, ready: bool, has_metrics: bool,
                   temperature_celsius: float | None,
                   policy: SelectionPolicy = DEFAULT_POLICY) -> tuple[tuple[FitReason, ...], bool]:
    """The request-independent rules that do not depend on the clock: which of ``Cordoned``,
    ``NotReady`` and ``NoMetrics`` hold (in order), and whether ``TooHot`` does."""
    return _BLOCKED[cordoned, not ready, not has_metrics], too_hot(temperature_celsius, policy)


def _device_result(device: FitSubject, reason: FitReason, policy: SelectionPolicy) -> FitResult:
    """The result of one of the device rules, with its numbers."""
    if reason is FitReason.NOT_READY:
        return FitResult(reason, device.device_id, detail=device.ready_detail)
    if reason is FitReason.TOO_HOT:
        return FitResult(reason, device.device_id, value=device.temperature or 0.0,
                         limit=policy.thermal_max_celsius)
    return FitResult(reason, device.device_id)


def held_by_others(device: FitSubject, request: FitRequest) -> int:
    """What others hold of the device: all its reservations but the request's workload's."""
    held = device.held
    if request.workload is None or held is None:
        return device.reserved
    return device.reserved - held.get(request.workload, 0)


def free_for(device: FitSubject, request: FitRequest, reserved: int | None = None) -> int:
    """Free memory ``request`` could get on ``device`` (what others hold counts, measured use
    counts)."""
    others = held_by_others(device, request) if reserved is None else reserved
    if others == device.reserved:
        return device.free
    return free_memory_bytes(device.info.memory_total_bytes, device.used, others)


def _rules(device: FitSubject, request: FitRequest, now: float | None,
           policy: SelectionPolicy, reserved: int | None, every: bool) -> list[FitResult]:
    """Every rule once, in order; stops at the first that holds unless ``every``."""
    out: list[FitResult] = []
    name = device.device_id
    planned = request.planned
    if planned is not None and name not in planned:
        out.append(FitResult(FitReason.NOT_PLANNED, name, detail=",".join(sorted(planned))))
        if not every:
            return out
    blocked = device.blocked
    if blocked:
        if not every:
            return [_device_result(device, blocked[0], policy)]
        out.extend(_device_result(device, reason, policy) for reason in blocked)
    sample_time = device.sample_time
    if now is not None and sample_time is not None and device.fresh_until < now:
        out.append(FitResult(FitReason.STALE, name, value=now - sample_time,
                             limit=policy.stale_after_seconds))
        if not every:
            return out
    if device.hot:
        out.append(_device_result(device, FitReason.TOO_HOT, policy))
        if not every:
            return out
    info = device.info
    if request.vendor is not None and info.vendor is not request.vendor:
        out.append(FitResult(FitReason.VENDOR_MISMATCH, name, detail=(
            f"{info.vendor.value} does not match the requested {request.vendor.value}")))
        if not every:
            return out
    if request.labels is not None:
        labels = device.labels
        missing = {k: v for k, v in request.labels.items() if labels.get(k) != v}
        if missing:
            out.append(FitResult(FitReason.SELECTOR_MISMATCH, name, detail=(
                f"device labels do not match {dict(sorted(missing.items()))}")))
            if not every:
                return out
    if request.selector is not None and not request.selector.matches(device.labels):
        out.append(FitResult(FitReason.SELECTOR_MISMATCH, name, detail=(
            f"device labels do not match the selector {request.selector.describe()}")))
        if not every:
            return out
    if request.predicate is not None and not request.predicate(info):
        out.append(FitResult(FitReason.SELECTOR_MISMATCH, name,
                             detail="excluded by the request's predicate"))
        if not every:
            return out
    if request.nodes is not None and (info.node or "") not in request.nodes:
        out.append(FitResult(FitReason.OUTSIDE_DOMAIN, name, detail=(
            f"node {info.node} is outside {request.domain or 'the domain chosen for it'}")))
        if not every:
            return out
    if sample_time is None:
        return out  # free memory is unknown without a sample (NoMetrics says so)
    total = info.memory_total_bytes
    if reserved is not None:
        others = reserved
    elif request.workload is None or device.held is None:
        others = device.reserved
    else:
        others = held_by_others(device, request)
    if request.whole_device:
        if others > 0:
            out.append(FitResult(FitReason.IN_USE, name, total_bytes=total,
                                 reserved_bytes=others))
        return out
    need = request.min_memory_bytes
    if need <= 0:
        return out
    if need > total:
        out.append(FitResult(FitReason.TOO_SMALL, name, requested_bytes=need,
                             total_bytes=total))
        return out
    free = device.free if others == device.reserved else \
        free_memory_bytes(total, device.used, others)  # free_for(), inlined
    if free < need:
        out.append(FitResult(FitReason.INSUFFICIENT_MEMORY, name, requested_bytes=need,
                             free_bytes=free, total_bytes=total, reserved_bytes=others))
    return out


def fit(device: FitSubject, request: FitRequest, now: float | None,
        policy: SelectionPolicy = DEFAULT_POLICY, reserved: int | None = None) -> FitResult:
    """Whether ``device`` can take ``request`` at ``now`` (None: no clock, nothing is stale).

    ``reserved`` replaces what others hold of the device (preemption asks "and without these
    pods?"); by default it is :func:`held_by_others`.
    """
    found = _rules(device, request, now, policy, reserved, every=False)
    return found[0] if found else FITS


def explain(device: FitSubject, request: FitRequest, now: float | None,
            policy: SelectionPolicy = DEFAULT_POLICY,
            reserved: int | None = None) -> tuple[FitResult, ...]:
    """Every rule that refuses ``device`` (empty when it fits); the first is :func:`fit`'s."""
    return tuple(_rules(device, request, now, policy, reserved, every=True))


@dataclass(slots=True)
class Choice(Generic[S]):
    """The devices a request would get among a sequence (a node's, best first), or why not.

    ``devices`` holds at most ``request.devices`` entries. ``rejections`` is filled only when
    there are fewer, with one result per refused device. With several devices of a node whose
    links were given, ``weakest`` is the chosen set's weakest pair score and :attr:`links` its
    full ``exo.gpu.topology.set_score`` (worked out when asked: bind and plans explain it, the
    filter only needs ``weakest``).
    """

    devices: list[S]
    rejections: tuple[FitResult, ...] = ()
    weakest: int | None = None
    topology: NodeTopology | None = field(default=None, repr=False)
    _links: SetScore | None = field(default=None, repr=False)

    @property
    def resolvable(self) -> bool:
        return any(r.resolvable for r in self.rejections)

    @property
    def links(self) -> SetScore | None:
        """How well the chosen set is linked, pair by pair (None for one device or no links
        given)."""
        if self._links is None and self.topology is not None and len(self.devices) > 1:
            self._links = set_score([d.device_id for d in self.devices], self.topology)
        return self._links

    @property
    def quality(self) -> float:
        """``SetScore.quality`` of the chosen set (0 without links)."""
        return min(1.0, self.weakest / FABRIC_SCORE_PER_LINK) if self.weakest else 0.0


def choose(devices: Sequence[S], request: FitRequest, now: float | None,
           policy: SelectionPolicy = DEFAULT_POLICY,
           reserved: Mapping[str, int] | None = None,
           topology: NodeTopology | None = None) -> Choice[S]:
    """The devices of ``devices`` (one node's, best score first) that ``request`` gets, or,
    when fewer than ``request.devices`` fit, every refusal.

    ``reserved``: per device, what others hold instead of the ledger's figure (preemption).
    ``topology``: the node's links. One device without links or preferred affinity: the first
    that fits; otherwise every device is judged and ``exo.gpu.topology.best_set`` picks the set
    (for one device: the fitting device of lowest ``isolation_cost``), preferred affinity first
    (see the module docstring).
    A simple request (a memory size and nothing else) takes a fast path over the precomputed
    verdict: ``available and fresh_until >= now and free >= min_memory_bytes`` is :func:`fit`
    for such a request, written out; so is ``available and fresh_until >= now and reserved ==
    0`` for the whole device and nothing else.
    """
    wanted = request.devices
    linked = topology is not None and topology.linked
    if linked or request.prefer is not None or wanted > 1:
        fitting = _fitting(devices, request, now, policy, reserved)
        if len(fitting) >= wanted:
            return _pick(devices, fitting, request, reserved, topology)
        return Choice(fitting, _rejections(devices, request, now, policy, reserved))
    # One device (a set takes the path above): the first that fits.
    if request.simple and reserved is None:
        need = request.min_memory_bytes
        at = -math.inf if now is None else now
        for device in devices:
            if device.available and device.fresh_until >= at and device.free >= need:
                return Choice([device])
    elif request.whole and reserved is None:
        at = -math.inf if now is None else now
        for device in devices:
            if device.available and device.fresh_until >= at and not device.reserved:
                return Choice([device])
    else:
        for device in devices:
            held = None if reserved is None else reserved.get(device.device_id)
            if not _rules(device, request, now, policy, held, every=False):
                return Choice([device])
    return Choice([], _rejections(devices, request, now, policy, reserved))


def _fitting(devices: Sequence[S], request: FitRequest, now: float | None,
             policy: SelectionPolicy, reserved: Mapping[str, int] | None) -> list[S]:
    if reserved is None and (request.simple or request.whole):
        at = -math.inf if now is None else now
        if request.whole:
            return [d for d in devices if d.available and d.fresh_until >= at and not d.reserved]
        need = request.min_memory_bytes
        return [d for d in devices if d.available and d.fresh_until >= at and d.free >= need]
    return [d for d in devices if not _rules(
        d, request, now, policy, None if reserved is None else reserved.get(d.device_id),
        every=False)]


def _rejections(devices: Sequence[S], request: FitRequest, now: float | None,
                policy: SelectionPolicy, reserved: Mapping[str, int] | None
                ) -> tuple[FitResult, ...]:
    """Why each device that does not fit does not (for a node that cannot take the request)."""
    rejections = []
    for device in devices:
        held = None if reserved is None else reserved.get(device.device_id)
        found = _rules(device, request, now, policy, held, every=False)
        if found:
            rejections.append(found[0])
    return tuple(rejections)


def _name(device: FitSubject) -> str:
    return device.device_id


def _pick(devices: Sequence[S], fitting: list[S], request: FitRequest,
          reserved: Mapping[str, int] | None, topology: NodeTopology | None) -> Choice[S]:
    """Enough devices fit: the set (or the one device) ``request`` gets among them."""
    prefer = request.prefer
    weights = None if prefer is None else [prefer.weight(d.labels) for d in fitting]
    if request.devices > 1:
        return _pick_set(fitting, request.devices, topology, weights)
    if topology is None or not topology.linked:
        return Choice(best_set(fitting, 1, _NO_LINKS, _name, weights))
    # One device on a linked node: the one whose removal breaks the fewest good sets.
    open_devices = [d.device_id for d in devices if d.available and (
        d.reserved if reserved is None else reserved.get(d.device_id, d.reserved)) == 0]
    opened = frozenset(open_devices)

    def key(i: int) -> tuple[int, int, int]:
        device = fitting[i]
        cost = isolation_cost(device.device_id, open_devices, topology) \
            if device.device_id in opened else 0
        return (-weights[i] if weights is not None else 0), cost, i

    return Choice([fitting[min(range(len(fitting)), key=key)]])


_NO_LINKS = NodeTopology()


def _pick_set(fitting: list[S], n: int, topology: NodeTopology | None,
              weights: list[int] | None) -> Choice[S]:
    """The best set of ``n`` among ``fitting``, all of one vendor (a process drives one
    vendor's devices together): per vendor its best set, then the best of those by the same
    keys as ``best_set`` (preference, total, weakest pair, earliest candidate)."""
    links = topology or _NO_LINKS
    groups: dict[Vendor, list[int]] = {}
    for i, device in enumerate(fitting):
        groups.setdefault(device.info.vendor, []).append(i)
    if len(groups) == 1:
        return _chosen(best_set(fitting, n, links, _name, weights), topology)
    best: tuple[tuple[int, int, int, int], list[S]] | None = None
    for members in groups.values():
        if len(members) < n:
            continue
        chosen = best_set([fitting[i] for i in members], n, links, _name,
                          None if weights is None else [weights[i] for i in members])
        total, weakest = set_totals([d.device_id for d in chosen], links)
        position = {id(fitting[i]): i for i in members}
        preferred = 0 if weights is None else sum(weights[position[id(d)]] for d in chosen)
        key = (-preferred, -total, -weakest, position[id(chosen[0])])
        if best is None or key < best[0]:
            best = (key, chosen)
    if best is not None:
        return _chosen(best[1], topology)
    largest = max(groups.values(), key=len)
    main = fitting[largest[0]].info.vendor.value
    return Choice([fitting[i] for i in largest], tuple(
        FitResult(FitReason.VENDOR_MISMATCH, d.device_id,
                  detail=f"{d.info.vendor.value} cannot join a set of {main} devices")
        for i, d in enumerate(fitting) if i not in largest))


def _chosen(chosen: list[S], topology: NodeTopology | None) -> Choice[S]:
    if topology is None or len(chosen) < 2:
        return Choice(chosen)
    return Choice(chosen, weakest=weakest_pair([d.device_id for d in chosen], topology),
                  topology=topology)


class RankedSubject(FitSubject, Protocol):
    """A device with its score and that score's extender priority
    (``exo.gpu.state.DeviceState`` is one)."""

    @property
    def score(self) -> float: ...

    @property
    def priority(self) -> int: ...


R = TypeVar("R", bound=RankedSubject)


def choice_rank(choice: Choice[R], request: FitRequest, in_domain: bool | None = None) -> float:
    """What a node is worth to ``request`` given its ``choice``, within 0..1 (0 when it cannot
    take the request). The only definition; the mean of the terms that apply::

        device     = the lowest score (exo.gpu.policy.score_device) of the chosen devices
        links      = choice.quality (SetScore.quality: the weakest pair against one link);
                     only for a request of several devices (0 when no link is reported)
        preference = matched preferred-affinity weight / (total weight * devices);
                     only when the request has preferred affinity
        domain     = 1 when the node lies in the topology domain the request's group already
                     uses, else 0; only when the caller says (``in_domain`` not None)

    A one-device request without preferences is worth its device's score, as before sets.
    """
    chosen = choice.devices
    if not chosen or len(chosen) < request.devices:
        return 0.0
    terms = [min(d.score for d in chosen)]
    if request.devices > 1:
        terms.append(choice.quality)
    prefer = request.prefer
    if prefer is not None and prefer.total > 0:
        matched = sum(prefer.weight(d.labels) for d in chosen)
        terms.append(matched / (prefer.total * len(chosen)))
    if in_domain is not None:
        terms.append(1.0 if in_domain else 0.0)
    return sum(terms) / len(terms)


def choice_priority(choice: Choice[R], request: FitRequest, in_domain: bool | None = None
                    ) -> int:
    """:func:`choice_rank` as kube-scheduler's integer extender priority 0..10."""
    if request.devices == 1 and request.prefer is None and in_domain is None:
        chosen = choice.devices  # worth its device's score: its priority, computed already
        return chosen[0].priority if chosen else 0
    return priority(choice_rank(choice, request, in_domain))
