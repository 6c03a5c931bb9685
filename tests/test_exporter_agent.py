"""The agent's reconciliation against an in-memory API (the real server is tests/integration).

The in-memory API keeps resourceVersions and answers 409 on a stale one, like the API server, so
the conflict, backoff and refusal paths can be driven exactly.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import random
from collections.abc import Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from exo.gpu.exporter.agent import AgentConfig, DeviceAgent, summarize
from exo.gpu.exporter.backends.base import BackendError, GuardedBackend
from exo.gpu.exporter.backends.simulated import SimulatedBackend
from exo.gpu.exporter.fleet import parse_fleet
from exo.gpu.exporter.kubeapi import ApiError, Conflict, NotFound
from exo.gpu.exporter.metrics import ExporterMetrics
from exo.gpu.exporter.server import make_app
from exo.gpu.k8s.models import LABEL_NODE, GPUDevice, find_condition

T0 = 1_800_000_000.0
GIB = 1024**3


class MemoryAPI:
    """GPUDevice storage with resourceVersions, 409s and injectable failures."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.fail: list[ApiError] = []
        self.refuse: set[str] = set()
        self.calls: list[str] = []
        self.clock: Clock | None = None
        self.call_times: list[float] = []

    def _next(self, obj: dict[str, Any]) -> GPUDevice:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.objects[obj["metadata"]["name"]] = obj
        return GPUDevice.model_validate(copy.deepcopy(obj))

    def _enter(self, call: str) -> None:
        self.calls.append(call)
        if self.clock is not None:
            self.call_times.append(self.clock.now)
        if self.fail:
            raise self.fail.pop(0)

    async def list(self, node: str) -> list[GPUDevice]:
        self._enter("list")
        return [GPUDevice.model_validate(copy.deepcopy(o)) for o in self.objects.values()
                if o["metadata"]["labels"].get(LABEL_NODE) == node]

    async def get(self, name: str) -> GPUDevice | None:
        self._enter("get")
        obj = self.objects.get(name)
        return None if obj is None else GPUDevice.model_validate(copy.deepcopy(obj))

    async def create(self, device: GPUDevice) -> GPUDevice:
        self._enter("create")
        if device.name in self.objects:
            raise Conflict(409, "AlreadyExists", device.name)
        obj = device.to_api()
        obj["metadata"]["uid"] = f"uid-{device.name}"
        obj["metadata"]["generation"] = 1
        obj.pop("status", None)
        return self._next(obj)

    async def patch(self, name: str, patch: Mapping[str, Any]) -> GPUDevice:
        self._enter("patch")
        obj = self.objects.get(name)
        if obj is None:
            raise NotFound(404, "NotFound", name)
        obj["metadata"]["labels"].update(patch.get("metadata", {}).get("labels", {}))
        for key, value in patch.get("spec", {}).items():
            if value is None:
                obj["spec"].pop(key, None)
            else:
                obj["spec"][key] = value
        obj["metadata"]["generation"] += 1
        return self._next(obj)

    async def replace_status(self, device: GPUDevice) -> GPUDevice:
        self._enter("status")
        obj = self.objects.get(device.name)
        if obj is None:
            raise NotFound(404, "NotFound", device.name)
        if device.name in self.refuse:
            raise ApiError(422, "Invalid", f"{device.name}: refused")
        if device.metadata.resource_version != obj["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "the object has been modified")
        status = device.to_api()["status"]
        if status.get("metrics", {}).get("memoryUsedBytes", 0) > obj["spec"]["memoryTotalBytes"]:
            raise ApiError(422, "Invalid", "memoryUsedBytes must not exceed memoryTotalBytes")
        obj["status"] = status
        return self._next(obj)

    async def delete(self, name: str, uid: str | None = None) -> None:
        self._enter("delete")
        self.objects.pop(name, None)

    def status_of(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.objects[name]["status"]
        return status


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_agent(devices: list[dict[str, Any]], api: MemoryAPI | None = None,
               **config: Any) -> tuple[DeviceAgent, MemoryAPI, Clock]:
    clock = Clock()
    fleet = parse_fleet({"nodes": [{"name": "n1", "devices": devices}]})
    backend = GuardedBackend(SimulatedBackend(fleet, "n1", clock=clock, start=T0), 2.0)
    api = api or MemoryAPI()
    api.clock = clock
    agent = DeviceAgent(AgentConfig(node="n1", **config), backend, api, ExporterMetrics("n1"),
                        clock=clock, rng=random.Random(7))
    return agent, api, clock


async def run(agent: DeviceAgent, clock: Clock, seconds: float, step: float = 2.0) -> None:
    end = clock.now + seconds
    while clock.now < end:
        await agent.poll_once()
        clock.now += step


L4 = {"vendor": "nvidia", "model": "NVIDIA L4", "memory": "24Gi", "memoryUsed": {"base": "2Gi"}}


async def test_invalid_readings_are_counted_and_never_written() -> None:
    flaky = {**L4, "failures": [{"kind": "invalid", "at": 10, "until": 18}]}
    agent, api, clock = make_agent([flaky])
    await run(agent, clock, 10)  # t=0..8: valid
    written_before = api.status_of("n1-nvidia-0")["metrics"]
    await run(agent, clock, 4)  # t=10, 12: impossible readings
    status = api.status_of("n1-nvidia-0")
    assert status["metrics"] == written_before
    counter = agent.metrics.invalid_readings.labels("simulated", "memory_used_bytes")
    assert counter._value.get() == 2
    ready = find_condition(GPUDevice.model_validate(api.objects["n1-nvidia-0"]).status.conditions,  # type: ignore[union-attr]
                           "Ready")
    assert ready is not None and ready.status == "True"  # two bad readings change nothing
    await run(agent, clock, 4)  # t=14, 16: the third in a row turns the device not Ready
    ready_status = {c["type"]: c for c in api.status_of("n1-nvidia-0")["conditions"]}["Ready"]
    assert (ready_status["status"], ready_status["reason"]) == ("False", "InvalidReadings")
    assert api.status_of("n1-nvidia-0")["metrics"] == written_before
    await run(agent, clock, 8)  # valid again: Ready again, at the next allowed write
    ready_status = {c["type"]: c for c in api.status_of("n1-nvidia-0")["conditions"]}["Ready"]
    assert ready_status["status"] == "True"


async def test_backend_errors_become_conditions_with_reasons() -> None:
    failing = {**L4, "failures": [{"kind": "error", "at": 6, "until": 12, "reason": "NVMLError"}]}
    agent, api, clock = make_agent([failing])
    await run(agent, clock, 8)
    ready = {c["type"]: c for c in api.status_of("n1-nvidia-0")["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "NVMLError")
    assert agent.metrics.backend_errors.labels("simulated", "NVMLError")._value.get() >= 1
    await run(agent, clock, 10)
    ready = {c["type"]: c for c in api.status_of("n1-nvidia-0")["conditions"]}["Ready"]
    assert ready["status"] == "True"


async def test_api_outage_backs_off_then_recovers() -> None:
    agent, api, clock = make_agent([L4])
    api.fail = [ApiError(503, "ServiceUnavailable", "etcd down")] * 3
    await agent.poll_once()
    assert api.calls == ["list"] and api.objects == {}
    calls = len(api.calls)
    clock.now += 0.2  # inside the backoff window: no API call at all
    await agent.poll_once()
    assert len(api.calls) == calls
    # Retries come further and further apart while the outage lasts, then everything catches up.
    await run(agent, clock, 30, step=0.5)
    assert "n1-nvidia-0" in api.objects and "metrics" in api.status_of("n1-nvidia-0")
    lists = [t for t, call in zip(api.call_times, api.calls, strict=True) if call == "list"]
    assert len(lists) == 4  # three failures, one success
    gaps = [b - a for a, b in itertools.pairwise(lists)]
    assert gaps == sorted(gaps) and gaps[0] >= 0.5 and gaps[-1] >= 2.0
    assert agent.ready


async def test_refused_write_is_counted_and_others_continue() -> None:
    agent, api, clock = make_agent([L4, {**L4, "memoryUsed": {"base": "3Gi"}}])
    await agent.poll_once()
    api.refuse = {"n1-nvidia-0"}  # e.g. an admission policy says no
    clock.now += 30
    await agent.poll_once()
    assert agent.metrics.api_writes.labels("status", "refused")._value.get() == 1
    # The other device was written in the same poll: a refusal is not an outage.
    assert summarize(agent.write_log) == {"n1-nvidia-0": 1, "n1-nvidia-1": 2}
    clock.now += 6
    await agent.poll_once()  # a refusal is retried a heartbeat later, not at poll rate
    assert agent.metrics.api_writes.labels("status", "refused")._value.get() == 1
    clock.now += 24
    await agent.poll_once()
    assert agent.metrics.api_writes.labels("status", "refused")._value.get() == 2


async def test_status_conflict_is_retried_from_a_fresh_read() -> None:
    agent, api, clock = make_agent([L4])
    await agent.poll_once()
    api.objects["n1-nvidia-0"]["status"]["score"] = 0.5  # the controller writes
    api.version += 1
    api.objects["n1-nvidia-0"]["metadata"]["resourceVersion"] = str(api.version)
    clock.now += 30
    await agent.poll_once()
    assert api.status_of("n1-nvidia-0")["score"] == 0.5
    results = [r.result for r in agent.write_log if r.kind == "status"]
    assert results == ["ok", "conflict", "ok"]


async def test_cordon_is_never_undone_and_identity_changes_are_patched() -> None:
    agent, api, clock = make_agent([L4])
    await agent.poll_once()
    api.objects["n1-nvidia-0"]["spec"]["unschedulable"] = True
    api.objects["n1-nvidia-0"]["spec"]["model"] = "wrong"
    agent.objects["n1-nvidia-0"] = GPUDevice.model_validate(api.objects["n1-nvidia-0"])
    clock.now += 2
    await agent.poll_once()
    spec = api.objects["n1-nvidia-0"]["spec"]
    assert spec["model"] == "NVIDIA L4" and spec["unschedulable"] is True
    assert [r.kind for r in agent.write_log].count("spec") == 1


async def test_failed_discovery_vanishes_nothing() -> None:
    agent, api, clock = make_agent([L4], rediscover_interval_s=2.0)
    await agent.poll_once()

    def broken() -> list[Any]:
        raise BackendError("driver reset in progress", "NVMLError")

    agent.backend.backend.discover = broken  # type: ignore[attr-defined]
    await run(agent, clock, 20)
    ready = {c["type"]: c for c in api.status_of("n1-nvidia-0")["conditions"]}["Ready"]
    assert ready["reason"] != "DeviceVanished"
    assert "n1-nvidia-0" in api.objects


async def test_a_vanished_device_is_deleted_unless_cordoned() -> None:
    """A cordon is its operator's: deleting (and later re-creating) the device would lift it,
    and the admission policy refuses the exporter that delete."""
    agent, api, clock = make_agent([L4, L4], rediscover_interval_s=2.0, vanish_grace_s=10.0)
    await agent.poll_once()
    api.objects["n1-nvidia-1"]["spec"]["unschedulable"] = True
    agent.objects["n1-nvidia-1"] = GPUDevice.model_validate(api.objects["n1-nvidia-1"])
    agent.backend.backend.discover = lambda: []  # type: ignore[attr-defined]
    await run(agent, clock, 30)
    assert "n1-nvidia-0" not in api.objects
    ready = {c["type"]: c for c in api.status_of("n1-nvidia-1")["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "DeviceVanished")
    assert [(r.kind, r.device) for r in agent.write_log if r.kind == "delete"] == \
        [("delete", "n1-nvidia-0")]


async def test_object_deleted_by_someone_else_is_recreated() -> None:
    agent, api, clock = make_agent([L4])
    await agent.poll_once()
    del api.objects["n1-nvidia-0"]
    clock.now += 30
    await agent.poll_once()  # the status write finds it gone
    clock.now += 2
    await agent.poll_once()
    assert "n1-nvidia-0" in api.objects
    assert [r.kind for r in agent.write_log].count("create") == 2


async def test_run_stops_gracefully() -> None:
    agent, api, _ = make_agent([L4], poll_interval_s=0.1)
    task = asyncio.create_task(agent.run())
    for _ in range(100):
        if api.objects:
            break
        await asyncio.sleep(0.05)
    agent.stop()
    await asyncio.wait_for(task, timeout=5)
    await agent.aclose()
    assert "n1-nvidia-0" in api.objects


async def test_http_endpoints() -> None:
    agent, _api, _clock = make_agent([L4])
    async with TestClient(TestServer(make_app(agent))) as client:
        not_ready = await client.get("/readyz")
        assert not_ready.status == 503 and "discovery" in await not_ready.text()
        assert (await client.get("/healthz")).status == 200
        await agent.poll_once()
        assert (await client.get("/readyz")).status == 200
        body = await (await client.get("/metrics")).text()
        assert 'DCGM_FI_DEV_GPU_UTIL{Hostname="n1",UUID="GPU-' in body
        assert "exo_gpu_exporter_api_writes_total" in body
        agent._last_cycle_monotonic = -1e9  # the loop stalled long ago
        assert (await client.get("/healthz")).status == 503


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="poll_interval_s"):
        AgentConfig(node="n1", poll_interval_s=0)
    with pytest.raises(ValueError, match="vanish_grace_s"):
        AgentConfig(node="n1", vanish_grace_s=-1)


async def test_refused_list_backs_off_instead_of_asking_every_poll() -> None:
    agent, api, clock = make_agent([L4])
    api.fail = [ApiError(403, "Forbidden", "cannot list gpudevices")] * 2
    await agent.poll_once()
    clock.now += 0.5
    await agent.poll_once()
    assert api.calls == ["list"]  # the second poll stayed inside the backoff window
    await run(agent, clock, 10)
    assert "n1-nvidia-0" in api.objects and agent.ready


async def test_unexpected_backend_exception_is_a_backend_error() -> None:
    agent, api, _ = make_agent([L4, {**L4, "model": "NVIDIA L40S", "memory": "48Gi"}])
    sim = agent.backend.backend  # type: ignore[attr-defined]
    real_read = sim.read

    def buggy(device: Any) -> Any:
        if device.device_id == "n1-nvidia-0":
            raise KeyError("gfx_activity")  # e.g. a library that changed a field name
        return real_read(device)

    sim.read = buggy
    await agent.poll_once()
    ready = {c["type"]: c for c in api.status_of("n1-nvidia-0")["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "BackendError")
    assert "KeyError" in ready["message"]
    assert "metrics" in api.status_of("n1-nvidia-1")  # the other device is unaffected


async def test_hanging_reads_are_cut_at_the_deadline() -> None:
    clock = Clock()
    hanging = {**L4, "failures": [{"kind": "hang", "at": 6, "until": 8, "seconds": 1.0}]}
    fleet = parse_fleet({"nodes": [{"name": "n1", "devices": [hanging, L4]}]})
    backend = GuardedBackend(SimulatedBackend(fleet, "n1", clock=clock, start=T0), timeout=0.1)
    api = MemoryAPI()
    agent = DeviceAgent(AgentConfig(node="n1"), backend, api, ExporterMetrics("n1"),
                        clock=clock, rng=random.Random(1))
    await run(agent, clock, 6)  # t=0, 2, 4: fine
    await agent.poll_once()  # t=6: the first read hangs for 1 s, the agent waits 0.1 s
    conditions = {c["type"]: c for c in api.status_of("n1-nvidia-0")["conditions"]}
    assert conditions["Ready"]["reason"] == "BackendTimeout"
    assert conditions["Healthy"]["reason"] == "BackendTimeout"
    # The second device's read was refused while the first call was stuck: it is reported too,
    # instead of the agent waiting for the stuck thread.
    assert agent.states["n1-nvidia-1"].read_error is not None
    for _ in range(40):  # the stuck call returns after its 1 s
        if not backend.stuck:
            break
        await asyncio.sleep(0.05)
    clock.now += 6
    await agent.poll_once()  # t=12: recovered
    conditions = {c["type"]: c for c in api.status_of("n1-nvidia-0")["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["Healthy"]["status"] == "True"
    backend.close()
