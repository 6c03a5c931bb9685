"""Controller benchmark on the local control plane: time to Placed, and memory at 10,000 devices.

DESIGN.md section 10 budgets the controller at "a GPUWorkload placed within 1 s (p99) with 100
arriving together; memory flat over 10,000 objects". This runs the real ``exo-gpu controller``
process (informer, Lease, kopf) against a real API server started from the cached binaries:

1. Time to Placed: 16 devices on 4 fake nodes; 100 GPUWorkloads (8 tasks, uniform and capacity
   alternating) created at once from 16 client threads. For each workload: the time from the
   start of its create request to the first watch event showing ``status.phase: Placed``.
2. Memory: 10,000 GPUDevice objects (with status) are created, then every one is updated twice
   more (two heartbeat rounds). The controller's RSS (``/proc/PID/status``) is sampled before,
   after the devices are in its view (its ``/metrics`` gauge reaches 10,000) and after each
   update round. The view keeps ``--history-size`` samples per device (2, the default), so the
   first round fills the history and the second replaces samples: memory must not grow in the
   second round (judged: less than 5 % of the synced figure).

Figures go to stdout and to benchmarks/results/controller.txt. Run:
``.venv/bin/python benchmarks/bench_controller.py`` (about 2-3 minutes on 2 cores).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exo.gpu.devcluster import LocalCluster, wait_for
from exo.gpu.devcluster.nodes import create_gpu_node
from exo.gpu.devcluster.pytest_plugin import apply_crds

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION = "gpu.exo.dev", "v1alpha1"
GIB = 1024**3
WORKLOADS = 100
DEVICES = 10_000
NAMESPACE = "bench"
HISTORY = 2  # the controller's --history-size default


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def device_body(node: str, vendor: str, index: int, memory_gib: int,
                labels: dict[str, str]) -> dict[str, Any]:
    name = f"{node}-{vendor}-{index}"
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUDevice",
            "metadata": {"name": name, "labels": {"gpu.exo.dev/node": node,
                                                  "gpu.exo.dev/vendor": vendor, **labels}},
            "spec": {"node": node, "vendor": vendor, "index": index, "uuid": f"uuid-{name}",
                     "model": f"{vendor}-model", "memoryTotalBytes": memory_gib * GIB,
                     "computeCapacity": 100.0 + 50 * (index % 4)}}


def status_body(used_gib: float, util: float) -> dict[str, Any]:
    now = now_iso()
    return {"status": {
        "metrics": {"timestamp": now, "memoryUsedBytes": int(used_gib * GIB),
                    "computeUtilizationPercent": util, "temperatureCelsius": 55.0,
                    "powerWatts": 200.0, "clockRateMHz": 1500.0},
        "lastHeartbeatTime": now,
        "conditions": [{"type": "Ready", "status": "True", "reason": "DeviceReady",
                        "message": "benchmark", "lastTransitionTime": now}]}}


def create_devices(api: Any, bodies: list[dict[str, Any]], workers: int = 16) -> float:
    def one(body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        api.create_cluster_custom_object(GROUP, VERSION, "gpudevices", body,
                                         _preload_content=False)
        i = int(name.rsplit("-", 1)[1])
        api.patch_cluster_custom_object_status(GROUP, VERSION, "gpudevices", name,
                                               status_body(i % 40, (i * 7) % 100),
                                               _preload_content=False)

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, bodies))
    return time.monotonic() - started


def utilization(index: int, round_: int) -> float:
    """Utilization of device ``index`` in update round 1 or 2: averages 24.5 and 9.5 over the
    devices, against 49.5 at creation, so the view's exported average tells each round in."""
    return float((index * 11) % (50 if round_ == 1 else 20))


