"""NVML backend against a fake at the ``pynvml`` boundary, and the deadline guard around it."""

from __future__ import annotations

import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from exo.gpu.exporter.agent import AgentConfig, DeviceAgent, desired_conditions
from exo.gpu.exporter.backends.base import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    DeviceLost,
    GuardedBackend,
)
from exo.gpu.exporter.backends.nvml import NVMLBackend, numa_node_of, sysfs_pci_address
from exo.gpu.exporter.metrics import ExporterMetrics

GIB = 1024**3


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeGPU:
    def __init__(self, index: int, uuid: str, name: str, total: int, bus: str) -> None:
        self.index, self.uuid, self.name, self.total, self.bus = index, uuid, name, total, bus
        self.used = 4 * GIB
        self.util = 37
        self.temp = 61
        self.power_mw = 245_500
        self.sm_clock = 1755
        self.lost = False
        self.ecc_uncorrected: int | None = 0  # None: ECC not supported


def fake_pynvml(gpus: list[FakeGPU], hang: threading.Event | None = None) -> Any:
    """A module object with the pynvml functions the backend calls, over ``gpus``."""
    m = types.SimpleNamespace()
    m.NVMLError = NVMLError
    m.NVML_ERROR_GPU_IS_LOST = 15
    m.NVML_ERROR_NOT_SUPPORTED = 3
    m.NVML_ERROR_TIMEOUT = 10
    m.NVML_TEMPERATURE_GPU = 0
    m.NVML_CLOCK_SM = 1
    m.NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    m.NVML_VOLATILE_ECC = 0
    m.nvmlEventTypeXidCriticalError = 8
    m.calls = []
    m.pending_events = []
    m.init_error = None

    def check(gpu: FakeGPU) -> FakeGPU:
        if hang is not None:
            hang.wait(30)
        if gpu.lost:
            raise NVMLError(15)
        return gpu

    def nvmlInit() -> None:
        m.calls.append("init")
        if m.init_error is not None:
            raise NVMLError(m.init_error)

    m.nvmlInit = nvmlInit
    m.nvmlShutdown = lambda: m.calls.append("shutdown")
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]
    m.nvmlDeviceGetIndex = lambda h: check(h).index
    m.nvmlDeviceGetUUID = lambda h: check(h).uuid
    m.nvmlDeviceGetName = lambda h: check(h).name
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        total=check(h).total, used=h.used, free=h.total - h.used)
    m.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=check(h).bus.encode())
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=check(h).util, memory=9)
    m.nvmlDeviceGetTemperature = lambda h, sensor: check(h).temp
    m.nvmlDeviceGetPowerUsage = lambda h: check(h).power_mw
    m.nvmlDeviceGetClockInfo = lambda h, clock: check(h).sm_clock

    def ecc(h: FakeGPU, error_type: int, counter: int) -> int:
        if check(h).ecc_uncorrected is None:
            raise NVMLError(3)
        return int(h.ecc_uncorrected or 0)

    m.nvmlDeviceGetTotalEccErrors = ecc
    m.nvmlEventSetCreate = lambda: "event-set"
    m.nvmlEventSetFree = lambda s: None
    m.nvmlDeviceRegisterEvents = lambda h, types_, s: None

    def wait(event_set: str, timeout_ms: int) -> Any:
        if not m.pending_events:
            raise NVMLError(10)
        gpu, xid = m.pending_events.pop(0)
        return types.SimpleNamespace(device=gpu, eventData=xid, eventType=8)

    m.nvmlEventSetWait_v2 = wait
    return m


@pytest.fixture
def gpus() -> list[FakeGPU]:
    return [
        FakeGPU(0, "GPU-aaaa", "NVIDIA H100 80GB HBM3", 80 * GIB, "00000000:3B:00.0"),
        FakeGPU(1, "GPU-bbbb", "NVIDIA A100-SXM4-40GB", 40 * GIB, "00000000:86:00.0"),
    ]


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    (tmp_path / "0000:3b:00.0").mkdir()
    (tmp_path / "0000:3b:00.0" / "numa_node").write_text("1\n")
    (tmp_path / "0000:86:00.0").mkdir()
    (tmp_path / "0000:86:00.0" / "numa_node").write_text("-1\n")
    return tmp_path


