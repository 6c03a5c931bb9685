"""Exceptions of the core library.

Every error names the field it is about and the reason, so that a message can be shown to a user
as-is (in a ``GPUWorkload`` condition, an extender reply or a CLI error). All derive from
``GPUClusteringError``, itself a ``ValueError``: callers that already treat bad input as
``ValueError`` keep working, and callers that want to tell the cases apart can.

Raising any of these guarantees the operation changed no state: the manager validates
completely before it mutates anything.
"""

from __future__ import annotations

__all__ = [
    "DeviceConflictError",
    "DistributionError",
    "GPUClusteringError",
    "InsufficientCapacityError",
    "InvalidMetricsError",
    "InvalidRequestError",
    "UnknownDeviceError",
]


class GPUClusteringError(ValueError):
    """Base class: bad input to the core library. ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class UnknownDeviceError(GPUClusteringError, LookupError):
    """A device id that is not registered."""

    def __init__(self, device_id: str, field: str = "device_id", context: str = "") -> None:
        self.device_id = device_id
        detail = f" ({context})" if context else ""
        super().__init__(field, f"device {device_id!r} is not registered{detail}")


class DeviceConflictError(GPUClusteringError):
    """A ``device_id`` registered again with a different identity."""

    def __init__(self, device_id: str, differences: dict[str, tuple[object, object]]) -> None:
        self.device_id = device_id
        self.differences = differences
        detail = ", ".join(
            f"{name}: registered {old!r}, given {new!r}"
            for name, (old, new) in sorted(differences.items())
        )
        super().__init__(
            "device_id",
            f"device {device_id!r} is already registered with a different identity ({detail})",
        )


class InvalidMetricsError(GPUClusteringError):
    """A metrics sample that is valid on its own but not in context (time, registered total)."""


class InvalidRequestError(GPUClusteringError):
    """A selection or distribution request with a bad argument (strategy, capacities, ...)."""


class DistributionError(InvalidRequestError):
    """A distribution that cannot be made (no devices, no capacity)."""


class InsufficientCapacityError(DistributionError):
    """Per-device caps that cannot hold every task; ``shortfall`` tasks would be left over."""

    def __init__(
        self, task_count: int, cap_total: int, field: str = "max_items_per_device"
    ) -> None:
        self.task_count = task_count
        self.cap_total = cap_total
        self.shortfall = task_count - cap_total
        super().__init__(
            field,
            f"caps hold at most {cap_total} tasks over the eligible devices but {task_count} "
            f"were given: {self.shortfall} task(s) short",
        )
