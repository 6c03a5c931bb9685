"""The selection policy's constants and formulas (DESIGN.md section 4), each written once.

- ``SelectionPolicy``: the named, tunable constants with their rationale.
- ``free_memory_bytes``: what "free memory" means everywhere (score, fit, explanations).
- ``score_device``: the score; its docstring is the formula.
- ``thermal_penalty`` and ``too_hot``: the thermal band, shared by the score and the fit rule.
- ``stale``: when a sample (or a heartbeat) is too old to decide on.
- ``extender_score``: a score as kube-scheduler's integer extender priority.

Nothing here knows about devices, requests or Kubernetes: ``exo.gpu.fit`` applies these rules to
a device and a request, ``exo.gpu.state`` keeps what they need per device. ``exo.gpu.selector``
re-exports the seed names (``SelectionPolicy``, ``score_device``, ...), so the original import
paths keep working.

A temperature of ``None`` means the hardware interface does not report one: no thermal penalty,
never ``TooHot``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from exo.gpu.errors import InvalidMetricsError, InvalidRequestError

__all__ = [
    "DEFAULT_POLICY",
    "ScoreBreakdown",
    "SelectionPolicy",
    "extender_score",
    "free_memory_bytes",
    "fresh_until",
    "priority",
    "score_device",
    "score_sample",
    "stale",
    "thermal_penalty",
    "too_hot",
]


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class SelectionPolicy:
    """Tunable constants of the selection policy. The defaults are those of the original design.

    - ``memory_weight`` 0.6 / ``compute_weight`` 0.4: free memory decides whether a workload fits
      at all, compute headroom only how fast it runs, so memory weighs more. With weights summing
      to 1 the unpenalized score already lies in 0..1.
    - ``thermal_start_celsius`` 75 / ``thermal_max_celsius`` 90 / ``max_thermal_penalty`` 0.5:
      below 75 C GPUs run at full clocks; towards 90 C they throttle, so the score falls linearly
      by up to 0.5 (enough to put a hot, idle device behind a cool, busier one); at 90 C and above
      the device is excluded.
    - ``reporting_interval_seconds`` 30: the exporter's heartbeat (DESIGN.md section 6): a device
      writes its status at least this often even when nothing changed. The exporter's
      ``--report-interval`` and the controller's ``--reporting-interval`` are this one setting
      (the chart's ``reportingInterval`` feeds both).
      ``stale_after_intervals`` 3: three missed heartbeats (90 s) before a device counts as gone,
      which tolerates one lost or delayed write without flapping.
    """

    memory_weight: float = 0.6
    compute_weight: float = 0.4
    thermal_start_celsius: float = 75.0
    thermal_max_celsius: float = 90.0
    max_thermal_penalty: float = 0.5
    reporting_interval_seconds: float = 30.0
    stale_after_intervals: float = 3.0

    def __post_init__(self) -> None:
        for name in (
            "memory_weight",
            "compute_weight",
            "thermal_start_celsius",
            "thermal_max_celsius",
            "max_thermal_penalty",
            "reporting_interval_seconds",
            "stale_after_intervals",
        ):
            if not _finite(getattr(self, name)):
                raise InvalidRequestError(
                    name, f"must be a finite number, got {getattr(self, name)!r}"
                )
        if self.memory_weight < 0 or self.compute_weight < 0:
            raise InvalidRequestError("memory_weight", "weights must not be negative")
        if self.memory_weight + self.compute_weight <= 0:
            raise InvalidRequestError("memory_weight", "memory and compute weights are both zero")
        if self.thermal_start_celsius >= self.thermal_max_celsius:
            raise InvalidRequestError(
                "thermal_start_celsius",
                f"must be below thermal_max_celsius ({self.thermal_max_celsius})",
            )
        if not 0 <= self.max_thermal_penalty <= 1:
            raise InvalidRequestError("max_thermal_penalty", "must lie within 0..1")
        if self.reporting_interval_seconds <= 0:
            raise InvalidRequestError("reporting_interval_seconds", "must be positive")
        if self.stale_after_intervals <= 0:
            raise InvalidRequestError("stale_after_intervals", "must be positive")

    @property
    def stale_after_seconds(self) -> float:
        """A device whose latest sample is older than this is stale (90 s by default)."""
        return self.reporting_interval_seconds * self.stale_after_intervals


DEFAULT_POLICY = SelectionPolicy()


@dataclass(frozen=True, slots=True)
class ScoreBreakdown:
    """A score and its terms: ``total = clamp(memory + compute - thermal, 0, 1)``.

    ``memory`` and ``compute`` are already weighted; ``thermal`` is the penalty subtracted.
    ``free_memory_bytes`` is the free memory the memory term was computed from (after
    reservations, never negative).
    """

    memory: float
    compute: float
    thermal: float
    total: float
    free_memory_bytes: int


def free_memory_bytes(memory_total_bytes: int, memory_used_bytes: int,
                      reserved_bytes: int = 0) -> int:
    """Free memory of a device, the only definition::

        free = clamp(total - max(measured used, reserved), 0, total)

    Reserved memory is memory promised to pods bound to the device and to planned tasks: it
    counts even before they allocate it, and measured use counts even when nothing was reserved
    (stray processes).
    """
    used = memory_used_bytes if memory_used_bytes > reserved_bytes else reserved_bytes
    if memory_total_bytes <= 0:
        return 0
    return min(max(memory_total_bytes - used, 0), memory_total_bytes)


def thermal_penalty(temperature_celsius: float | None,
                    policy: SelectionPolicy = DEFAULT_POLICY) -> float:
    """0 up to ``thermal_start``, rising linearly to ``max_thermal_penalty`` at ``thermal_max``;
    0 for an unknown temperature (``None``)."""
    if temperature_celsius is None:
        return 0.0
    start = policy.thermal_start_celsius
    if temperature_celsius <= start:
        return 0.0
    if temperature_celsius >= policy.thermal_max_celsius:
        return policy.max_thermal_penalty
    return (policy.max_thermal_penalty * (temperature_celsius - start)
            / (policy.thermal_max_celsius - start))


def too_hot(temperature_celsius: float | None, policy: SelectionPolicy = DEFAULT_POLICY) -> bool:
    """The ``TooHot`` limit: at or above ``thermal_max_celsius`` (never for ``None``)."""
    return temperature_celsius is not None and \
        temperature_celsius >= policy.thermal_max_celsius


def stale(timestamp: float, now: float | None,
          policy: SelectionPolicy | float = DEFAULT_POLICY) -> bool:
    """The ``Stale`` limit: ``timestamp`` (a sample's, or a heartbeat's) lies more than
    ``stale_after_seconds`` (or ``policy`` seconds, given as a number) before ``now``. Exactly
    at the limit is still fresh; without a clock nothing is stale."""
    return now is not None and fresh_until(timestamp, policy) < now


def fresh_until(timestamp: float, policy: SelectionPolicy | float = DEFAULT_POLICY) -> float:
    """The last moment a sample taken at ``timestamp`` still counts as fresh."""
    if isinstance(policy, SelectionPolicy):
        return timestamp + policy.stale_after_seconds
    return timestamp + policy


def score_device(
    memory_total_bytes: int,
    memory_used_bytes: int,
    compute_utilization_percent: float,
    temperature_celsius: float | None,
    reserved_bytes: int = 0,
    policy: SelectionPolicy = DEFAULT_POLICY,
) -> ScoreBreakdown:
    """Score one device. This is the only definition of the formula::

        free            = free_memory_bytes(total, used, reserved)
                        = clamp(total - max(memory_used_bytes, reserved_bytes), 0, total)
        memory          = memory_weight * free / memory_total_bytes                  (0.6 default)
        compute         = compute_weight * (1 - clamp(utilization, 0, 100) / 100)   (0.4 default)
        thermal         = 0                                   if temperature <= thermal_start
                        = max_thermal_penalty                 if temperature >= thermal_max
                        = max_thermal_penalty * (temperature - thermal_start)
                                              / (thermal_max - thermal_start)   otherwise
                        = 0                                   if the temperature is unknown
        total           = clamp(memory + compute - thermal, 0, 1)

    With the defaults: 75 C -> no penalty, 82.5 C -> 0.25, 90 C -> 0.5 (and excluded by the
    fit rules of ``exo.gpu.fit``, not by this function). Reserved memory is memory promised to
    pods bound to the device or to planned tasks: it counts even before they allocate it, and
    measured use counts even when nothing was reserved (stray processes).
    """
    if not _finite(compute_utilization_percent):
        raise InvalidMetricsError("compute_utilization_percent", "must be a finite number")
    if temperature_celsius is not None and not _finite(temperature_celsius):
        raise InvalidMetricsError("temperature_celsius", "must be a finite number")
    return score_sample(memory_total_bytes, memory_used_bytes, compute_utilization_percent,
                        temperature_celsius, reserved_bytes, policy)


def score_sample(memory_total_bytes: int, memory_used_bytes: int,
                 compute_utilization_percent: float, temperature_celsius: float | None,
                 reserved_bytes: int, policy: SelectionPolicy) -> ScoreBreakdown:
    """``score_device`` for figures already validated (a ``GPUMetrics`` sample's): the same
    formula without the checks, for the path every sample takes."""
    free = free_memory_bytes(memory_total_bytes, memory_used_bytes, reserved_bytes)
    memory_fraction = free / memory_total_bytes if memory_total_bytes > 0 else 0.0
    utilization = min(max(compute_utilization_percent, 0.0), 100.0)
    thermal = thermal_penalty(temperature_celsius, policy)
    memory = policy.memory_weight * memory_fraction
    compute = policy.compute_weight * (1.0 - utilization / 100.0)
    total = min(max(memory + compute - thermal, 0.0), 1.0)
    return ScoreBreakdown(memory, compute, thermal, total, free)


def extender_score(total: float, max_priority: int = 10) -> int:
    """Map a 0..1 score to the extender's integer priority 0..``max_priority`` (round half up)."""
    if not _finite(total):
        return 0
    return priority(total, max_priority)


def priority(total: float, max_priority: int = 10) -> int:
    """``extender_score`` of a score known to be finite (every ``ScoreBreakdown.total``)."""
    return min(max_priority, max(0, int(total * max_priority + 0.5)))
