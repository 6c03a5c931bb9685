"""The core library end to end: manager, collector, selector and distributor together on a
simulated fleet of all five vendors whose telemetry changes over time. No cluster needed.

Every round, the expected selection, aggregate and distribution are recomputed from scratch in
the test (from the latest samples, the score formula and the eligibility rules) and compared
with what the manager's caches and running totals give.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from exo.gpu.capabilities import compute_capacity
from exo.gpu.clustering import GPUClusteringManager
from exo.gpu.selector import RejectionReason, score_device
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

GB = 1_000_000_000
T0 = 1_707_043_200.0
INTERVAL = 30.0
POD_MEMORY = 16 * GB

MODELS = {
    Vendor.NVIDIA: [("NVIDIA H100 80GB HBM3", 80 * GB), ("NVIDIA GeForce RTX 4090", 24 * GB)],
    Vendor.AMD: [("AMD Instinct MI300X", 192 * GB), ("AMD Radeon RX 7900 XTX", 24 * GB)],
    Vendor.INTEL: [("Intel(R) Data Center GPU Max 1550", 128 * GB)],
    Vendor.APPLE: [("Apple M2 Ultra", 192 * GB)],
    Vendor.QUALCOMM: [("Qualcomm(R) Adreno(TM) X1-85 GPU", 32 * GB)],
}


@dataclass
class SimulatedGPU:
    info: GPUDeviceInfo
    used_fraction: float
    utilization: float
    temperature: float
    reporting: bool = True


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def build_fleet() -> list[SimulatedGPU]:
    fleet = []
    for vendor, models in MODELS.items():
        for index in range(4):
            name, total = models[index % len(models)]
            node = f"node-{index % 3}"
            fleet.append(
                SimulatedGPU(
                    GPUDeviceInfo(
                        device_id=f"{node}-{vendor.value}-{index}",
                        vendor=vendor,
                        name=name,
                        memory_total_bytes=total,
                        node=node,
                        index=index,
                    ),
                    used_fraction=0.1 * (index + 1),
                    utilization=20.0 * index,
                    temperature=50.0 + 5 * index,
                )
            )
    return fleet


def expected_best(
    manager: GPUClusteringManager, now: float, min_memory: int = 0, vendor: Vendor | None = None
) -> str | None:
    """Selection recomputed from scratch, independently of the manager's caches."""
    policy = manager.policy
    candidates = []
    for device in manager.list_devices():
        sample = manager.get_metrics(device.device_id)
        if sample is None or (vendor is not None and device.vendor != vendor):
            continue
        if now - sample.timestamp > policy.stale_after_seconds:
            continue
        if sample.temperature_celsius >= policy.thermal_max_celsius:
            continue
        ranked = manager.explain_device(device.device_id)
        if any(r.code in (RejectionReason.CORDONED, RejectionReason.NOT_READY)
               for r in ranked.rejections):  # fmt: skip
            continue
        breakdown = score_device(
            device.memory_total_bytes,
            sample.memory_used_bytes,
            sample.compute_utilization_percent,
            sample.temperature_celsius,
            manager.get_reservation(device.device_id),
        )
        if breakdown.free_memory_bytes < min_memory:
            continue
        candidates.append((-breakdown.total, device.device_id))
    return min(candidates)[1] if candidates else None


def expected_aggregate(manager: GPUClusteringManager, now: float) -> dict[str, object]:
    samples = [
        s for d in manager.list_devices() if (s := manager.get_metrics(d.device_id)) is not None
    ]
    return {
        "device_count": len(manager.list_devices()),
        "total_memory_bytes": sum(d.memory_total_bytes for d in manager.list_devices()),
        "used_memory_bytes": sum(s.memory_used_bytes for s in samples),
        "free_memory_bytes": sum(s.memory_total_bytes - s.memory_used_bytes for s in samples),
        "average_utilization_percent": pytest.approx(
            sum(s.compute_utilization_percent for s in samples) / len(samples)
        ),
        "max_temperature_celsius": max(s.temperature_celsius for s in samples),
        "total_power_watts": pytest.approx(sum(s.power_watts for s in samples)),
        "oldest_sample_age_seconds": pytest.approx(now - min(s.timestamp for s in samples)),
    }