def update_devices(api: Any, names: list[str], round_: int, workers: int = 16) -> float:
    def one(item: tuple[int, str]) -> None:
        i, name = item
        api.patch_cluster_custom_object_status(GROUP, VERSION, "gpudevices", name,
                                               status_body((i + round_) % 40,
                                                           utilization(i, round_)),
                                               _preload_content=False)

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, enumerate(names)))
    return time.monotonic() - started


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def gauge(port: int, name: str) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return None
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    from kubernetes import client, watch

    from exo.gpu.devcluster.cluster import free_port

    lines: list[str] = []

    def report(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    workdir = Path(tempfile.mkdtemp(prefix="bench-controller-"))
    placement_only = "--placement-only" in sys.argv
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(LocalCluster(workdir=workdir))
        apply_crds(cluster, ROOT / "crds")
        api_client = cluster.api_client()
        custom = client.CustomObjectsApi(api_client)
        cluster.kubectl("create", "namespace", NAMESPACE)
        metrics_port = free_port()
        env = {**os.environ, "KUBECONFIG": cluster.kubeconfig}
        log = stack.enter_context((workdir / "controller.log").open("wb"))
        controller = subprocess.Popen(
            [sys.executable, "-m", "exo.gpu.cli", "controller", "--metrics-port",
             str(metrics_port), "--liveness", "", "--lease-namespace", "default",
             "--log-level", "WARNING", "--history-size", str(HISTORY)],
            env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for(lambda: gauge(metrics_port, "exo_gpu_cluster_devices") is not None,
                     timeout=60, what="the controller's /metrics")
            idle_rss = rss_mib(controller.pid)

            # ---------------------------------------------------------------- 1. time to Placed
            nodes = [f"bench-{i}" for i in range(4)]
            fleet = []
            for i, node in enumerate(nodes):
                vendor = ("nvidia", "amd", "intel", "nvidia")[i]
                create_gpu_node(api_client, node, vendor=vendor, model="m", gpus=4)
                fleet += [device_body(node, vendor, j, 80, {"bench": "fleet"}) for j in range(4)]
            create_devices(custom, fleet)
            wait_for(lambda: gauge(metrics_port, "exo_gpu_cluster_devices") == len(fleet),
                     timeout=60, what="the fleet in the controller's view")
            placed_at: dict[str, float] = {}
            started_at: dict[str, float] = {}
            watcher_ready = threading.Event()

            def watch_placed() -> None:
                stream = watch.Watch()
                listing = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE,
                                                               "gpuworkloads")
                watcher_ready.set()
                for event in stream.stream(
                        custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE,
                        "gpuworkloads", resource_version=listing["metadata"]["resourceVersion"],
                        timeout_seconds=120):
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    if (obj.get("status") or {}).get("phase") == "Placed" and \
                            name not in placed_at:
                        placed_at[name] = time.monotonic()
                    if len(placed_at) == WORKLOADS:
                        stream.stop()

            thread = threading.Thread(target=watch_placed, daemon=True)
            thread.start()
            watcher_ready.wait(10)

            def create(i: int) -> None:
                name = f"w{i:03d}"
                spec: dict[str, Any] = {"tasks": 8, "deviceSelector": {
                    "matchLabels": {"bench": "fleet"}}}
                if i % 2:
                    spec.update(strategy="capacity", maxTasksPerDevice=2)
                started_at[name] = time.monotonic()
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, "gpuworkloads",
                    {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload",
                     "metadata": {"name": name}, "spec": spec}, _preload_content=False)

            burst = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(create, range(WORKLOADS)))
            created_in = time.monotonic() - burst
            thread.join(timeout=120)
            latencies = [placed_at[n] - started_at[n] for n in started_at if n in placed_at]
            report(f"# exo-gpu controller benchmark ({time.strftime('%Y-%m-%d %H:%M')}, "
                   f"{os.cpu_count()} CPUs, control plane and controller on this machine)")
            report()
            report(f"time to Placed, {WORKLOADS} GPUWorkloads created at once "
                   f"(16 client threads, all created in {created_in:.2f} s), "
                   f"{len(fleet)} devices:")
            report(f"  placed: {len(latencies)}/{WORKLOADS}")
            if latencies:
                p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
                verdict = "PASS" if p99 < 1.0 and len(latencies) == WORKLOADS else "FAIL"
                report(f"  p50 {p50 * 1000:.0f} ms   p99 {p99 * 1000:.0f} ms   max "
                       f"{max(latencies) * 1000:.0f} ms   mean "
                       f"{statistics.mean(latencies) * 1000:.0f} ms   "
                       f"(budget: p99 < 1000 ms) {verdict}")
            report(f"  first to last Placed: {max(placed_at.values()) - burst:.2f} s after the "
                   "first create" if placed_at else "  none placed")

            # ---------------------------------------------------------------- 2. memory
            if placement_only:
                return 0
            before_rss = rss_mib(controller.pid)
            bodies = [device_body(f"mem-{i // 8:04d}", ("nvidia", "amd", "intel")[i % 3],
                                  i % 8, 80, {"bench": "memory"}) for i in range(DEVICES)]
            created = create_devices(custom, bodies)
            total = DEVICES + len(fleet)
            wait_for(lambda: gauge(metrics_port, "exo_gpu_cluster_devices") == total,
                     timeout=180, what="10,000 devices in the controller's view", interval=1)
            synced_rss = rss_mib(controller.pid)
            names = [b["metadata"]["name"] for b in bodies]
            rounds: list[tuple[float, float]] = []
            for round_ in (1, 2):
                updated = update_devices(custom, names, round_)
                utils = [(int(b["metadata"]["name"].rsplit("-", 1)[1]) * 7) % 100 for b in fleet]
                utils += [utilization(k, round_) for k in range(DEVICES)]
                expected = sum(utils) / len(utils)
                # The round changes every utilization: the view has caught up when the average
                # it exports is the one the new values give.
                wait_for(lambda e=expected: abs((gauge(
                    metrics_port, "exo_gpu_cluster_utilization_percent_average") or -1) - e)
                    < 1e-6, timeout=180, what=f"update round {round_} in the view", interval=1)
                rounds.append((updated, rss_mib(controller.pid)))
            report()
            report(f"controller memory (RSS) with {DEVICES:,} GPUDevice objects "
                   f"(created in {created:.0f} s, update rounds in "
                   f"{rounds[0][0]:.0f} s and {rounds[1][0]:.0f} s):")
            report(f"  idle, no devices      {idle_rss:7.1f} MiB")
            report(f"  after placing 100     {before_rss:7.1f} MiB")
            report(f"  10,000 devices synced {synced_rss:7.1f} MiB   "
                   f"(+{(synced_rss - before_rss) * 1024 * 1024 / DEVICES / 1024:.1f} KiB per "
                   "device)")
            first, second = rounds[0][1], rounds[1][1]
            report(f"  after update round 1  {first:7.1f} MiB   ({first - synced_rss:+.1f} MiB: "
                   f"the history of {HISTORY} samples per device fills)")
            report(f"  after update round 2  {second:7.1f} MiB   ({second - first:+.1f} MiB: "
                   "samples replace the oldest)")
            verdict = "PASS" if second - first < 0.05 * synced_rss else "FAIL"
            report(f"  budget 'memory flat over 10,000 objects', judged as round 2 growing "
                   f"less than 5 % of the synced figure: {verdict}")
        finally:
            controller.terminate()
            try:
                controller.wait(timeout=20)
            except subprocess.TimeoutExpired:
                controller.kill()
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "controller.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
