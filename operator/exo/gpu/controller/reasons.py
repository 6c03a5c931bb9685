"""Every phase, condition type, reason and event type the controller writes, as enums.

A reader finds each by name here; nothing in the controller writes a bare string for them.
Reasons a *device* cannot take work are the core's (``exo.gpu.fit.FitReason``); the reasons
below are about a workload as a whole, and about device heartbeats.
"""

from __future__ import annotations

from enum import StrEnum

from ..k8s.workload import WorkloadPhase

__all__ = ["ConditionType", "EventType", "PlanMode", "PodPhase", "Reason", "WorkloadPhase"]


class ConditionType(StrEnum):
    """Condition types: ``Placed`` and ``PodsReady`` on a GPUWorkload, ``Stale`` and ``Ready``
    on a GPUDevice."""

    PLACED = "Placed"
    PODS_READY = "PodsReady"
    STALE = "Stale"
    READY = "Ready"


class Reason(StrEnum):
    """Condition and Event reasons (CamelCase, as ``metav1.Condition`` wants them)."""

    # Placed=True
    PLACED = "Placed"
    REPLANNED = "Replanned"
    # Placed=False
    INVALID_SPEC = "InvalidSpec"
    UNKNOWN_DEVICE = "UnknownDevice"
    CAPS_TOO_LOW = "CapsTooLow"
    NO_DEVICES = "NoDevices"
    NO_DEVICE_MATCHES_SELECTOR = "NoDeviceMatchesSelector"
    INSUFFICIENT_MEMORY = "InsufficientMemory"
    NO_ELIGIBLE_DEVICE = "NoEligibleDevice"
    # PodsReady
    PODS_RUNNING = "PodsRunning"
    PODS_SUCCEEDED = "PodsSucceeded"
    POD_FAILED = "PodFailed"
    PODS_PENDING = "PodsPending"
    # a placement's device is gone (the other device failures are exo.gpu.fit.FitReason)
    DEVICE_GONE = "DeviceGone"
    # GPUDevice heartbeat
    HEARTBEAT_MISSED = "HeartbeatMissed"
    HEARTBEAT_LOST = "HeartbeatLost"
    HEARTBEAT_RESUMED = "HeartbeatResumed"


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class PlanMode(StrEnum):
    """How a plan was made (see ``exo.gpu.controller.planning``)."""

    KEPT = "kept"
    PARTIAL = "partial"
    FULL = "full"
    NONE = "none"


class PodPhase(StrEnum):
    """A pod's ``status.phase`` (Kubernetes' values), as the controller reads its pods."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"
