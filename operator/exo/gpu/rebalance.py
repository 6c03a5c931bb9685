"""Dynamic load balancing: which devices stay overloaded, and which task moves where, or why not.

A placement is right when it is made; later a device heats up, an outside process takes its
memory, or a neighbour's job grows. This module holds the two pure decisions of rebalancing;
the controller's rebalancing loop (leader only, not built yet: ``docs/rebalancing.md`` says what
exists and what waits for it) feeds them and acts on their answers.

**Pressure** (:class:`PressureDetector`). A device report is *abnormal* when at least one cause of
:func:`pressure_causes` holds:

========================== ================================================================
cause                      holds when
========================== ================================================================
``UnexplainedMemory``      free memory (``exo.gpu.policy.free_memory_bytes``) is below the
                           floor (``memory_floor_percent`` of the total) while the ledger's
                           holds alone would leave at least the floor: use the ledger does not
                           explain (an outside process, a task over its request) took it
``TooHot``                 the temperature is at or above the thermal limit (the fit rule
                           ``exo.gpu.policy.too_hot``, 90 C by default)
``UnexplainedUtilization`` utilization exceeds what the device's tasks should cause by
                           ``utilization_excess_percent`` points or more (only when the caller
                           knows what they should cause)
========================== ================================================================

A device *enters* pressure after ``enter_readings`` abnormal reports in a row and *leaves* it
after ``recover_readings`` normal reports in a row; a report no newer than the last one seen
(a watch replaying an object) counts once.

**Moves** (:func:`plan_moves`). For each pod on a device under pressure, the rules below are
checked in order; the first that holds refuses the move with that :class:`MoveRefusal` (a
:class:`Refusal` with the scores before and, when a target was found, after). Otherwise the
plan holds a :class:`Move`: reserve ``reserve_bytes`` on the target, then evict the pod through
the Eviction API (so PodDisruptionBudgets hold).

==================== ===========================================================================
refusal              holds when
==================== ===========================================================================
``Disabled``         rebalancing is off for the cluster (``RebalanceConfig.enabled``)
``NotOptedIn``       neither the workload (``spec.rebalance.enabled``) nor the pod (annotation
                     ``gpu.exo.dev/rebalance: "true"``) opted in
``Unowned``          nothing recreates the pod once evicted (no workload, no controlling owner):
                     a move would lose it
``MultiDevice``      the pod holds several devices (moves of device sets are not planned)
``NotRunning``       the pod has not started (placing it is the scheduler's job)
``MinRuntime``       it has run less than ``min_runtime_seconds``
``SourceStale``      the device's latest sample is stale (``exo.gpu.policy.stale``): a decision
                     waits for fresh telemetry
``Cooldown``         its owner's last move started within ``cooldown_seconds``, or its owner
                     moves earlier in this plan
``NoTarget``         no other device fits (``exo.gpu.fit.fit``) that is not itself under
                     pressure, not a device the owner left within its cooldown (counted from
                     the end of that move: a slow move does not shorten the ban on going back),
                     and not on a node already at ``max_moves_per_node``
``BelowMargin``      the best target's score after taking the pod does not beat the source's
                     score by ``score_margin``
``PDB``              the PodDisruptionBudgets covering the pod allow no disruption now
``RateLimited``      ``max_moves_per_minute`` moves started cluster-wide within the last 60 s
``NodeBusy``         the source node already has ``max_moves_per_node`` moves in flight
==================== ===========================================================================

Policy checks come first (cheap, and a refusal the owner can act on), then the target search,
then the limits that only delay a move that is otherwise warranted, so their refusal carries the
target and both scores. Which device fits is asked of ``exo.gpu.fit`` alone (nothing here
compares memory or temperature with a fit limit); the score after a move is
``exo.gpu.policy.score_sample`` with the pod's reservation added to the target.

Every figure (:class:`RebalanceConfig`) has a named default with its reason and bounds
(:data:`BOUNDS`) that the controller's flags, the chart's schema and the ``GPUWorkload`` schema
use.

Pure: no I/O and no clock (callers pass ``now``). The detector and the history live in the
leader's memory. After a restart the detector starts empty, so a device needs
``enter_readings`` fresh reports before anything moves (a restart delays a move, never causes
one); the history (cooldowns, devices left, moves in flight) must be rebuilt from the API
(``MoveHistory(records)``) before the first plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar

from exo.gpu.errors import InvalidRequestError
from exo.gpu.fit import FitRequest, FitSubject, fit, held_by_others
from exo.gpu.policy import (
    DEFAULT_POLICY,
    SelectionPolicy,
    free_memory_bytes,
    score_sample,
    stale,
    too_hot,
)
from exo.gpu.telemetry_protocol import GPUMetrics

__all__ = [
    "BOUNDS",
    "DEFAULT_CONFIG",
    "RATE_WINDOW_SECONDS",
    "Move",
    "MoveCandidate",
    "MoveHistory",
    "MoveRecord",
    "MoveRefusal",
    "PressureCause",
    "PressureDetector",
    "PressureState",
    "RebalanceConfig",
    "RebalanceDevice",
    "RebalancePlan",
    "RebalanceSettings",
    "Refusal",
    "TargetExclusion",
    "TargetRejection",
    "plan_moves",
    "pressure_causes",
]

#: The window of ``max_moves_per_minute``.
RATE_WINDOW_SECONDS = 60.0

#: Accepted range of each figure of :class:`RebalanceConfig` (inclusive). The controller's flags,
#: the chart's values schema and the ``GPUWorkload`` schema (``spec.rebalance``) use these.
BOUNDS: dict[str, tuple[int | float, int | float]] = {
    "enter_readings": (2, 100),
    "recover_readings": (1, 100),
    "memory_floor_percent": (1.0, 50.0),
    "utilization_excess_percent": (10.0, 100.0),
    "score_margin": (0.01, 1.0),
    "cooldown_seconds": (60, 86_400),
    "min_runtime_seconds": (0, 86_400),
    "max_moves_per_minute": (1, 1000),
    "max_moves_per_node": (1, 64),
}


def _check(name: str, value: object) -> None:
    """Raise ``InvalidRequestError(name, ...)`` unless ``value`` lies within ``BOUNDS[name]``
    (and is an integer where the bound is)."""
    low, high = BOUNDS[name]
    integer = isinstance(low, int)
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            integer and not isinstance(value, int)) or not math.isfinite(value):
        kind = "an integer" if integer else "a finite number"
        raise InvalidRequestError(name, f"must be {kind}, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequestError(name, f"must lie within {low}..{high}, got {value}")


@dataclass(frozen=True, slots=True)
class RebalanceConfig:
    """The cluster's rebalancing figures (controller flags ``--rebalance-*``, chart values
    ``controller.rebalance``). Every default and its reason:

    - ``enabled`` True: workloads and pods opt in one by one, so the cluster switch is on; it
      is the operator's way to stop every move at once.
    - ``enter_readings`` 5 / ``recover_readings`` 3: a device is under pressure after 5
      abnormal reports in a row and recovers after 3 normal ones (Koordinator's LowNodeLoad
      anomaly detector uses the same figures). One hot or full sample is noise; five in a row
      (at least 25 s at the exporter's fastest write rate, minutes at its heartbeat) is a
      state. Recovery needs fewer, since leaving pressure only stops moves.
    - ``memory_floor_percent`` 10: a device with less than a tenth of its memory free cannot
      absorb a task's allocation spike; the floor applies only to memory the ledger does not
      explain, so a device full of its own reservations is never "under pressure".
    - ``utilization_excess_percent`` 40: utilization samples of a busy device swing by tens of
      points within seconds; 40 points above what the device's tasks should cause is a second
      job, not jitter.
    - ``score_margin`` 0.15: a move costs a restart, so the target must be clearly better. The
      noise of one report moves a score by a few hundredths (10 % of utilization is 0.04 of
      the 0.4 compute weight), and 0.15 is more than three times that.
    - ``cooldown_seconds`` 300: one move per workload per 5 minutes, and no move back to a
      device it left within that time (Koordinator's default; descheduler users report
      eviction loops without one). At least 60 s: less is shorter than the time the detector
      needs to see a device recover.
    - ``min_runtime_seconds`` 120: a pod that has just started has paid its start-up (image
      pull, model load); moving it at once wastes that and hides whether the device's state was
      caused by the start-up itself.
    - ``max_moves_per_minute`` 5: moves started cluster-wide per minute. A cluster-wide fault
      (a cooling failure in a rack) must not turn into an eviction storm; five a minute still
      empties a hot node of eight GPUs within two minutes.
    - ``max_moves_per_node`` 2: moves in flight from or to one node at once (Koordinator's
      MaxMigratingPerNode), so a node is never drained while its replacement capacity is still
      starting.
    """

    enabled: bool = True
    enter_readings: int = 5
    recover_readings: int = 3
    memory_floor_percent: float = 10.0
    utilization_excess_percent: float = 40.0
    score_margin: float = 0.15
    cooldown_seconds: int = 300
    min_runtime_seconds: int = 120
    max_moves_per_minute: int = 5
    max_moves_per_node: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise InvalidRequestError("enabled", f"must be True or False, got {self.enabled!r}")
        for name in BOUNDS:
            _check(name, getattr(self, name))

    def settings(self, enabled: bool, min_runtime_seconds: int | None = None,
                 cooldown_seconds: int | None = None) -> RebalanceSettings:
        """One workload's (or pod's) settings: its own figures where it names them, the
        cluster's otherwise. Bad figures raise ``InvalidRequestError`` naming the field."""
        if not isinstance(enabled, bool):
            raise InvalidRequestError("enabled", f"must be True or False, got {enabled!r}")
        runtime = self.min_runtime_seconds if min_runtime_seconds is None else min_runtime_seconds
        cooldown = self.cooldown_seconds if cooldown_seconds is None else cooldown_seconds
        _check("min_runtime_seconds", runtime)
        _check("cooldown_seconds", cooldown)
        return RebalanceSettings(enabled, runtime, cooldown)