def test_identity(gpus: list[FakeGPU], sysfs: Path) -> None:
    fake = fake_pynvml(gpus)
    backend = NVMLBackend("node-1", nvml=fake, sysfs=sysfs)
    assert fake.calls == []  # nvmlInit never runs in the constructor (it may hang)
    devices = backend.discover()
    assert fake.calls == ["init"]
    assert [d.device_id for d in devices] == ["node-1-nvidia-0", "node-1-nvidia-1"]
    h100 = devices[0]
    assert (h100.uuid, h100.name, h100.memory_total_bytes, h100.index) == (
        "GPU-aaaa", "NVIDIA H100 80GB HBM3", 80 * GIB, 0)
    assert h100.pci_bus_id == "00000000:3B:00.0" and h100.numa_node == 1
    assert devices[1].numa_node is None  # sysfs says -1: no NUMA information


def test_metrics_units(gpus: list[FakeGPU], sysfs: Path) -> None:
    backend = NVMLBackend("node-1", nvml=fake_pynvml(gpus), sysfs=sysfs)
    h100 = backend.discover()[0]
    sample = backend.read(h100)
    assert sample.memory_used_bytes == 4 * GIB and sample.memory_total_bytes == 80 * GIB
    assert sample.compute_utilization_percent == 37
    assert sample.temperature_celsius == 61
    assert sample.power_watts == pytest.approx(245.5)  # mW -> W
    assert sample.clock_rate_mhz == 1755


def test_healthy_then_critical_xid(gpus: list[FakeGPU], sysfs: Path) -> None:
    fake = fake_pynvml(gpus)
    backend = NVMLBackend("node-1", nvml=fake, sysfs=sysfs)
    h100, a100 = backend.discover()
    assert backend.health(h100).healthy
    fake.pending_events += [(gpus[0], 13), (gpus[1], 79)]  # 13 is an application XID
    assert backend.health(h100).healthy
    health = backend.health(a100)
    assert (health.healthy, health.reason) == (False, "XidError") and "79" in health.message


def test_uncorrected_ecc_is_unhealthy_and_unsupported_ecc_is_not(
    gpus: list[FakeGPU], sysfs: Path
) -> None:
    gpus[0].ecc_uncorrected = 2
    gpus[1].ecc_uncorrected = None
    backend = NVMLBackend("node-1", nvml=fake_pynvml(gpus), sysfs=sysfs)
    h100, a100 = backend.discover()
    assert backend.health(h100).reason == "EccUncorrectable"
    assert backend.health(a100).healthy


def test_lost_gpu(gpus: list[FakeGPU], sysfs: Path) -> None:
    backend = NVMLBackend("node-1", nvml=fake_pynvml(gpus), sysfs=sysfs)
    _h100, a100 = backend.discover()
    gpus[1].lost = True
    with pytest.raises(DeviceLost):
        backend.read(a100)
    health = backend.health(a100)
    assert (health.healthy, health.reason) == (False, "DeviceLost")
    assert [d.device_id for d in backend.discover()] == ["node-1-nvidia-0"]


def test_init_failure_is_unavailable_not_a_crash(gpus: list[FakeGPU], sysfs: Path) -> None:
    fake = fake_pynvml(gpus)
    fake.init_error = 9  # NVML_ERROR_DRIVER_NOT_LOADED
    backend = NVMLBackend("node-1", nvml=fake, sysfs=sysfs)
    with pytest.raises(BackendUnavailable, match="nvmlInit failed"):
        backend.discover()


def test_close_shuts_nvml_down_once(gpus: list[FakeGPU], sysfs: Path) -> None:
    fake = fake_pynvml(gpus)
    backend = NVMLBackend("node-1", nvml=fake, sysfs=sysfs)
    backend.discover()
    backend.close()
    backend.close()
    assert fake.calls.count("shutdown") == 1


def test_pci_address_translation(tmp_path: Path) -> None:
    assert sysfs_pci_address("00000000:3B:00.0") == "0000:3b:00.0"
    assert numa_node_of("00000000:3B:00.0", tmp_path) is None  # no sysfs entry


