"""Splitting a workload's tasks across devices: the distribution policy of DESIGN.md section 5.

Input: the tasks (any iterable; order matters), the devices in *device order* (best score first,
ties by id, as ``DeviceSelector.eligible_in_order`` returns them), a strategy, optional capacity
weights and optional per-device caps. Output: ``{device_id: [tasks]}`` with every given device as
a key (an empty list when it gets nothing), each device holding one contiguous run of the task
list, runs following device order. Every task is placed exactly once or, when that is impossible,
nothing is placed and an error says why.

- ``uniform``: counts differ by at most one; the extra tasks go to the first (best) devices.
- ``capacity``: counts proportional to the weights, rounded by largest remainder; equal
  remainders go to the earlier device in device order (higher score, then smaller id). A weight
  of zero takes nothing.
- ``max_items_per_device`` (one int for all, or a mapping device -> int; unlisted devices are
  uncapped): counts never exceed it. Devices whose proportional share would exceed their cap are
  filled to the cap and the rest is shared among the others in proportion to their weights
  (water-filling: a device saturates exactly when cap / weight <= remaining tasks / remaining
  weight, so the saturated devices are those with the smallest cap / weight). With caps,
  "differ by at most one" and "within one of the proportional share" hold among the devices
  below their cap.

Uniform is capacity with equal weights, and both are deterministic: the same input gives the same
output. The work is a few passes over the devices and one slice per device, no per-task loop.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from itertools import accumulate, chain, repeat
from operator import add, gt, itemgetter, sub
from typing import Any, TypeVar

from exo.gpu.errors import (
    DistributionError,
    InsufficientCapacityError,
    InvalidRequestError,
    UnknownDeviceError,
)

__all__ = [
    "Caps",
    "Strategy",
    "WorkloadDistributor",
    "counts_aligned",
    "largest_remainder",
    "parse_strategy",
    "validate_capacities",
    "validate_caps",
]

T = TypeVar("T")

Caps = int | Mapping[str, int] | None


class Strategy(StrEnum):
    UNIFORM = "uniform"
    CAPACITY = "capacity"


def parse_strategy(strategy: object) -> Strategy:
    """``strategy`` as a ``Strategy`` (case-insensitive), or ``InvalidRequestError``."""
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str):
        try:
            return Strategy(strategy.strip().lower())
        except ValueError:
            pass
    known = ", ".join(s.value for s in Strategy)
    raise InvalidRequestError("strategy", f"unknown strategy {strategy!r} (known: {known})")


def validate_capacities(capacities: Mapping[str, float]) -> dict[str, float]:
    """Check every weight is a finite number >= 0 and at least one is positive."""
    if not isinstance(capacities, Mapping):
        raise InvalidRequestError(
            "capacities", f"must be a mapping of device id to weight, got {capacities!r}"
        )
    checked: dict[str, float] = {}
    for device_id, weight in capacities.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise InvalidRequestError(
                "capacities", f"weight of {device_id!r} must be a number, got {weight!r}"
            )
        if not math.isfinite(weight):
            raise InvalidRequestError(
                "capacities", f"weight of {device_id!r} must be finite, got {weight!r}"
            )
        if weight < 0:
            raise InvalidRequestError(
                "capacities", f"weight of {device_id!r} must not be negative, got {weight!r}"
            )
        checked[device_id] = float(weight)
    if checked and not any(checked.values()):
        raise InvalidRequestError("capacities", "every weight is zero: no device could take a task")
    if not checked:
        raise InvalidRequestError("capacities", "names no device")
    return checked


def validate_caps(caps: Caps) -> int | dict[str, int] | None:
    """Check ``max_items_per_device``: None, an int >= 1, or a mapping of ints >= 1."""
    if caps is None:
        return None
    if isinstance(caps, Mapping):
        checked: dict[str, int] = {}
        for device_id, cap in caps.items():
            _check_cap(cap, f" for {device_id!r}")
            checked[device_id] = cap
        return checked
    _check_cap(caps, "")
    return caps


def _check_cap(cap: object, where: str) -> None:
    if isinstance(cap, bool) or not isinstance(cap, int):
        raise InvalidRequestError("max_items_per_device", f"must be an integer{where}, got {cap!r}")
    if cap < 1:
        raise InvalidRequestError("max_items_per_device", f"must be at least 1{where}, got {cap}")


class WorkloadDistributor:
    """Stateless: ``distribute`` is a pure function of its arguments."""

    def distribute(
        self,
        tasks: Iterable[T],
        devices: Sequence[str],
        strategy: Strategy | str = Strategy.UNIFORM,
        capacities: Mapping[str, float] | None = None,
        max_items_per_device: Caps = None,
    ) -> dict[str, list[T]]:
        """Place ``tasks`` on ``devices`` (best first); see the module docstring for the rules.

        ``capacities`` gives the weights of the capacity strategy (every device 1.0 when None);
        for both strategies a device missing from it, or with weight 0, takes nothing. Errors
        (``InvalidRequestError`` and subclasses) name the argument and the reason; nothing is
        placed then.
        """
        chosen = parse_strategy(strategy)
        task_list = tasks if isinstance(tasks, list) else list(tasks)
        device_list = list(devices)
        if len(set(device_list)) != len(device_list):
            dupes = sorted({d for d in device_list if device_list.count(d) > 1})
            raise InvalidRequestError("devices", f"device ids repeat: {dupes}")
        known = set(device_list)
        weights_by_id = validate_capacities(capacities) if capacities is not None else None
        if weights_by_id is not None:
            _check_known(weights_by_id, known, "capacities")
        caps = validate_caps(max_items_per_device)
        if isinstance(caps, dict):
            _check_known(caps, known, "max_items_per_device")
        counts = self.counts(len(task_list), device_list, chosen, weights_by_id, caps)
        return self.assign(task_list, device_list, counts)

    @staticmethod
    def assign(tasks: list[T], devices: Sequence[str], counts: Sequence[int]) -> dict[str, list[T]]:
        """Cut ``tasks`` into contiguous runs of ``counts`` in device order."""
        ends = list(accumulate(counts))
        return dict(
            zip(devices, map(tasks.__getitem__, map(slice, chain((0,), ends), ends)), strict=True)
        )

    def counts(
        self,
        task_count: int,
        devices: Sequence[str],
        strategy: Strategy,
        weights_by_id: Mapping[str, float] | None,
        caps: int | Mapping[str, int] | None,
    ) -> list[int]:
        """How many tasks each device of ``devices`` gets (arguments already validated)."""
        if weights_by_id is None:
            weights = None
        elif strategy is Strategy.UNIFORM:
            weights = [1.0 if weights_by_id.get(d, 0.0) > 0 else 0.0 for d in devices]
        else:
            weights = list(map(weights_by_id.get, devices, repeat(0.0)))
        if caps is None or isinstance(caps, int):
            cap_list: int | list[int | None] | None = caps
        else:
            cap_list = list(map(caps.get, devices))
        return counts_aligned(task_count, len(devices), weights, cap_list)


def counts_aligned(
    task_count: int,
    device_count: int,
    weights: list[float] | None,
    caps: int | list[int | None] | None,
) -> list[int]:
    """Task count per device position: the algorithm of the module docstring.

    ``weights`` (None: all equal) and ``caps`` (None: uncapped; an int for all; or a list with
    None for uncapped positions) are aligned with the device order; ties go to lower positions.
    """
    n = device_count
    if task_count == 0:
        return [0] * n
    if n == 0:
        raise DistributionError(
            "devices", f"{task_count} task(s) but no eligible device to place them on"
        )
    if caps is None and weights is None:
        # Equal weights over every device: the largest-remainder result in closed form.
        base, extra = divmod(task_count, n)
        return [base + 1] * extra + [base] * (n - extra)
    w = [1.0] * n if weights is None else weights
    if not any(w):
        raise DistributionError(
            "capacities", "every participating device has weight zero: no device can take a task"
        )
    cap_list: list[int | None] | None = [caps] * n if isinstance(caps, int) else caps
    saturated_counts: list[int] | None = None
    remaining = task_count
    if caps is not None:
        assert cap_list is not None
        if isinstance(caps, int):
            cap_total: int | None = caps * (n - w.count(0.0))
        else:
            capped = [c for c, wi in zip(cap_list, w, strict=True) if wi > 0]
            cap_total = None if None in capped else sum(c for c in capped if c is not None)
        if cap_total is not None and cap_total < task_count:
            raise InsufficientCapacityError(task_count, cap_total)
        remaining, w, saturated_counts = _water_fill(remaining, w, caps)
        if remaining == 0 and saturated_counts is not None:
            return saturated_counts
    counts, leftover = largest_remainder(remaining, w)
    if leftover < 0:
        # Floating-point shares summing a hair above ``remaining``: take back from the smallest
        # remainders.
        scale = remaining / sum(w)
        remainders = [wi * scale - c for wi, c in zip(w, counts, strict=True)]
        for i in sorted(range(n), key=remainders.__getitem__):
            if leftover == 0:
                break
            if counts[i] > 0:
                counts[i] -= 1
                leftover += 1
    if saturated_counts is not None:
        counts = list(map(add, saturated_counts, counts))
    if cap_list is not None and (
        max(counts) > caps
        if isinstance(caps, int)
        else any(c is not None and k > c for k, c in zip(counts, cap_list, strict=True))
    ):
        # Only reachable through floating-point rounding at a cap boundary.
        for i, cap in enumerate(cap_list):
            if cap is not None and counts[i] > cap:
                leftover += counts[i] - cap
                counts[i] = cap
    if leftover > 0:
        for i in range(n):
            if leftover == 0:
                break
            if w[i] <= 0 and counts[i] == 0:
                continue
            cap = cap_list[i] if cap_list is not None else None
            room = leftover if cap is None else min(leftover, cap - counts[i])
            if room > 0:
                counts[i] += room
                leftover -= room
    if leftover:
        raise InsufficientCapacityError(task_count, task_count - leftover)
    return counts


#: Up to this many distinct weights, shares are computed once per weight value (fleets have a
#: few models, so a few values) and spread with C-level passes.
GROUPED_WEIGHTS_LIMIT = 64


def largest_remainder(remaining: int, w: list[float]) -> tuple[list[int], int]:
    """Largest-remainder apportionment of ``remaining`` over weights ``w`` (some positive).

    Each position gets the floor of its exact share ``remaining * w / sum(w)``; the tasks left
    go one each to the largest fractional parts, ties to the lower position. Returns the counts
    and what is left to place (0, or negative in the rare case where floating-point shares sum a
    hair above ``remaining``). Both implementations below give the same result; the grouped
    one is faster when few distinct weights exist.
    """
    if len(set(w)) <= GROUPED_WEIGHTS_LIMIT:
        return _largest_remainder_grouped(remaining, w)
    return _largest_remainder_flat(remaining, w)


def _largest_remainder_flat(remaining: int, w: list[float]) -> tuple[list[int], int]:
    n = len(w)
    scale = remaining / sum(w)
    shares = [wi * scale for wi in w]
    counts = list(map(int, shares))
    leftover = remaining - sum(counts)
    if leftover <= 0:
        return counts, leftover
    remainders = list(map(sub, shares, counts))
    if leftover * 8 < n:
        threshold = heapq.nlargest(leftover, remainders)[-1]
    else:
        threshold = sorted(remainders, reverse=True)[leftover - 1]
    # Strictly above the threshold implies a positive share, hence a positive weight.
    above = list(map(gt, remainders, repeat(threshold)))
    leftover -= sum(above)
    counts = list(map(add, counts, above))
    return counts, _give_ties(counts, leftover, remainders, threshold, w)


def _largest_remainder_grouped(remaining: int, w: list[float]) -> tuple[list[int], int]:
    size_of = Counter(w)
    scale = remaining / sum(w)
    share_of = {wv: wv * scale for wv in size_of}
    floor_of = {wv: int(share) for wv, share in share_of.items()}
    leftover = remaining - sum(floor_of[wv] * size for wv, size in size_of.items())
    if leftover <= 0:
        return list(map(floor_of.__getitem__, w)), leftover
    remainder_of = {wv: share_of[wv] - floor_of[wv] for wv in share_of if wv > 0}
    # Walk the distinct remainders from the largest: whole groups get one more task while the
    # leftover covers them; the first group it does not cover sets the threshold.
    threshold = 0.0
    budget = leftover
    for value in sorted(set(remainder_of.values()), reverse=True):
        threshold = value
        size = sum(size_of[wv] for wv, r in remainder_of.items() if r == value)
        if size > budget:
            break
        budget -= size
    above = {wv: floor_of[wv] + 1 for wv, r in remainder_of.items() if r > threshold}
    counts = list(map({**floor_of, **above}.__getitem__, w))
    leftover -= sum(size_of[wv] for wv in above)
    if leftover <= 0:
        return counts, leftover
    tied = [wv for wv, r in remainder_of.items() if r == threshold]
    if len(tied) == 1:
        # One weight value holds the threshold: its positions, lowest first.
        i = -1
        while leftover > 0:
            i = w.index(tied[0], i + 1)
            counts[i] += 1
            leftover -= 1
        return counts, leftover
    every_remainder = {wv: share_of[wv] - floor_of[wv] for wv in share_of}
    remainders = list(map(every_remainder.__getitem__, w))
    return counts, _give_ties(counts, leftover, remainders, threshold, w)


def _give_ties(
    counts: list[int], leftover: int, remainders: list[float], threshold: float, w: list[float]
) -> int:
    """One more task to positions whose remainder equals ``threshold``, lowest first."""
    i = -1
    while leftover > 0:
        try:
            i = remainders.index(threshold, i + 1)
        except ValueError:
            break
        if w[i] > 0:
            counts[i] += 1
            leftover -= 1
    return leftover


def _water_fill(
    remaining: int, w: list[float], caps: int | list[int | None]
) -> tuple[int, list[float], list[int] | None]:
    """Fill every device whose proportional share reaches its cap.

    A device saturates when cap / weight <= remaining tasks / remaining weight. Filling one never
    lowers that threshold, so the saturated devices are exactly those of smallest cap / weight
    up to the first that does not saturate. Returns the tasks left, the weights with filled
    devices set to 0, and the filled counts (None when nothing saturated).
    """
    keys: list[Any] = w if isinstance(caps, int) else list(zip(caps, w, strict=True))
    groups = Counter(keys)
    if len(groups) > GROUPED_WEIGHTS_LIMIT:
        return _water_fill_rounds(remaining, w, [caps] * len(w) if isinstance(caps, int) else caps)

    def cap_and_weight(key: Any) -> tuple[int | None, float]:
        if isinstance(caps, int):
            return caps, key
        cap, weight = key
        return cap, weight

    # Devices sharing (cap, weight) saturate together: work per group, then spread in C.
    unsaturated = {}
    capped = []
    for key, count in groups.items():
        cap, weight = cap_and_weight(key)
        if weight > 0:
            unsaturated[key] = weight * count
            if cap is not None:
                capped.append((cap / weight, cap, count, key))
    capped.sort(key=itemgetter(0))
    saturated = set()
    for ratio, cap, count, key in capped:
        total_weight = math.fsum(unsaturated.values())
        if remaining <= 0 or total_weight <= 0 or ratio > remaining / total_weight:
            break
        saturated.add(key)
        remaining -= cap * count
        del unsaturated[key]
    if not saturated:
        return remaining, w, None
    filled = {key: (cap_and_weight(key)[0] or 0) if key in saturated else 0 for key in groups}
    kept = {key: (0.0 if key in saturated else cap_and_weight(key)[1]) for key in groups}
    return remaining, list(map(kept.__getitem__, keys)), list(map(filled.__getitem__, keys))


def _water_fill_rounds(
    remaining: int, w: list[float], caps: list[int | None]
) -> tuple[int, list[float], list[int] | None]:
    """``_water_fill`` for many distinct (cap, weight) pairs: rounds over all devices."""
    inf = math.inf
    w = list(w)
    counts = [0] * len(w)
    ratios = [
        cap / wi if cap is not None and wi > 0 else inf for cap, wi in zip(caps, w, strict=True)
    ]
    while True:
        total_weight = math.fsum(w)
        if total_weight <= 0 or remaining <= 0:
            break
        threshold = remaining / total_weight
        saturated = [i for i, ratio in enumerate(ratios) if ratio <= threshold]
        if not saturated:
            break
        for i in saturated:
            cap = caps[i]
            assert cap is not None
            counts[i] = cap
            remaining -= cap
            w[i] = 0.0
            ratios[i] = inf
    return remaining, w, counts


def _check_known(mapping: Mapping[str, object], known: set[str], field: str) -> None:
    unknown = sorted(k for k in mapping if k not in known)
    if unknown:
        raise UnknownDeviceError(
            unknown[0], field=field, context=f"{len(unknown)} unknown id(s): {unknown[:5]}"
        )