async def test_fleet_of_five_vendors_over_time() -> None:
    rng = random.Random(7)
    clock = Clock()
    manager = GPUClusteringManager(clock=clock, history_size=6)
    fleet = build_fleet()
    for gpu in fleet:
        manager.register_device(gpu.info)
    by_id = {gpu.info.device_id: gpu for gpu in fleet}
    assert manager.get_aggregated_metrics()["devices_by_vendor"] == {v.value: 4 for v in Vendor}
    assert manager.select_best_device() is None  # nothing has reported yet

    hot = "node-1-amd-1"
    silent = "node-0-intel-0"
    cordoned = "node-2-nvidia-2"
    placed: dict[str, int] = {}

    for round_ in range(12):
        clock.now = T0 + round_ * INTERVAL
        if round_ == 3:
            by_id[hot].temperature = 93.0
        if round_ == 6:
            by_id[hot].temperature = 60.0
        if round_ == 4:
            by_id[silent].reporting = False
        if round_ == 5:
            manager.set_cordoned(cordoned)
        if round_ == 9:
            manager.set_cordoned(cordoned, False)

        for gpu in fleet:
            gpu.used_fraction = min(0.95, max(0.0, gpu.used_fraction + rng.uniform(-0.1, 0.1)))
            gpu.utilization = min(100.0, max(0.0, gpu.utilization + rng.uniform(-15, 15)))
            if gpu.info.device_id != hot:
                gpu.temperature = min(88.0, max(35.0, gpu.temperature + rng.uniform(-4, 4)))
            if not gpu.reporting:
                continue
            total = gpu.info.memory_total_bytes
            accepted = await manager.record_metrics(
                GPUMetrics(
                    device_id=gpu.info.device_id,
                    timestamp=clock.now - rng.uniform(0, 2),
                    memory_used_bytes=int(total * gpu.used_fraction),
                    memory_total_bytes=total,
                    compute_utilization_percent=gpu.utilization,
                    power_watts=50 + 4 * gpu.utilization,
                    temperature_celsius=gpu.temperature,
                    clock_rate_mhz=1800.0,
                )
            )
            assert accepted

        # A late sample from an earlier round lands in the history and changes no decision.
        late_device = fleet[round_ % len(fleet)].info.device_id
        latest = manager.get_metrics(late_device)
        if latest is not None and round_ > 0:
            best_before = manager.select_best_device()
            late = latest.model_copy(update={"timestamp": latest.timestamp - 45.0})
            await manager.record_metrics(late)
            assert manager.get_metrics(late_device) == latest
            assert manager.select_best_device() == best_before

        # Scripted conditions show up with their reasons.
        hot_state = manager.explain_device(hot)
        assert (hot_state.reason is RejectionReason.TOO_HOT) == (3 <= round_ < 6)
        silent_state = manager.explain_device(silent)
        assert silent_state.metrics is not None
        # Last report in round 3; stale once more than 90 s (three intervals) have passed,
        # which is round 6 here because samples carry up to 2 s of jitter.
        silent_age = clock.now - silent_state.metrics.timestamp
        assert (silent_state.reason is RejectionReason.STALE) == (silent_age > 90)
        assert (silent_age > 90) == (round_ >= 6)
        assert (manager.explain_device(cordoned).reason is RejectionReason.CORDONED) == (
            5 <= round_ < 9
        )

        # Selection agrees with a from-scratch computation, for several requests.
        for min_memory, vendor in [(0, None), (POD_MEMORY, None), (64 * GB, None)] + [
            (0, v) for v in Vendor
        ]:
            assert manager.select_best_device(min_memory, vendor) == expected_best(
                manager, clock.now, min_memory, vendor
            )

        # The extender's loop: select for a 16 GB pod, then reserve what it asked for.
        best = manager.select_best_device(min_memory_bytes=POD_MEMORY)
        if best is not None:
            ranked = manager.explain_device(best, min_memory_bytes=POD_MEMORY)
            assert ranked.eligible
            placed[best] = placed.get(best, 0) + 1
            sample = manager.get_metrics(best)
            assert sample is not None
            manager.set_reservation(
                best,
                max(manager.get_reservation(best), sample.memory_used_bytes) + POD_MEMORY,
            )

        # Aggregation agrees with a recomputation from the latest samples.
        aggregate = manager.get_aggregated_metrics()
        for key, value in expected_aggregate(manager, clock.now).items():
            assert aggregate[key] == value, key

        # Distribution over the eligible devices: every task once, capacity-proportional.
        tasks = [f"task-{i}" for i in range(1000)]
        plan = manager.plan_workload(tasks, strategy="capacity", max_items_per_device=400)
        assert [t for run in plan.assignments.values() for t in run] == tasks
        eligible = {r.device_id for r in manager.rank_devices() if r.eligible}
        assert set(plan.assignments) == eligible
        assert all(len(run) <= 400 for run in plan.assignments.values())
        for device_id, run in plan.assignments.items():
            assert plan.weights[device_id] == compute_capacity(manager.get_device(device_id))  # type: ignore[arg-type]
            assert run == [] or plan.scores[device_id].total >= 0

        # History stays bounded.
        assert all(len(manager.get_metrics_history(g.info.device_id)) <= 6 for g in fleet)

    # Over the rounds the pods spread out instead of piling onto one device.
    assert len(placed) > 1
    assert silent not in manager.distribute_workload(list(range(50)), "uniform")
    manager.unregister_device(silent)
    assert manager.get_aggregated_metrics()["devices_by_vendor"]["intel"] == 3
