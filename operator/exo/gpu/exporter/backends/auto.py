"""``--backend auto``: the first backend that finds a GPU on this node, in a fixed order.

Order of preference: NVML, AMD SMI, Intel xpu-smi, DRM sysfs, Apple. Vendor libraries come
first because they report more (ECC, XID events, VRAM use of discrete Intel cards) than the
kernel's files; DRM sysfs needs nothing in the image and covers what the libraries do not
(amdgpu without ROCm, integrated Intel, Adreno); Apple runs only on macOS. The simulated backend
is never chosen: it needs a fleet file and is asked for by name.

Each candidate is constructed (a missing library is :class:`BackendUnavailable`) and asked to
discover through the same deadline guard the agent uses, so a hanging ``nvmlInit`` costs one
``--call-timeout`` and the next candidate is tried. The first that reports at least one device
is chosen; the others are closed. Why each one before it was passed over is kept in
:attr:`AutoChoice.candidates`, logged once at start and printed by ``--probe``. One exporter
runs one backend: a node with GPUs of two vendors gets the first of the order.

When no candidate finds a GPU, :func:`choose_backend` raises ``BackendUnavailable`` listing
every reason, and the command exits 1 (the DaemonSet's pod restarts with backoff, so a driver
that loads after the exporter started is picked up).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .base import Backend, BackendError, BackendUnavailable, GuardedBackend

AUTO_ORDER = ("nvml", "amd", "intel", "drm", "apple")

Factory = Callable[[], Backend]


@dataclass(frozen=True)
class AutoChoice:
    """The chosen backend (already guarded and discovered once) and what each candidate said."""

    backend: GuardedBackend
    candidates: tuple[tuple[str, str], ...]

    @property
    def summary(self) -> str:
        return "; ".join(f"{name}: {outcome}" for name, outcome in self.candidates)


def choose_backend(factories: Sequence[tuple[str, Factory]], timeout: float) -> AutoChoice:
    """The first of ``factories`` whose backend discovers at least one device."""
    outcomes: list[tuple[str, str]] = []
    for name, factory in factories:
        try:
            backend = factory()
        except (BackendUnavailable, ValueError) as exc:
            outcomes.append((name, str(exc)))
            continue
        guarded = GuardedBackend(backend, timeout)
        try:
            devices = guarded.discover()
        except BackendError as exc:
            outcomes.append((name, f"discovery failed: {exc}"))
            guarded.close()
            continue
        if not devices:
            skipped = getattr(backend, "skipped", ())
            detail = "; ".join(f"{s.where}: {s.reason}" for s in skipped)
            outcomes.append((name, "no devices" + (f" ({detail})" if detail else "")))
            guarded.close()
            continue
        outcomes.append((name, f"chosen: {len(devices)} device(s)"))
        return AutoChoice(guarded, tuple(outcomes))
    raise BackendUnavailable(
        "auto: no backend found a GPU on this node: "
        + "; ".join(f"{name}: {outcome}" for name, outcome in outcomes)
    )