#: The defaults.
DEFAULT_CONFIG = RebalanceConfig()


@dataclass(frozen=True, slots=True)
class RebalanceSettings:
    """What one workload (or pod) asked for: opted in, and its own minimum runtime and cooldown
    (the cluster's where it named none; :meth:`RebalanceConfig.settings`)."""

    enabled: bool
    min_runtime_seconds: int
    cooldown_seconds: int


# ------------------------------------------------------------------------------------ pressure
class PressureCause(StrEnum):
    """Why a report is abnormal (module docstring, first table)."""

    UNEXPLAINED_MEMORY = "UnexplainedMemory"
    TOO_HOT = "TooHot"
    UNEXPLAINED_UTILIZATION = "UnexplainedUtilization"


def pressure_causes(metrics: GPUMetrics, reserved_bytes: int,
                    expected_utilization_percent: float | None = None,
                    config: RebalanceConfig = DEFAULT_CONFIG,
                    policy: SelectionPolicy = DEFAULT_POLICY) -> frozenset[PressureCause]:
    """The causes that make one report abnormal (empty: a normal report).

    ``reserved_bytes`` is what the ledger holds on the device; ``expected_utilization_percent``
    what its tasks should cause (None: unknown, the utilization cause does not apply)::

        UnexplainedMemory      free(total, used, reserved) < floor <= free(total, 0, reserved)
                               floor = memory_floor_percent / 100 * total
        TooHot                 too_hot(temperature)
        UnexplainedUtilization utilization - expected >= utilization_excess_percent
    """
    causes: set[PressureCause] = set()
    total = metrics.memory_total_bytes
    floor = total * config.memory_floor_percent / 100.0
    if free_memory_bytes(total, metrics.memory_used_bytes, reserved_bytes) < floor \
            <= free_memory_bytes(total, 0, reserved_bytes):
        causes.add(PressureCause.UNEXPLAINED_MEMORY)
    if too_hot(metrics.temperature_celsius, policy):
        causes.add(PressureCause.TOO_HOT)
    if expected_utilization_percent is not None and (
            metrics.compute_utilization_percent - expected_utilization_percent
            >= config.utilization_excess_percent):
        causes.add(PressureCause.UNEXPLAINED_UTILIZATION)
    return frozenset(causes)


