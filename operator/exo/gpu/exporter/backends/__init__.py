"""Telemetry backends: NVML, AMD SMI, Intel xpu-smi, DRM sysfs, Apple and the simulated fleet.

:func:`load_backend` maps a ``--backend`` name to an instance; vendor modules are imported only
when chosen, so a node without ROCm never imports ``amdsmi`` and a missing optional dependency
breaks only the backend that needs it. ``auto`` is not a backend but a choice among them
(:mod:`.auto`); :func:`auto_factories` lists its candidates in order.
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

BACKEND_NAMES = ("nvml", "amd", "intel", "drm", "apple", "simulated")

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
    "auto_factories",
    "load_backend",
]


def load_backend(
    name: str,
    *,
    node: str,
    fleet: Path | None = None,
    clock: Callable[[], float] | None = None,
    sysfs_root: Path | str = "/sys",
    procfs_root: Path | str = "/proc",
) -> Backend:
    """Instantiate the backend called ``name`` for ``node`` (the simulated one needs ``fleet``,
    the DRM one reads ``sysfs_root`` and ``procfs_root``)."""
    if name == "nvml":
        from .nvml import NVMLBackend

        return NVMLBackend(node=node)
    if name == "amd":
        from .amdsmi import AMDSMIBackend

        return AMDSMIBackend(node=node)
    if name == "intel":
        from .intel import IntelBackend

        return IntelBackend(node=node)
    if name == "drm":
        from .drm import DrmBackend

        return DrmBackend(node=node, sysfs_root=sysfs_root, procfs_root=procfs_root)
    if name == "apple":
        from .apple import AppleBackend

        return AppleBackend(node=node)
    if name == "simulated":
        if fleet is None:
            raise ValueError("fleet: the simulated backend needs a fleet file (--fleet)")
        from ..fleet import load_fleet
        from .simulated import SimulatedBackend

        return SimulatedBackend(load_fleet(fleet), node=node, clock=clock)
    raise ValueError(f"backend: unknown backend {name!r} (choose from {', '.join(BACKEND_NAMES)})")


def auto_factories(
    node: str, sysfs_root: Path | str = "/sys", procfs_root: Path | str = "/proc"
) -> list[tuple[str, Callable[[], Backend]]]:
    """The candidates of ``--backend auto``, in order of preference (see :mod:`.auto`)."""
    from .auto import AUTO_ORDER

    def factory(name: str) -> Callable[[], Backend]:
        return lambda: load_backend(
            name, node=node, sysfs_root=sysfs_root, procfs_root=procfs_root
        )

    return [(name, factory(name)) for name in AUTO_ORDER]
