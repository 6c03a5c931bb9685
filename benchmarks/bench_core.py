"""Core library benchmark: 10,000 devices of five vendors and 100,000 tasks.

Prints p50 and p99 (milliseconds) of every core operation beside the original design's table and
DESIGN.md's budget (ten times under the original), with a PASS/FAIL column judged on p50 and on
p99 separately. Selection is measured in steady state (nothing changed between calls),
interleaved with telemetry (one new sample recorded before every select, as in a live cluster,
where the changed device must be re-placed in the ordering) and with a filter most devices fail.

Distribution returns 10,000 fresh lists per call, so CPython's cyclic garbage collector runs
during it; a full collection walks every object of the process (here ~140,000 for the fleet's
models and histories) and dominates the p99. The distribution rows are therefore measured twice:
with the interpreter's default collector settings, and after ``gc.freeze()`` (what a long-running
controller does once its initial sync is loaded: the loaded objects are no longer rescanned).
Run: ``make bench``.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable

from exo.gpu.clustering import GPUClusteringManager
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

DEVICES = 10_000
TASKS = 100_000
GB = 1_000_000_000

MODELS: list[tuple[Vendor, str, int]] = [
    (Vendor.NVIDIA, "NVIDIA H100 80GB HBM3", 80 * GB),
    (Vendor.NVIDIA, "NVIDIA A100-SXM4-40GB", 40 * GB),
    (Vendor.NVIDIA, "NVIDIA GeForce RTX 4090", 24 * GB),
    (Vendor.NVIDIA, "NVIDIA L40S", 48 * GB),
    (Vendor.AMD, "AMD Instinct MI300X", 192 * GB),
    (Vendor.AMD, "AMD Radeon RX 7900 XTX", 24 * GB),
    (Vendor.INTEL, "Intel(R) Data Center GPU Max 1550", 128 * GB),
    (Vendor.INTEL, "Intel(R) Arc(TM) A770 Graphics", 16 * GB),
    (Vendor.APPLE, "Apple M2 Ultra", 192 * GB),
    (Vendor.QUALCOMM, "Qualcomm Adreno X1-85", 32 * GB),
]

# operation -> (original design, DESIGN.md budget), milliseconds
BUDGETS: dict[str, tuple[float, float]] = {
    "distribute capacity, gc frozen": (50.0, 5.0),
    "distribute uniform, gc frozen": (50.0, 5.0),
    "distribute capacity + caps, gc frozen": (50.0, 5.0),
    "register": (1.0, 0.1),
    "record": (1.0, 0.1),
    "select (steady state)": (10.0, 1.0),
    "select (after a record)": (10.0, 1.0),
    "select (vendor + memory filter)": (10.0, 1.0),
    "distribute capacity": (50.0, 5.0),
    "distribute uniform": (50.0, 5.0),
    "distribute capacity + caps": (50.0, 5.0),
    "aggregate": (10.0, 1.0),
}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - start) / 1e6)
    return out


def sample(rng: random.Random, device_id: str, total: int, timestamp: float) -> GPUMetrics:
    return GPUMetrics(
        device_id=device_id,
        timestamp=timestamp,
        memory_used_bytes=rng.randrange(0, total),
        memory_total_bytes=total,
        compute_utilization_percent=rng.uniform(0, 100),
        power_watts=rng.uniform(20, 700),
        temperature_celsius=rng.uniform(35, 92),
        clock_rate_mhz=rng.uniform(500, 2500),
    )


async def run() -> dict[str, list[float]]:
    rng = random.Random(20240204)
    manager = GPUClusteringManager()
    infos = []
    for i in range(DEVICES):
        vendor, name, total = MODELS[i % len(MODELS)]
        infos.append(
            GPUDeviceInfo(
                device_id=f"node-{i // 8:04d}-{vendor.value}-{i % 8}",
                vendor=vendor,
                name=name,
                memory_total_bytes=total,
                node=f"node-{i // 8:04d}",
                index=i % 8,
            )
        )
    results: dict[str, list[float]] = {}

    it = iter(infos)
    results["register"] = timed(lambda: manager.register_device(next(it)), DEVICES)

    base = time.time() - 60.0
    first = [
        sample(rng, d.device_id, d.memory_total_bytes, base + rng.uniform(0, 5)) for d in infos
    ]
    for m in first:
        await manager.record_metrics(m)

    # One fresh sample per device, recorded through the async API as the controller does.
    fresh = [
        sample(rng, d.device_id, d.memory_total_bytes, base + 10 + i * 1e-4)
        for i, d in enumerate(infos)
    ]
    record_times = []
    for m in fresh:
        start = time.perf_counter_ns()
        await manager.record_metrics(m)
        record_times.append((time.perf_counter_ns() - start) / 1e6)
    results["record"] = record_times

    results["select (steady state)"] = timed(
        lambda: manager.select_best_device(min_memory_bytes=8 * GB), 2000
    )

    later = [
        sample(rng, d.device_id, d.memory_total_bytes, base + 20 + i * 1e-4)
        for i, d in enumerate(rng.sample(infos, 2000))
    ]
    interleaved = []
    for m in later:
        await manager.record_metrics(m)
        start = time.perf_counter_ns()
        manager.select_best_device(min_memory_bytes=8 * GB)
        interleaved.append((time.perf_counter_ns() - start) / 1e6)
    results["select (after a record)"] = interleaved

    results["select (vendor + memory filter)"] = timed(
        lambda: manager.select_best_device(min_memory_bytes=100 * GB, vendor=Vendor.INTEL), 2000
    )

    tasks = list(range(TASKS))
    results["distribute capacity"] = timed(
        lambda: manager.distribute_workload(tasks, strategy="capacity"), 40
    )
    results["distribute uniform"] = timed(
        lambda: manager.distribute_workload(tasks, strategy="uniform"), 40
    )
    results["distribute capacity + caps"] = timed(
        lambda: manager.distribute_workload(tasks, strategy="capacity", max_items_per_device=40),
        40,
    )

    more = [
        sample(rng, d.device_id, d.memory_total_bytes, base + 30 + i * 1e-4)
        for i, d in enumerate(rng.sample(infos, 2000))
    ]
    aggregate_times = []
    for m in more:
        await manager.record_metrics(m)
        start = time.perf_counter_ns()
        manager.get_aggregated_metrics()
        aggregate_times.append((time.perf_counter_ns() - start) / 1e6)
    results["aggregate"] = aggregate_times

    gc.freeze()
    results["distribute capacity, gc frozen"] = timed(
        lambda: manager.distribute_workload(tasks, strategy="capacity"), 40
    )
    results["distribute uniform, gc frozen"] = timed(
        lambda: manager.distribute_workload(tasks, strategy="uniform"), 40
    )
    results["distribute capacity + caps, gc frozen"] = timed(
        lambda: manager.distribute_workload(tasks, strategy="capacity", max_items_per_device=40),
        40,
    )
    gc.unfreeze()

    eligible = len(manager.distribute_workload([], strategy="uniform"))
    print(f"{DEVICES} devices registered, {eligible} eligible (the rest too hot), {TASKS} tasks")
    return results


def main() -> int:
    gc.collect()
    results = asyncio.run(run())
    header = (
        f"{'operation':38} {'p50 ms':>9} {'p99 ms':>9} {'original':>9} {'budget':>8} "
        f"{'p50':>5} {'p99':>5}"
    )
    print(header)
    print("-" * len(header))
    failed_rows = 0
    for name, samples in results.items():
        original, budget = BUDGETS[name]
        p50 = statistics.median(samples)
        p99 = percentile(samples, 99)
        ok50 = p50 < budget
        ok99 = p99 < budget
        failed_rows += not ok50
        print(
            f"{name:38} {p50:9.4f} {p99:9.4f} {'<' + format(original, 'g'):>9} "
            f"{'<' + format(budget, 'g'):>8} {'PASS' if ok50 else 'FAIL':>5} "
            f"{'PASS' if ok99 else 'FAIL':>5}"
        )
    print(
        "original: the original design's table; budget: DESIGN.md section 10 (10x under it).\n"
        "p50/p99 columns: that percentile against the budget."
    )
    print(f"rows over budget at p50: {failed_rows}/{len(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