@dataclass(frozen=True, slots=True)
class PressureState:
    """Where one device stands after its latest report.

    ``causes``: those of the latest report (empty when it was normal). ``since``: the time of the
    report that made the device enter pressure (None when not under pressure). ``changed``: the
    report just observed made it enter or leave pressure.
    """

    device: str
    under_pressure: bool = False
    causes: frozenset[PressureCause] = frozenset()
    abnormal_streak: int = 0
    normal_streak: int = 0
    since: float | None = None
    last_report: float | None = None
    changed: bool = False


class PressureDetector:
    """Pressure per device over its consecutive reports (module docstring). Not thread-safe:
    one loop owns it."""

    def __init__(self, config: RebalanceConfig = DEFAULT_CONFIG,
                 policy: SelectionPolicy = DEFAULT_POLICY) -> None:
        self.config = config
        self.policy = policy
        self._states: dict[str, PressureState] = {}

    def observe(self, metrics: GPUMetrics, reserved_bytes: int = 0,
                expected_utilization_percent: float | None = None) -> PressureState:
        """Count one report of ``metrics.device_id``; a report no newer than the last one seen
        changes nothing."""
        device = metrics.device_id
        old = self._states.get(device) or PressureState(device)
        if old.last_report is not None and metrics.timestamp <= old.last_report:
            return PressureState(device, old.under_pressure, old.causes, old.abnormal_streak,
                                 old.normal_streak, old.since, old.last_report, changed=False)
        causes = pressure_causes(metrics, reserved_bytes, expected_utilization_percent,
                                 self.config, self.policy)
        abnormal = old.abnormal_streak + 1 if causes else 0
        normal = 0 if causes else old.normal_streak + 1
        under, since = old.under_pressure, old.since
        if not under and abnormal >= self.config.enter_readings:
            under, since = True, metrics.timestamp
        elif under and normal >= self.config.recover_readings:
            under, since = False, None
        new = PressureState(device, under, causes, abnormal, normal, since, metrics.timestamp,
                            changed=under != old.under_pressure)
        self._states[device] = new
        return new

    def state(self, device: str) -> PressureState:
        return self._states.get(device) or PressureState(device)

    def under_pressure(self) -> dict[str, PressureState]:
        """The devices under pressure now."""
        return {name: s for name, s in self._states.items() if s.under_pressure}

    def forget(self, device: str) -> None:
        """Drop a device (it was removed); it starts over if it comes back."""
        self._states.pop(device, None)


