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
- ``choose`` keeps a fast path for the common request (a memory size and nothing else,
  ``FitRequest.simple``); a request field that a rule reads must make the request not simple, or
  the rule must be added to the fast path too (``tests/test_fit.py`` compares the two);
- anything with the attributes of :class:`FitSubject` can be judged (a simulator's own device
  records); ``FitRequest.devices`` and :func:`choose` take N devices together, the place for
  device sets and topology.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, NamedTuple, Protocol, TypeVar

from exo.gpu.errors import InvalidRequestError
from exo.gpu.policy import DEFAULT_POLICY, SelectionPolicy, free_memory_bytes, too_hot
from exo.gpu.telemetry_protocol import GPUDeviceInfo, Vendor

__all__ = [
    "FITS",
    "Choice",
    "FitReason",
    "FitRequest",
    "FitResult",
    "FitSubject",
    "LabelMatcher",
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
        if reason is FitReason.SELECTOR_MISMATCH:
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
    #: Set by __post_init__: the request has nothing but a memory size (the fast path).
    simple: bool = field(default=False, init=False, compare=False, repr=False)
    #: Set by __post_init__: nothing but a vendor (any available device of it qualifies).
    trivial: bool = field(default=False, init=False, compare=False, repr=False)

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
        plain = not self.whole_device and self.labels is None and self.selector is None \
            and self.predicate is None and self.planned is None and self.workload is None
        object.__setattr__(self, "simple", plain and self.vendor is None)
        object.__setattr__(self, "trivial", plain and value == 0)

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

    ``devices`` holds at most ``request.devices`` entries: the search stops there.
    ``rejections`` is filled only when there are fewer, with one result per refused device.
    """

    devices: list[S]
    rejections: tuple[FitResult, ...] = ()

    @property
    def resolvable(self) -> bool:
        return any(r.resolvable for r in self.rejections)


def choose(devices: Sequence[S], request: FitRequest, now: float | None,
           policy: SelectionPolicy = DEFAULT_POLICY,
           reserved: Mapping[str, int] | None = None) -> Choice[S]:
    """The first ``request.devices`` devices of ``devices`` that fit (keep them best first), or,
    when there are not enough, every refusal.

    ``reserved``: per device, what others hold instead of the ledger's figure (preemption).
    A simple request (a memory size and nothing else) takes a fast path over the precomputed
    verdict: ``available and fresh_until >= now and free >= min_memory_bytes`` is :func:`fit`
    for such a request, written out.
    """
    chosen: list[S] = []
    wanted = request.devices
    if request.simple and reserved is None:
        need = request.min_memory_bytes
        at = -math.inf if now is None else now
        for device in devices:
            if device.available and device.fresh_until >= at and device.free >= need:
                chosen.append(device)
                if len(chosen) == wanted:
                    return Choice(chosen)
    else:
        for device in devices:
            held = None if reserved is None else reserved.get(device.device_id)
            if not _rules(device, request, now, policy, held, every=False):
                chosen.append(device)
                if len(chosen) == wanted:
                    return Choice(chosen)
    rejections = []
    for device in devices:  # not enough: say why for every device that does not fit
        held = None if reserved is None else reserved.get(device.device_id)
        found = _rules(device, request, now, policy, held, every=False)
        if found:
            rejections.append(found[0])
    return Choice(chosen, tuple(rejections))