def test_pynvml_import_is_the_default_boundary(monkeypatch: pytest.MonkeyPatch,
                                               gpus: list[FakeGPU], sysfs: Path) -> None:
    fake = fake_pynvml(gpus)
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    backend = NVMLBackend("node-1", sysfs=sysfs)
    assert len(backend.discover()) == 2


# -- the deadline guard: a hung driver never hangs the agent ------------------------------------


def test_hanging_call_times_out_and_marks_not_healthy(gpus: list[FakeGPU], sysfs: Path) -> None:
    release = threading.Event()
    fake = fake_pynvml(gpus)
    guarded = GuardedBackend(NVMLBackend("node-1", nvml=fake, sysfs=sysfs), timeout=0.2)
    h100, _ = guarded.discover()
    hanging = fake_pynvml(gpus, hang=release)
    guarded.backend._nvml = hanging  # type: ignore[attr-defined]  # the driver wedges
    hanging.calls = fake.calls
    try:
        with pytest.raises(BackendTimeout, match=r"did not return within 0\.2 s"):
            guarded.read(h100)
        assert guarded.stuck
        # While the call is stuck, later calls fail at once instead of stacking threads.
        with pytest.raises(BackendTimeout, match="still stuck"):
            guarded.health(h100)
    finally:
        release.set()
    # Once the stuck call returns, the backend is usable again.
    guarded.backend._nvml = fake  # type: ignore[attr-defined]
    deadline = threading.Event()
    for _ in range(50):
        if not guarded.stuck:
            break
        deadline.wait(0.05)
    assert guarded.read(h100).compute_utilization_percent == 37
    guarded.close()


async def test_agent_reports_a_hung_device_not_healthy(gpus: list[FakeGPU], sysfs: Path) -> None:
    release = threading.Event()
    fake = fake_pynvml(gpus)
    guarded = GuardedBackend(NVMLBackend("node-1", nvml=fake, sysfs=sysfs), timeout=0.2)
    metrics = ExporterMetrics("node-1")
    agent = DeviceAgent(AgentConfig(node="node-1"), guarded, api=None,  # type: ignore[arg-type]
                        metrics=metrics, clock=lambda: 1_800_000_000.0)
    agent.collect(1_800_000_000.0)
    guarded.backend._nvml = fake_pynvml(gpus, hang=release)  # type: ignore[attr-defined]
    try:
        started = time.monotonic()
        agent.collect(1_800_000_002.0)
        assert time.monotonic() - started < 5.0  # the fake hangs for 30 s without the guard
        state = agent.states["node-1-nvidia-0"]
        assert state.read_error is not None and state.read_error.reason == "BackendTimeout"
        assert not state.health.healthy and state.health.reason == "BackendTimeout"
        conditions = desired_conditions(state.health, state.read_error, 0, None, "nvml")
        assert conditions.ready[:2] == ("False", "BackendTimeout")
        assert conditions.healthy[:2] == ("False", "BackendTimeout")
        errors = metrics.backend_errors.labels("nvml", "BackendTimeout")._value.get()
        assert errors >= 4  # two reads and two health checks, none waited for more than 0.2 s
        assert metrics.scrape_success.labels("nvml")._value.get() == 0
    finally:
        release.set()
        guarded.close()


def test_queries_the_board_does_not_support_are_absent_not_zero(gpus: list[FakeGPU],
                                                                sysfs: Path) -> None:
    fake = fake_pynvml(gpus)

    def no_power(h: FakeGPU) -> int:
        raise NVMLError(3)  # NVML_ERROR_NOT_SUPPORTED, as on boards without a power sensor

    fake.nvmlDeviceGetPowerUsage = no_power
    backend = NVMLBackend("node-1", nvml=fake, sysfs=sysfs)
    sample = backend.read(backend.discover()[0])
    assert sample.power_watts is None
    assert sample.temperature_celsius == 61 and sample.clock_rate_mhz == 1755

    def broken(h: FakeGPU) -> int:
        raise NVMLError(999)  # any other error still fails the read

    fake.nvmlDeviceGetPowerUsage = broken
    with pytest.raises(BackendError, match="NVML error 999"):
        backend.read(backend.discover()[0])