# -------------------------------------------------------------------------------------- moves
class MoveRefusal(StrEnum):
    """Why a pod on a device under pressure is not moved (module docstring, second table), in
    the order the rules are checked."""

    DISABLED = "Disabled"
    NOT_OPTED_IN = "NotOptedIn"
    UNOWNED = "Unowned"
    MULTI_DEVICE = "MultiDevice"
    NOT_RUNNING = "NotRunning"
    MIN_RUNTIME = "MinRuntime"
    SOURCE_STALE = "SourceStale"
    COOLDOWN = "Cooldown"
    NO_TARGET = "NoTarget"
    BELOW_MARGIN = "BelowMargin"
    PDB = "PDB"
    RATE_LIMITED = "RateLimited"
    NODE_BUSY = "NodeBusy"


class TargetExclusion(StrEnum):
    """Why a device is not a target before the fit is asked (the fit's own reasons are
    ``exo.gpu.fit.FitReason``)."""

    SOURCE = "Source"
    UNDER_PRESSURE = "UnderPressure"
    LEFT_RECENTLY = "LeftRecently"
    NODE_BUSY = "NodeBusy"


class RebalanceDevice(FitSubject, Protocol):
    """What planning reads of a device (``exo.gpu.state.DeviceState`` is one)."""

    @property
    def node(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def metrics(self) -> GPUMetrics | None: ...


D = TypeVar("D", bound=RebalanceDevice)


@dataclass(frozen=True, slots=True)
class MoveCandidate:
    """A running pod the rebalancer could move, as the loop sees it.

    - ``owner``: who the cooldown belongs to: the workload (``namespace/name``), or the pod's
      controlling owner (a ReplicaSet, a Job); None when nothing recreates the pod.
    - ``devices``: the devices it holds (one, for a move to be planned).
    - ``settings``: its opt-in and figures (:meth:`RebalanceConfig.settings`).
    - ``request``: what a target must offer it (``FitRequest.workload`` set to its workload, so
      what the workload holds does not count against it).
    - ``started_at``: when it started running (None: not running).
    - ``disruptions_allowed``: what its PodDisruptionBudgets allow now (None: none covers it).
    """

    pod: str
    owner: str | None
    devices: tuple[str, ...]
    settings: RebalanceSettings
    request: FitRequest
    started_at: float | None
    workload: str | None = None
    tasks: tuple[str, ...] = ()
    disruptions_allowed: int | None = None

    @property
    def device(self) -> str:
        return self.devices[0] if self.devices else ""


@dataclass(frozen=True, slots=True)
class TargetRejection:
    """A device that is not a target for a candidate: ``reason`` is a ``FitReason`` or a
    :class:`TargetExclusion` value, ``message`` its sentence."""

    device: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Move:
    """Reserve ``reserve_bytes`` on ``target``, then evict ``pod`` from ``source``.

    ``before``: the source's score now; ``after``: the target's score with the pod's
    reservation added."""

    pod: str
    owner: str
    workload: str | None
    tasks: tuple[str, ...]
    source: str
    source_node: str
    target: str
    target_node: str
    reserve_bytes: int
    before: float
    after: float
    causes: frozenset[PressureCause]

    @property
    def message(self) -> str:
        return (f"moving {self.pod} from {self.source} (score {self.before:.2f}, "
                f"{', '.join(sorted(self.causes)) or 'under pressure'}) to {self.target} "
                f"(score {self.after:.2f} with it)")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A pod on a device under pressure that is not moved, and why."""

    pod: str
    owner: str | None
    device: str
    reason: MoveRefusal
    message: str
    before: float
    after: float | None = None
    target: str | None = None
    rejected: tuple[TargetRejection, ...] = ()


@dataclass(frozen=True, slots=True)
class RebalancePlan:
    moves: tuple[Move, ...] = ()
    refusals: tuple[Refusal, ...] = ()


@dataclass(frozen=True, slots=True)
class MoveRecord:
    """A move the loop started (``finished_at`` None: in flight)."""

    owner: str
    pod: str
    source: str
    source_node: str
    target: str
    target_node: str
    started_at: float
    finished_at: float | None = None


class MoveHistory:
    """The moves that limit the next ones: cooldowns, devices left, moves per minute, moves in
    flight per node. The loop records a move when it starts it (:meth:`start`) and when the pod
    runs on its target or the move is abandoned (:meth:`finish`)."""

    def __init__(self, records: Iterable[MoveRecord] = ()) -> None:
        self._records: list[MoveRecord] = sorted(records, key=lambda r: r.started_at)

    @property
    def records(self) -> tuple[MoveRecord, ...]:
        return tuple(self._records)

    def start(self, move: Move, now: float) -> MoveRecord:
        record = MoveRecord(move.owner, move.pod, move.source, move.source_node, move.target,
                            move.target_node, now)
        self._records.append(record)
        return record

    def finish(self, pod: str, now: float) -> None:
        """The move of ``pod`` in flight is over (done or abandoned)."""
        for i, record in enumerate(self._records):
            if record.pod == pod and record.finished_at is None:
                self._records[i] = MoveRecord(record.owner, record.pod, record.source,
                                              record.source_node, record.target,
                                              record.target_node, record.started_at, now)

    def last_move(self, owner: str) -> MoveRecord | None:
        return next((r for r in reversed(self._records) if r.owner == owner), None)

    def left_ago(self, owner: str, device: str, now: float) -> float | None:
        """Seconds since ``owner`` last left ``device`` (None: never). A pod leaves a device
        when its move finishes (the eviction went through and it runs elsewhere): a move still
        in flight has not left yet (0)."""
        for record in reversed(self._records):
            if record.owner == owner and record.source == device:
                return 0.0 if record.finished_at is None else now - record.finished_at
        return None

    def started_since(self, moment: float) -> int:
        """Moves started after ``moment``."""
        return sum(1 for r in self._records if r.started_at > moment)

    def in_flight(self) -> dict[str, int]:
        """Moves in flight per node (from or to it)."""
        counts: dict[str, int] = {}
        for record in self._records:
            if record.finished_at is None:
                for node in {record.source_node, record.target_node}:
                    counts[node] = counts.get(node, 0) + 1
        return counts

    def prune(self, before: float) -> None:
        """Forget finished moves started before ``before`` (older than every cooldown)."""
        self._records = [r for r in self._records
                         if r.finished_at is None or r.started_at >= before]


@dataclass(slots=True)
class _Round:
    """What the moves planned so far in one :func:`plan_moves` call add."""

    owners: set[str] = field(default_factory=set)
    nodes: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)
    moves: int = 0


def _first_policy_refusal(candidate: MoveCandidate, source: RebalanceDevice | None,
                          history: MoveHistory, round_: _Round, now: float,
                          config: RebalanceConfig, policy: SelectionPolicy
                          ) -> tuple[MoveRefusal, str] | None:
    settings = candidate.settings
    if not config.enabled:
        return MoveRefusal.DISABLED, "rebalancing is off for the cluster"
    if not settings.enabled:
        return MoveRefusal.NOT_OPTED_IN, ("neither its workload (spec.rebalance.enabled) nor "
                                          "the pod (gpu.exo.dev/rebalance) opted in")
    if candidate.owner is None:
        return MoveRefusal.UNOWNED, "nothing would recreate the pod once evicted"
    if len(candidate.devices) != 1 or candidate.request.devices != 1:
        return MoveRefusal.MULTI_DEVICE, (f"the pod holds {len(candidate.devices)} devices; "
                                          "only single-device pods are moved")
    if candidate.started_at is None:
        return MoveRefusal.NOT_RUNNING, "the pod is not running"
    ran = now - candidate.started_at
    if ran < settings.min_runtime_seconds:
        return MoveRefusal.MIN_RUNTIME, (f"running for {ran:.0f} s, less than "
                                         f"{settings.min_runtime_seconds} s")
    if source is None or source.sample_time is None \
            or stale(source.sample_time, now, policy):
        return MoveRefusal.SOURCE_STALE, f"no fresh sample of {candidate.device}"
    owner = candidate.owner
    if owner in round_.owners:
        return MoveRefusal.COOLDOWN, f"{owner} already moves in this round"
    last = history.last_move(owner)
    if last is not None and now - last.started_at < settings.cooldown_seconds:
        return MoveRefusal.COOLDOWN, (f"{owner} moved {now - last.started_at:.0f} s ago "
                                      f"(cooldown {settings.cooldown_seconds} s)")
    return None


def _after_score(device: RebalanceDevice, extra_bytes: int, policy: SelectionPolicy) -> float:
    """The device's score with ``extra_bytes`` more reserved on it."""
    metrics = device.metrics
    if metrics is None:
        return 0.0
    return score_sample(device.info.memory_total_bytes, metrics.memory_used_bytes,
                        metrics.compute_utilization_percent, metrics.temperature_celsius,
                        device.reserved + extra_bytes, policy).total


def _best_target(candidate: MoveCandidate, ranked: Sequence[D], pressure: Mapping[str, object],
                 history: MoveHistory, round_: _Round, in_flight: Mapping[str, int],
                 now: float, config: RebalanceConfig, policy: SelectionPolicy
                 ) -> tuple[D | None, float, tuple[TargetRejection, ...]]:
    """The fitting device with the best score after taking the candidate (ties by name), its
    score, and why every other device was not one."""
    assert candidate.owner is not None
    request = candidate.request
    rejected: list[TargetRejection] = []
    best: D | None = None
    best_after = -1.0
    cooldown = candidate.settings.cooldown_seconds
    for device in ranked:
        name = device.device_id
        if name == candidate.device:
            rejected.append(TargetRejection(name, TargetExclusion.SOURCE, "the pod runs there"))
            continue
        if name in pressure:
            rejected.append(TargetRejection(name, TargetExclusion.UNDER_PRESSURE,
                                            "under pressure itself"))
            continue
        left = history.left_ago(candidate.owner, name, now)
        if left is not None and left < cooldown:
            rejected.append(TargetRejection(name, TargetExclusion.LEFT_RECENTLY, (
                f"{candidate.owner} left it {left:.0f} s ago (cooldown {cooldown} s)")))
            continue
        busy = in_flight.get(device.node, 0) + round_.nodes.get(device.node, 0)
        if busy >= config.max_moves_per_node:
            rejected.append(TargetRejection(name, TargetExclusion.NODE_BUSY, (
                f"node {device.node} has {busy} moves in flight")))
            continue
        extra = round_.reserved.get(name, 0)
        reserved = held_by_others(device, request) + extra if extra else None
        result = fit(device, request, now, policy, reserved=reserved)
        if not result.fits:
            rejected.append(TargetRejection(name, str(result.reason), result.message))
            continue
        after = _after_score(device, extra + request.reserves(device.info.memory_total_bytes),
                             policy)
        if after > best_after:  # ranked is in name order among equals: the first wins ties
            best, best_after = device, after
    return best, best_after, tuple(rejected)


def _delay(candidate: MoveCandidate, source: RebalanceDevice, target: RebalanceDevice,
           before: float, after: float, recent: int, node_busy: int, config: RebalanceConfig
           ) -> tuple[MoveRefusal, str] | None:
    """The rules checked once a target is found: the margin, then what only delays a move."""
    if after - before < config.score_margin:
        return MoveRefusal.BELOW_MARGIN, (
            f"best target {target.device_id} scores {after:.2f} with it, less than "
            f"{config.score_margin} above {before:.2f}")
    if candidate.disruptions_allowed is not None and candidate.disruptions_allowed <= 0:
        return MoveRefusal.PDB, "its PodDisruptionBudgets allow no disruption now"
    if recent >= config.max_moves_per_minute:
        return MoveRefusal.RATE_LIMITED, (
            f"{recent} moves started in the last {RATE_WINDOW_SECONDS:.0f} s (at most "
            f"{config.max_moves_per_minute})")
    if node_busy >= config.max_moves_per_node:
        return MoveRefusal.NODE_BUSY, (
            f"node {source.node} has {node_busy} moves in flight (at most "
            f"{config.max_moves_per_node})")
    return None


def plan_moves(candidates: Iterable[MoveCandidate], devices: Iterable[D],
               pressure: Mapping[str, PressureState], history: MoveHistory, now: float,
               config: RebalanceConfig = DEFAULT_CONFIG,
               policy: SelectionPolicy = DEFAULT_POLICY) -> RebalancePlan:
    """The moves to make now and the refusals, for the candidates on devices in ``pressure``
    (``PressureDetector.under_pressure()``); candidates elsewhere are left alone and not
    reported. Deterministic: candidates are taken by device, then pod name.

    Moves planned earlier in the call count against the later ones (owner, rates, nodes, and
    the memory reserved on a target)."""
    by_name = {d.device_id: d for d in devices}
    ranked = sorted(by_name.values(), key=lambda d: d.device_id)
    in_flight = history.in_flight()
    recent = history.started_since(now - RATE_WINDOW_SECONDS)
    round_ = _Round()
    moves: list[Move] = []
    refusals: list[Refusal] = []
    for candidate in sorted((c for c in candidates if c.devices and c.device in pressure),
                            key=lambda c: (c.device, c.pod)):
        source = by_name.get(candidate.device)
        before = source.score if source is not None else 0.0
        refused = _first_policy_refusal(candidate, source, history, round_, now, config,
                                        policy)
        if refused is not None:
            refusals.append(Refusal(candidate.pod, candidate.owner, candidate.device,
                                    refused[0], refused[1], before))
            continue
        assert source is not None and candidate.owner is not None
        target, after, rejected = _best_target(candidate, ranked, pressure, history, round_,
                                               in_flight, now, config, policy)
        if target is None:
            refusals.append(Refusal(candidate.pod, candidate.owner, candidate.device,
                                    MoveRefusal.NO_TARGET,
                                    f"no other device takes it ({len(rejected)} refused)", before,
                                    rejected=rejected))
            continue
        delayed = _delay(candidate, source, target, before, after, recent + round_.moves,
                         in_flight.get(source.node, 0) + round_.nodes.get(source.node, 0),
                         config)
        if delayed is not None:
            refusals.append(Refusal(candidate.pod, candidate.owner, candidate.device,
                                    delayed[0], delayed[1], before, after, target.device_id,
                                    rejected))
            continue
        reserve = candidate.request.reserves(target.info.memory_total_bytes)
        move = Move(candidate.pod, candidate.owner, candidate.workload, candidate.tasks,
                    candidate.device, source.node, target.device_id, target.node, reserve,
                    before, after, pressure[candidate.device].causes)
        moves.append(move)
        round_.owners.add(candidate.owner)
        round_.moves += 1
        for node in {source.node, target.node}:
            round_.nodes[node] = round_.nodes.get(node, 0) + 1
        round_.reserved[target.device_id] = round_.reserved.get(target.device_id, 0) + reserve
    return RebalancePlan(tuple(moves), tuple(refusals))

