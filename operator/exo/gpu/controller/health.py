"""Device health and device summaries, as pure decisions over GPUDevice objects.

- Heartbeats: a device whose exporter stopped writing (no heartbeat or sample within the core's
  staleness limit, ``exo.gpu.policy.stale``) gets ``Stale=True`` (``HeartbeatMissed``) and
  ``Ready=False`` (``HeartbeatLost``); when it writes again, ``Stale=False``
  (``HeartbeatResumed``) and the exporter sets ``Ready`` itself. Only the controller writes
  ``Stale``.
- Summaries: the controller's part of a GPUDevice status (``score``, ``allocation``), and when it
  is worth writing again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from exo.gpu.policy import stale
from exo.gpu.state import DeviceState, Reservation

from ..k8s.models import Condition, GPUDevice, find_condition, set_condition
from .reasons import ConditionType, Reason


def heartbeat(device: GPUDevice) -> float | None:
    """When the exporter last wrote (heartbeat or sample), epoch seconds; None if never."""
    status = device.status
    if status is None:
        return None
    times = [t.timestamp() for t in (status.last_heartbeat_time,
                                     status.metrics.timestamp if status.metrics else None)
             if t is not None]
    return max(times) if times else None


def stale_state(device: GPUDevice, now: float, stale_after: float) -> bool | None:
    """True when the heartbeat is older than ``stale_after`` seconds (the core's Stale rule,
    ``exo.gpu.policy.stale``); None when there never was one."""
    beat = heartbeat(device)
    return None if beat is None else stale(beat, now, stale_after)


def needs_health_write(device: GPUDevice, is_stale: bool) -> bool:
    """Whether the device's conditions say otherwise than ``is_stale`` (a write is due)."""
    conditions = device.status.conditions if device.status else []
    current = find_condition(conditions, ConditionType.STALE)
    if is_stale:
        ready = find_condition(conditions, ConditionType.READY)
        return current is None or current.status != "True" or \
            (ready is not None and ready.status == "True")
    return current is not None and current.status != "False"


def health_conditions(device: GPUDevice, is_stale: bool, now: float,
                      stale_after: float) -> list[Condition]:
    """The device's conditions with Stale (and, when stale, Ready=False) set."""
    moment = datetime.fromtimestamp(now, UTC)
    conditions = list(device.status.conditions if device.status else [])
    beat = heartbeat(device)
    age = f"{now - beat:.0f} s" if beat is not None else "ever"
    if is_stale:
        message = (f"no heartbeat for {age} (stale after {stale_after:.0f} s): the exporter "
                   "stopped reporting")
        conditions = set_condition(conditions, ConditionType.STALE, "True",
                                   Reason.HEARTBEAT_MISSED, message, moment)
        conditions = set_condition(conditions, ConditionType.READY, "False",
                                   Reason.HEARTBEAT_LOST, message, moment)
    else:
        conditions = set_condition(conditions, ConditionType.STALE, "False",
                                   Reason.HEARTBEAT_RESUMED, f"last heartbeat {age} ago", moment)
    return conditions


#: A device's written score moves only when the live one leaves this band (or the allocation
#: changes), and a device is written at most once per SUMMARY_MIN_INTERVAL_S: the score follows
#: the exporter's deadbanded metrics, so this keeps the controller's writes below the exporter's.
SCORE_DEADBAND = 0.05
SUMMARY_MIN_INTERVAL_S = 10.0
MAX_ALLOCATION_PODS = 1024


def device_summary(device: DeviceState, reservations: Iterable[Reservation]) -> dict[str, Any]:
    """The controller's part of a GPUDevice status: ``score`` and ``allocation`` (the pods bound
    to it, and everything held on it: theirs and what planned tasks hold)."""
    held = sorted((r for r in reservations if r.bound), key=lambda r: r.pod_key)
    return {
        "score": round(device.score, 3),
        "allocation": {
            "podCount": len(held),
            "memoryReservedBytes": min(device.total, device.reserved),
            "pods": [r.pod_key for r in held[:MAX_ALLOCATION_PODS]],
        },
    }


def summary_needs_write(summary: Mapping[str, Any],
                        previous: tuple[Mapping[str, Any], float] | None, now: float) -> bool:
    """Whether ``summary`` differs enough from what was last written, and not too soon."""
    if previous is None:
        return True
    written, when = previous
    if now - when < SUMMARY_MIN_INTERVAL_S:
        return False
    return written["allocation"] != summary["allocation"] or \
        abs(float(written["score"]) - float(summary["score"])) >= SCORE_DEADBAND
