"""The node agent: keeps its node's GPUDevice objects true to what the backend reports.

Each poll has two phases. The *backend phase* (a worker thread; every call under the backend
deadline) discovers devices now and then, reads each one, checks health, and publishes samples to
``/metrics`` at full rate. The *API phase* (the event loop) reconciles objects:

* a discovered device without an object gets one; a changed identity patches the exporter-owned
  spec fields (never ``unschedulable``, which belongs to whoever cordons the device);
* status is written only when :func:`write_decision` says so (DESIGN section 6: deadband, 30 s
  heartbeat with jitter, at most one write per 5 s per device), or when a condition changes;
* ``PUT /status`` carries the resourceVersion last read, so a concurrent writer (the controller
  writes score and allocation) causes a 409, answered by a fresh read and a retry that keeps the
  other writer's fields and conditions;
* a device a successful discovery no longer reports gets ``Ready=False, reason DeviceVanished``
  and is deleted after a grace period, unless it is cordoned: a cordon is its operator's (the
  admission policy refuses the exporter that delete, which would lift the cordon on re-creation),
  so a cordoned vanished device stays, not Ready, until they lift it; a failed discovery never
  vanishes anything;
* impossible readings are counted and skipped, never written; backend failures become
  conditions with their reason; API trouble (unreachable, 5xx, 429) backs off exponentially with
  jitter, while refusals (4xx) are counted and the agent carries on.

Everything that decides is pure (:func:`write_decision`, :func:`desired_conditions`,
:func:`build_status`); the I/O is the backend and a :class:`DeviceAPI`, both injectable, and time
comes from an injectable clock, so tests drive a simulated minute without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from pydantic import ValidationError

from exo.gpu.capabilities import compute_capacity
from exo.gpu.k8s.models import (
    LABEL_NODE,
    Condition,
    ConditionStatus,
    DeviceDisplay,
    DeviceMetrics,
    GPUDevice,
    GPUDeviceStatus,
    display_memory,
    find_condition,
    set_condition,
    to_time,
)
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics

from .backends.base import HEALTHY, Backend, BackendError, DeviceHealth, DeviceLost
from .kubeapi import ApiError, Conflict, NotFound
from .metrics import ExporterMetrics

log = logging.getLogger("exo.gpu.exporter")

READY = "Ready"
HEALTHY_CONDITION = "Healthy"
VANISHED = "DeviceVanished"
INVALID_STREAK_FOR_NOT_READY = 3


# --------------------------------------------------------------------------------------------
# Pure decisions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WritePolicy:
    """When a device's status is written (DESIGN section 6)."""

    min_interval_s: float = 5.0
    heartbeat_s: float = 30.0
    jitter_fraction: float = 0.1
    memory_fraction: float = 0.01
    utilization_points: float = 5.0
    temperature_celsius: float = 2.0
    power_fraction: float = 0.05
    power_floor_watts: float = 1.0

    def __post_init__(self) -> None:
        for name in (
            "min_interval_s",
            "heartbeat_s",
            "memory_fraction",
            "utilization_points",
            "temperature_celsius",
            "power_fraction",
            "power_floor_watts",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if not 0 <= self.jitter_fraction < 1:
            raise ValueError(f"jitter_fraction: must be in [0, 1), got {self.jitter_fraction}")
        if self.heartbeat_s < self.min_interval_s:
            raise ValueError("heartbeat_s: must not be shorter than min_interval_s")


DEFAULT_POLICY = WritePolicy()


class WriteReason(StrEnum):
    INITIAL = "initial"
    CONDITIONS = "conditions"
    MEMORY = "memory"
    UTILIZATION = "utilization"
    TEMPERATURE = "temperature"
    POWER = "power"
    HEARTBEAT = "heartbeat"


def write_decision(
    prev_written: GPUMetrics | None,
    new_sample: GPUMetrics | None,
    now: float,
    last_write_time: float | None,
    policy: WritePolicy = DEFAULT_POLICY,
    *,
    conditions_changed: bool = False,
    heartbeat_s: float | None = None,
) -> WriteReason | None:
    """Why the status should be written now, or None to skip.

    Order: the rate limit first (nothing within ``min_interval_s`` of the last write, whatever
    changed), then condition changes, then the deadbands (a change of at least the band counts),
    then the heartbeat (``heartbeat_s`` overrides the policy's, for per-device jitter). With no
    new sample only a condition change is written: a heartbeat means fresh data.
    """
    if last_write_time is None:
        return WriteReason.INITIAL if (new_sample is not None or conditions_changed) else None
    if now - last_write_time < policy.min_interval_s:
        return None
    if conditions_changed:
        return WriteReason.CONDITIONS
    if new_sample is None:
        return None
    if prev_written is None:
        return WriteReason.INITIAL
    band = policy.memory_fraction * new_sample.memory_total_bytes
    if abs(new_sample.memory_used_bytes - prev_written.memory_used_bytes) >= band:
        return WriteReason.MEMORY
    delta_util = new_sample.compute_utilization_percent - prev_written.compute_utilization_percent
    if abs(delta_util) >= policy.utilization_points:
        return WriteReason.UTILIZATION
    if _left_band(
        prev_written.temperature_celsius, new_sample.temperature_celsius, policy.temperature_celsius
    ):
        return WriteReason.TEMPERATURE
    if prev_written.power_watts is None:
        power_band = policy.power_floor_watts
    else:
        power_band = policy.power_fraction * max(prev_written.power_watts, policy.power_floor_watts)
    if _left_band(prev_written.power_watts, new_sample.power_watts, power_band):
        return WriteReason.POWER
    if now - last_write_time >= (policy.heartbeat_s if heartbeat_s is None else heartbeat_s):
        return WriteReason.HEARTBEAT
    return None


def _left_band(written: float | None, new: float | None, band: float) -> bool:
    """A value moved by at least ``band``; a value that appears or disappears always counts.

    Fields a driver does not expose are None (absent, never 0): a device whose temperature
    sensor comes and goes is written when it does, and two absent readings are no change.
    """
    if written is None or new is None:
        return (written is None) != (new is None)
    return abs(new - written) >= band


@dataclass(frozen=True)
class ConditionState:
    """The exporter-owned conditions of one device, before timestamps."""

    ready: tuple[ConditionStatus, str, str]
    healthy: tuple[ConditionStatus, str, str]

    def key(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """What counts as a change (messages alone do not trigger writes)."""
        return (self.ready[:2], self.healthy[:2])


def desired_conditions(
    health: DeviceHealth,
    read_error: BackendError | None,
    invalid_streak: int,
    previous_ready: tuple[ConditionStatus, str, str] | None,
    backend: str,
) -> ConditionState:
    """Ready/Healthy for a present device from the latest poll (pure)."""
    healthy: tuple[ConditionStatus, str, str] = (
        ("True", health.reason or "DeviceHealthy", health.message)
        if health.healthy
        else ("False", health.reason or "Unhealthy", health.message)
    )
    ready: tuple[ConditionStatus, str, str]
    if read_error is not None:
        ready = ("False", read_error.reason, str(read_error))
    elif not health.healthy:
        ready = ("False", health.reason or "Unhealthy", health.message)
    elif invalid_streak >= INVALID_STREAK_FOR_NOT_READY:
        ready = (
            "False",
            "InvalidReadings",
            f"{invalid_streak} consecutive impossible readings from the {backend} backend",
        )
    elif invalid_streak > 0 and previous_ready is not None:
        ready = previous_ready  # one bad reading changes nothing
    else:
        ready = ("True", "DeviceReady", f"reporting metrics through the {backend} backend")
    return ConditionState(ready=ready, healthy=healthy)


def vanished_conditions(backend: str) -> ConditionState:
    message = f"the {backend} backend no longer reports this device"
    return ConditionState(ready=("False", VANISHED, message), healthy=("False", VANISHED, message))


def build_status(
    current: GPUDeviceStatus | None,
    sample: GPUMetrics | None,
    conditions: ConditionState,
    now: float,
    generation: int | None,
) -> GPUDeviceStatus:
    """The status to write: exporter fields replaced, the controller's fields kept (pure)."""
    base = current or GPUDeviceStatus()
    moment = to_time(now, whole_seconds=True)
    conds: list[Condition] = list(base.conditions)
    for type_, (status, reason, message) in (
        (READY, conditions.ready),
        (HEALTHY_CONDITION, conditions.healthy),
    ):
        conds = set_condition(conds, type_, status, reason, message[:1000], moment, generation)
    update: dict[str, Any] = {"conditions": conds, "observed_generation": generation}
    if sample is not None:
        update["metrics"] = DeviceMetrics.from_sample(sample)
        update["display"] = DeviceDisplay(
            memory=display_memory(sample.memory_used_bytes, sample.memory_total_bytes)
        )
        update["last_heartbeat_time"] = to_time(now)
    result: GPUDeviceStatus = base.model_copy(update=update)
    return result


def owned_spec(device: GPUDevice) -> dict[str, Any]:
    """The spec fields the exporter owns (everything but ``unschedulable``), wire form."""
    return device.spec.model_dump(by_alias=True, mode="json", exclude={"unschedulable"})


def backoff_delay(failures: int, base_s: float = 1.0, cap_s: float = 60.0, u: float = 0.5) -> float:
    """Exponential backoff with jitter: ``base * 2^(failures-1)`` capped, scaled by 0.5..1.0."""
    raw: float = min(cap_s, base_s * 2.0 ** max(0, failures - 1))
    return raw * (0.5 + 0.5 * u)


# --------------------------------------------------------------------------------------------
# I/O seams
# --------------------------------------------------------------------------------------------


class DeviceAPI(Protocol):
    """The GPUDevice requests the agent makes (implemented by kubeapi.GPUDeviceAPI)."""

    async def list(self, node: str) -> list[GPUDevice]: ...
    async def get(self, name: str) -> GPUDevice | None: ...
    async def create(self, device: GPUDevice) -> GPUDevice: ...
    async def patch(self, name: str, patch: Mapping[str, Any]) -> GPUDevice: ...
    async def replace_status(self, device: GPUDevice) -> GPUDevice: ...
    async def delete(self, name: str, uid: str | None = None) -> None: ...


@dataclass(frozen=True)
class AgentConfig:
    node: str
    poll_interval_s: float = 2.0
    rediscover_interval_s: float = 30.0
    health_interval_s: float = 10.0
    resync_interval_s: float = 300.0
    vanish_grace_s: float = 300.0
    policy: WritePolicy = DEFAULT_POLICY

    def __post_init__(self) -> None:
        if not 0.1 <= self.poll_interval_s <= 60:
            raise ValueError(
                f"poll_interval_s: must be within 0.1..60 s, got {self.poll_interval_s}"
            )
        if self.vanish_grace_s < 0:
            raise ValueError(f"vanish_grace_s: must not be negative, got {self.vanish_grace_s}")


@dataclass(frozen=True)
class WriteRecord:
    time: float
    device: str
    kind: str  # create | spec | status | delete
    reason: str
    result: str  # ok | conflict | refused | error


@dataclass
class DeviceState:
    """What the agent remembers about one device between polls."""

    info: GPUDeviceInfo
    sample: GPUMetrics | None = None
    read_error: BackendError | None = None
    health: DeviceHealth = HEALTHY
    last_health_check: float | None = None
    invalid_streak: int = 0
    written: GPUMetrics | None = None
    written_conditions: ConditionState | None = None
    last_write: float | None = None
    heartbeat_s: float = 30.0
    vanished_since: float | None = None
    refused_until: float = 0.0


class _BackOff(Exception):
    """Raised inside the API phase to abandon it until the backoff expires."""


@dataclass
class _Cycle:
    present: dict[str, GPUDeviceInfo] = field(default_factory=dict)
    discovery_ok: bool = False


class DeviceAgent:
    """Reconciles the GPUDevice objects of one node; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        backend: Backend,
        api: DeviceAPI,
        metrics: ExporterMetrics,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.node = config.node
        self.backend = backend
        self.api = api
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.states: dict[str, DeviceState] = {}
        self.objects: dict[str, GPUDevice] = {}
        self.present: dict[str, GPUDeviceInfo] | None = None  # last successful discovery
        self.write_log: deque[WriteRecord] = deque(maxlen=10_000)
        self._last_discovery: float | None = None
        self._rediscover = False
        self._last_list: float | None = None
        self._api_failures = 0
        self._api_backoff_until = 0.0
        # Counting from construction: a first cycle that never completes also reads as stalled.
        self._last_cycle_monotonic = time.monotonic()
        self._stop = asyncio.Event()
        self._logged: dict[str, str] = {}

    # -- readiness --------------------------------------------------------------------------

    @property
    def listed(self) -> bool:
        return self._last_list is not None

    @property
    def ready(self) -> bool:
        """Discovery succeeded once and the API objects were listed."""
        return self.present is not None and self._last_list is not None

    def alive(self, now_monotonic: float | None = None) -> bool:
        """The poll loop completed a cycle recently (or has not had time to yet)."""
        now_monotonic = time.monotonic() if now_monotonic is None else now_monotonic
        limit = max(3 * self.config.poll_interval_s, 30.0)
        return now_monotonic - self._last_cycle_monotonic < limit

    # -- backend phase (worker thread) ------------------------------------------------------

    def collect(self, now: float) -> _Cycle:
        """Discover (when due), read and health-check every device; never raises BackendError."""
        cycle = _Cycle()
        backend = self.backend.name
        started = time.perf_counter()
        success = True
        due = (
            self.present is None
            or self._rediscover
            or self._last_discovery is None
            or now - self._last_discovery >= self.config.rediscover_interval_s
        )
        if due:
            try:
                infos = self.backend.discover()
            except BackendError as exc:
                success = False
                self.metrics.backend_errors.labels(backend, exc.reason).inc()
                self._log_change(
                    "discover", exc.reason, logging.WARNING, f"discovery failed: {exc}"
                )
            else:
                self._log_change(
                    "discover",
                    "ok",
                    logging.INFO,
                    f"{backend}: {len(infos)} device(s) on {self.node}",
                )
                self.present = {i.device_id: i for i in infos}
                self._last_discovery = now
                self._rediscover = False
                cycle.discovery_ok = True
        cycle.present = dict(self.present or {})
        for device_id, info in cycle.present.items():
            state = self.states.get(device_id)
            if state is None:
                state = self.states[device_id] = DeviceState(
                    info=info, heartbeat_s=self._jittered_heartbeat()
                )
            state.info = info
            state.vanished_since = None
            if not self._read(state, now):
                success = False
        self.metrics.scrape_duration.labels(backend).observe(time.perf_counter() - started)
        self.metrics.scrape_success.labels(backend).set(1 if success else 0)
        self.metrics.devices.labels(backend).set(len(cycle.present))
        return cycle

    def _read(self, state: DeviceState, now: float) -> bool:
        backend = self.backend.name
        info = state.info
        state.sample = None
        state.read_error = None
        ok = True
        try:
            state.sample = self.backend.read(info)
            state.invalid_streak = 0
            self._log_change(
                f"read/{info.device_id}", "ok", logging.DEBUG, f"{info.device_id}: reading"
            )
        except ValidationError as exc:
            ok = False
            state.invalid_streak += 1
            first = exc.errors()[0]
            where = str(first["loc"][0]) if first["loc"] else "memory_used_bytes"
            self.metrics.invalid_readings.labels(backend, where).inc()
            if state.invalid_streak == 1:
                log.warning(
                    "%s: impossible reading skipped (%s: %s)", info.device_id, where, first["msg"]
                )
        except BackendError as exc:
            ok = False
            state.read_error = exc
            self._log_change(
                f"read/{info.device_id}", exc.reason, logging.WARNING, f"{info.device_id}: {exc}"
            )
            self.metrics.backend_errors.labels(backend, exc.reason).inc()
            if isinstance(exc, DeviceLost):
                self._rediscover = True
        health_due = (
            state.last_health_check is None
            or not ok
            or not state.health.healthy
            or now - state.last_health_check >= self.config.health_interval_s
        )
        if health_due:
            try:
                state.health = self.backend.health(info)
            except BackendError as exc:
                self.metrics.backend_errors.labels(backend, exc.reason).inc()
                state.health = DeviceHealth(False, exc.reason, str(exc))
            state.last_health_check = now
        self.metrics.record_sample(info, state.sample, state.health)
        return ok

    def _jittered_heartbeat(self) -> float:
        policy = self.config.policy
        return policy.heartbeat_s * (1 - policy.jitter_fraction * self.rng.random())

    # -- API phase (event loop) -------------------------------------------------------------

    async def poll_once(self) -> None:
        """One full cycle: backend phase in a thread, then the API phase."""
        now = self.clock()
        cycle = await asyncio.to_thread(self.collect, now)
        if now >= self._api_backoff_until:
            try:
                await self.reconcile(cycle, now)
                self._api_failures = 0
            except _BackOff:
                pass
            except ApiError as exc:
                # Listing was refused (RBAC, a missing CRD): nothing can be reconciled, so back
                # off as for an outage instead of asking again every poll.
                self._back_off(f"cannot list GPUDevices: {exc}")
        self._last_cycle_monotonic = time.monotonic()

    def _back_off(self, why: str) -> None:
        self._api_failures += 1
        delay = backoff_delay(self._api_failures, u=self.rng.random())
        self._api_backoff_until = self.clock() + delay
        self._log_change(
            "api", f"{why}; backing off", logging.WARNING, f"{why}; backing off {delay:.1f} s"
        )

    def _log_change(self, key: str, state: str, level: int, message: str) -> None:
        """Log ``message`` only when ``key``'s state changes (no log line every poll)."""
        if self._logged.get(key) != state:
            self._logged[key] = state
            log.log(level, message)

    async def _call(self, kind: str, device: str, reason: str, coro: Any) -> Any:
        """Await an API call, recording it; retriable failures raise _BackOff."""
        try:
            result = await coro
        except Conflict:
            self._record(kind, device, reason, "conflict")
            raise
        except NotFound:
            self._record(kind, device, reason, "notfound")
            raise
        except ApiError as exc:
            if exc.retriable:
                self._record(kind, device, reason, "error")
                self._back_off(f"API unavailable ({exc.status} {exc.reason})")
                raise _BackOff() from exc
            self._record(kind, device, reason, "refused")
            log.error("API refused %s of %s: %s", kind, device, exc)
            raise
        self._record(kind, device, reason, "ok")
        self._log_change("api", "ok", logging.INFO, "API reachable")
        return result

    def _record(self, kind: str, device: str, reason: str, result: str) -> None:
        if kind != "list" and kind != "get":
            self.metrics.api_writes.labels(kind, result).inc()
            self.write_log.append(WriteRecord(self.clock(), device, kind, reason, result))

    async def reconcile(self, cycle: _Cycle, now: float) -> None:
        if self._last_list is None or now - self._last_list >= self.config.resync_interval_s:
            listed = await self._call("list", "*", "resync", self.api.list(self.node))
            self.objects = {o.metadata.name: o for o in listed}
            self._last_list = now
        for name in sorted(cycle.present):
            try:
                await self._reconcile_present(self.states[name], now)
            except NotFound:
                self.objects.pop(name, None)  # deleted behind our back: re-created next poll
            except ApiError:
                continue  # refused or gone: recorded; the next poll starts from what is known
        if self.present is not None:
            for name in sorted(set(self.objects) - set(self.present)):
                try:
                    await self._reconcile_vanished(name, now)
                except ApiError:
                    continue

    def _desired_object(self, state: DeviceState) -> GPUDevice:
        info = state.info
        index = info.index if info.index is not None else 0
        return GPUDevice.from_info(info, self.node, index, compute_capacity(info))

    async def _reconcile_present(self, state: DeviceState, now: float) -> None:
        desired = self._desired_object(state)
        name = desired.metadata.name
        obj = self.objects.get(name)
        if obj is None:
            try:
                obj = await self._call("create", name, "missing", self.api.create(desired))
            except Conflict:
                obj = await self._call("get", name, "exists", self.api.get(name))
                if obj is None:
                    return
            self.objects[name] = obj
        missing_labels = {
            k: v for k, v in desired.metadata.labels.items() if obj.metadata.labels.get(k) != v
        }
        if owned_spec(obj) != owned_spec(desired) or missing_labels:
            patch = {"metadata": {"labels": desired.metadata.labels}, "spec": owned_spec(desired)}
            obj = await self._call("spec", name, "identity changed", self.api.patch(name, patch))
            self.objects[name] = obj
        previous_ready = state.written_conditions.ready if state.written_conditions else None
        wanted = desired_conditions(
            state.health, state.read_error, state.invalid_streak, previous_ready, self.backend.name
        )
        if state.written_conditions is None and obj.status is not None:
            state.written_conditions = _conditions_of(obj.status)
        changed = state.written_conditions is None or (
            state.written_conditions.key() != wanted.key()
        )
        if now < state.refused_until:
            return
        reason = write_decision(
            state.written,
            state.sample,
            now,
            state.last_write,
            self.config.policy,
            conditions_changed=changed,
            heartbeat_s=state.heartbeat_s,
        )
        if reason is not None:
            await self._write_status(state, name, wanted, reason, now)

    async def _write_status(
        self,
        state: DeviceState,
        name: str,
        wanted: ConditionState,
        reason: str,
        now: float,
        include_sample: bool = True,
    ) -> None:
        use_sample = state.sample if include_sample else None
        for attempt in range(3):
            obj = self.objects[name]
            status = build_status(obj.status, use_sample, wanted, now, obj.metadata.generation)
            try:
                written = await self._call(
                    "status",
                    name,
                    reason,
                    self.api.replace_status(obj.model_copy(update={"status": status})),
                )
            except Conflict:
                fresh = await self._call("get", name, "conflict", self.api.get(name))
                if fresh is None:
                    self.objects.pop(name, None)
                    return
                self.objects[name] = fresh
                log.debug("status of %s: conflict, retry %d from a fresh read", name, attempt + 1)
                continue
            except NotFound:
                self.objects.pop(name, None)  # deleted behind our back: re-created next poll
                return
            except ApiError as exc:
                if not exc.retriable:
                    # Refused (RBAC, admission, validation): retrying at poll rate would only
                    # load the API server; try again a heartbeat later.
                    state.refused_until = now + self.config.policy.heartbeat_s
                raise
            self.objects[name] = written
            if use_sample is not None:
                state.written = use_sample
            state.written_conditions = wanted
            state.last_write = now
            state.heartbeat_s = self._jittered_heartbeat()
            return

    async def _reconcile_vanished(self, name: str, now: float) -> None:
        obj = self.objects[name]
        state = self.states.get(name)
        if state is None:
            state = self.states[name] = DeviceState(info=obj.to_device_info())
        ready = find_condition(obj.status.conditions, READY) if obj.status else None
        if state.vanished_since is None:
            if ready is not None and ready.reason == VANISHED:
                state.vanished_since = ready.last_transition_time.timestamp()
            else:
                state.vanished_since = now
        self.metrics.store.remove(name)
        if obj.spec.unschedulable:
            self._log_change(f"cordoned:{name}", "kept", logging.INFO,
                             f"{name} no longer reported but cordoned: kept for its operator")
        elif now - state.vanished_since >= self.config.vanish_grace_s:
            await self._call("delete", name, "vanished", self.api.delete(name, obj.metadata.uid))
            self.objects.pop(name, None)
            self.states.pop(name, None)
            return
        if ready is None or ready.reason != VANISHED:
            wanted = vanished_conditions(self.backend.name)
            if (
                write_decision(
                    None, None, now, state.last_write, self.config.policy, conditions_changed=True
                )
                is not None
            ):
                await self._write_status(state, name, wanted, "vanished", now, include_sample=False)

    # -- lifecycle --------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Poll until :meth:`stop`; a failing cycle is logged, never fatal."""
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await self.poll_once()
            except Exception:  # the agent must survive anything one cycle throws
                log.exception("poll cycle failed")
            delay = max(0.0, self.config.poll_interval_s - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.backend.close)


def _conditions_of(status: GPUDeviceStatus) -> ConditionState | None:
    ready = find_condition(status.conditions, READY)
    healthy = find_condition(status.conditions, HEALTHY_CONDITION)
    if ready is None or healthy is None:
        return None
    return ConditionState(
        ready=(ready.status, ready.reason, ready.message),
        healthy=(healthy.status, healthy.reason, healthy.message),
    )


def node_selector(node: str) -> str:
    return f"{LABEL_NODE}={node}"


def summarize(records: Sequence[WriteRecord], kind: str = "status") -> dict[str, int]:
    """Writes of ``kind`` per device (for tests and the benchmark)."""
    counts: dict[str, int] = {}
    for record in records:
        if record.kind == kind and record.result == "ok":
            counts[record.device] = counts.get(record.device, 0) + 1
    return counts
