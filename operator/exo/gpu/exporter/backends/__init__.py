"""Telemetry backends: NVML, AMD SMI, Intel sysfs and the simulated fleet.

:func:`load_backend` maps a ``--backend`` name to an instance; vendor modules are imported only
when chosen, so a node without ROCm never imports ``amdsmi`` and a missing optional dependency
breaks only the backend that needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import (
    HEALTHY,
    Backend,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    DeviceHealth,
    DeviceLost,
    GuardedBackend,
)

BACKEND_NAMES = ("nvml", "amd", "intel", "simulated")

__all__ = [
    "BACKEND_NAMES",
    "HEALTHY",
    "Backend",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "DeviceHealth",
    "DeviceLost",
    "GuardedBackend",
    "load_backend",
]


def load_backend(
    name: str,
    *,
    node: str,
    fleet: Path | None = None,
    clock: Callable[[], float] | None = None,
) -> Backend:
    """Instantiate the backend called ``name`` for ``node`` (the simulated one needs ``fleet``)."""
    if name == "nvml":
        from .nvml import NVMLBackend

        return NVMLBackend(node=node)
    if name == "amd":
        from .amdsmi import AMDSMIBackend

        return AMDSMIBackend(node=node)
    if name == "intel":
        from .intel import IntelBackend

        return IntelBackend(node=node)
    if name == "simulated":
        if fleet is None:
            raise ValueError("fleet: the simulated backend needs a fleet file (--fleet)")
        from ..fleet import load_fleet
        from .simulated import SimulatedBackend

        return SimulatedBackend(load_fleet(fleet), node=node, clock=clock)
    raise ValueError(f"backend: unknown backend {name!r} (choose from {', '.join(BACKEND_NAMES)})")
