"""The one interface every telemetry backend implements, and the deadline guard around it.

A backend answers four questions about the GPUs of its node: which devices are there
(``discover``), what does one read now (``read``), is it healthy (``health``), and how do the
devices reach each other (``topology``: NUMA node, PCIe root, links; an empty answer where the
vendor's tools say nothing). Backends are
plain synchronous code that talks to a vendor library; they know nothing of Kubernetes, Prometheus
or time limits.

:class:`GuardedBackend` adds the time limit. Vendor libraries can hang (``nvmlInit`` has hung for
hours on real drivers), and a Python thread cannot be killed, so every call runs on one dedicated
worker thread and the caller waits at most ``timeout`` seconds. While a call is stuck, later calls
fail at once with :class:`BackendTimeout` instead of piling up more stuck threads; when the stuck
call finally returns, the backend is usable again. The agent turns those failures into a
not-Healthy condition with a reason; it never waits longer than the deadline.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from pydantic import ValidationError

from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics
from exo.gpu.topology import DeviceLinks

T = TypeVar("T")

DEFAULT_CALL_TIMEOUT_S = 2.0


class BackendError(RuntimeError):
    """A backend call failed; ``reason`` is a CamelCase condition reason."""

    def __init__(self, message: str, reason: str = "BackendError") -> None:
        super().__init__(message)
        self.reason = reason


class BackendUnavailable(BackendError):
    """The vendor library or driver is missing: the backend cannot run on this node."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "BackendUnavailable")


class BackendTimeout(BackendError):
    """A call did not return within its deadline (or an earlier call is still stuck)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "BackendTimeout")


class DeviceLost(BackendError):
    """The device is no longer reachable (fell off the bus, driver reset, removed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "DeviceLost")


@dataclass(frozen=True)
class DeviceHealth:
    """Health of one device: ``reason`` is CamelCase (a condition reason), ``message`` free text."""

    healthy: bool
    reason: str = "DeviceHealthy"
    message: str = ""


HEALTHY = DeviceHealth(True, "DeviceHealthy", "no error reported by the backend")


@runtime_checkable
class Backend(Protocol):
    """A source of device identity, metrics and health for the GPUs of one node."""

    name: str

    def discover(self) -> list[GPUDeviceInfo]:
        """Every device present now, with ``index`` set (stable per vendor on the node)."""
        ...

    def read(self, device: GPUDeviceInfo) -> GPUMetrics:
        """One sample of ``device``; raises BackendError (or a pydantic ValidationError for an
        impossible reading)."""
        ...

    def health(self, device: GPUDeviceInfo) -> DeviceHealth:
        """Health of ``device`` as the vendor library reports it."""
        ...

    def topology(self, devices: list[GPUDeviceInfo]) -> dict[str, DeviceLinks]:
        """Per discovered device, its NUMA node, PCIe root and links to the others (devices the
        backend says nothing about are left out)."""
        ...

    def close(self) -> None:
        """Release the vendor library (idempotent)."""
        ...


class GuardedBackend:
    """Runs every call of ``backend`` on one worker thread with a deadline.

    The wrapper itself satisfies :class:`Backend`, so the agent never sees an unguarded one.
    """

    def __init__(self, backend: Backend, timeout: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout: must be positive, got {timeout}")
        self.backend = backend
        self.name = backend.name
        self.timeout = timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"exo-gpu-{backend.name}"
        )
        self._lock = threading.Lock()
        self._stuck: concurrent.futures.Future[object] | None = None
        self._stuck_what = ""

    @property
    def stuck(self) -> bool:
        with self._lock:
            return self._stuck is not None and not self._stuck.done()

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker thread; BackendTimeout if it takes longer than the deadline."""
        with self._lock:
            if self._stuck is not None:
                if not self._stuck.done():
                    raise BackendTimeout(
                        f"{self.name}: {what} not attempted, {self._stuck_what} is still stuck "
                        f"after its {self.timeout:g} s deadline"
                    )
                self._stuck = None
            future = self._executor.submit(fn)
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            with self._lock:
                self._stuck = future  # type: ignore[assignment]
                self._stuck_what = what
            raise BackendTimeout(
                f"{self.name}: {what} did not return within {self.timeout:g} s"
            ) from None
        except (BackendError, ValidationError):
            raise
        except Exception as exc:
            # A bug or an unexpected library error in one call must not end the poll cycle
            # for every device: it becomes a backend error with a reason like any other.
            raise BackendError(
                f"{self.name}: {what} failed: {type(exc).__name__}: {exc}", "BackendError"
            ) from exc

    def discover(self) -> list[GPUDeviceInfo]:
        return self.call("discover", self.backend.discover)

    def read(self, device: GPUDeviceInfo) -> GPUMetrics:
        return self.call(f"read {device.device_id}", lambda: self.backend.read(device))

    def health(self, device: GPUDeviceInfo) -> DeviceHealth:
        return self.call(f"health {device.device_id}", lambda: self.backend.health(device))

    def topology(self, devices: list[GPUDeviceInfo]) -> dict[str, DeviceLinks]:
        return self.call("topology", lambda: self.backend.topology(devices))

    def close(self) -> None:
        """Close the backend if its thread is free; never waits on a stuck call."""
        if not self.stuck:
            with contextlib.suppress(BackendError):
                self.call("close", self.backend.close)
        self._executor.shutdown(wait=False, cancel_futures=True)
