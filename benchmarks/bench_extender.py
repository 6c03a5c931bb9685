"""Extender benchmarks, beside DESIGN.md section 10.

1. filter + prioritize inside the server for 500 candidate nodes of 8 GPUs each (4,000 devices):
   JSON decode, parse, judge every node, encode the reply -- what the extender does between
   receiving a request body and writing the response. Budget: p99 < 2 ms.
2. Scheduling throughput through the real kube-scheduler on 1,000 fake nodes, without the
   extender (kube-scheduler alone fits the extended resource) and with it (filter, prioritize and
   bind over mutual TLS, as deployed, the device recorded on every pod), in one run on one
   control plane.
   Budget: with >= half of without.

Run: ``.venv/bin/python benchmarks/bench_extender.py [--pods 300] [--nodes 1000] [--skip-cluster]``
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from exo.gpu.extender.filter import filter_nodes
from exo.gpu.extender.prioritize import prioritize_nodes
from exo.gpu.extender.wire import filter_result, parse_filter_args, priority_list
from exo.gpu.k8s.informer import freeze_long_lived
from exo.gpu.k8s.models import Condition, DeviceMetrics, GPUDevice, GPUDeviceStatus, to_time
from exo.gpu.k8s.view import ClusterView
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

GIB = 1024**3
VENDORS = [Vendor.NVIDIA, Vendor.AMD, Vendor.INTEL, Vendor.NVIDIA]


def device_object(node: str, index: int, now: float, seed: int) -> dict[str, Any]:
    vendor = VENDORS[seed % len(VENDORS)]
    total = (80 if vendor is Vendor.NVIDIA else 64) * GIB
    info = GPUDeviceInfo(device_id="x", vendor=vendor, name="Bench GPU",
                         memory_total_bytes=total, uuid=f"GPU-{node}-{index}")
    obj = GPUDevice.from_info(info, node, index, 100.0)
    obj.status = GPUDeviceStatus(
        metrics=DeviceMetrics.from_sample(GPUMetrics(
            device_id="x", timestamp=now, memory_used_bytes=(seed * 7919) % total,
            memory_total_bytes=total, compute_utilization_percent=float(seed * 37 % 100),
            power_watts=200.0, temperature_celsius=40.0 + seed * 13 % 45,
            clock_rate_mhz=1500)),
        last_heartbeat_time=to_time(now),
        conditions=[Condition(type="Ready", status="True", reason="Reporting", message="",
                              last_transition_time=to_time(now))])
    return obj.to_api()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_in_server(nodes: int = 500, gpus: int = 8, rounds: int = 400) -> dict[str, float]:
    now = time.time()
    view = ClusterView(clock=lambda: now)
    names = [f"node-{n:04d}" for n in range(nodes)]
    for n, node in enumerate(names):
        for i in range(gpus):
            view.apply_device(device_object(node, i, now, n * gpus + i))
    pod = {"metadata": {"name": "p", "namespace": "bench", "uid": "uid-0",
                        "annotations": {"gpu.exo.dev/min-memory": "16Gi"}},
           "spec": {"containers": [{"name": "c", "image": "x", "resources": {
               "limits": {"gpu.exo.dev/gpu": "1"}}}]}}
    body = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names})
    # As the extender and the controller do once their first listing is in.
    freeze_long_lived()
    filter_ms, prioritize_ms, both_ms = [], [], []
    for r in range(rounds):
        started = time.perf_counter()
        args = parse_filter_args(orjson.loads(body))
        with view.lock:
            outcome = filter_nodes(view, args.pod, args.node_names, now)
        reply = orjson.dumps(filter_result(args, outcome.passed, outcome.failed,
                                           outcome.unresolvable))
        filtered = time.perf_counter()
        # What kube-scheduler sends next (encoded on its side, outside the extender).
        passed_body = orjson.dumps({"Pod": pod, "NodeNames": outcome.passed})
        middle = time.perf_counter()
        args = parse_filter_args(orjson.loads(passed_body))
        with view.lock:
            # The server reuses the filter's verdicts when nothing changed in between; measure
            # the worse case where a device update arrived and every node is judged again.
            scores = prioritize_nodes(view, args.pod, args.node_names, now, None)
        reply = orjson.dumps(priority_list(scores))
        done = time.perf_counter()
        del reply
        if r >= 20:  # warm-up
            filter_ms.append((filtered - started) * 1000)
            prioritize_ms.append((done - middle) * 1000)
            both_ms.append((filtered - started + done - middle) * 1000)
    return {"nodes": nodes, "devices": nodes * gpus, "passed": len(outcome.passed),
            "filter_p50": statistics.median(filter_ms), "filter_p99": pct(filter_ms, 0.99),
            "prioritize_p50": statistics.median(prioritize_ms),
            "prioritize_p99": pct(prioritize_ms, 0.99),
            "both_p50": statistics.median(both_ms), "both_p99": pct(both_ms, 0.99)}


def bench_throughput(nodes: int, pods: int) -> dict[str, float]:
    from kubernetes import client

    from exo.gpu.devcluster import LocalCluster, create_gpu_node, wait_for
    from exo.gpu.devcluster.cluster import extender_entry, free_port, scheduler_tls_config

    with tempfile.TemporaryDirectory() as tmp, LocalCluster(workdir=Path(tmp)) as cluster:
        cluster.kubectl("apply", "-f", str(Path(__file__).resolve().parent.parent / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/gpudevices.gpu.exo.dev")
        api = cluster.api_client()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        now = time.time()

        def add_node(n: int) -> None:
            name = f"bench-{n:04d}"
            create_gpu_node(api, name, vendor="nvidia", gpus=2)
            for i in range(2):
                obj = device_object(name, i, now, n * 2 + i)
                status = obj.pop("status")
                created = custom.create_cluster_custom_object(
                    "gpu.exo.dev", "v1alpha1", "gpudevices", obj)
                custom.patch_cluster_custom_object_status(
                    "gpu.exo.dev", "v1alpha1", "gpudevices", created["metadata"]["name"],
                    {"status": status})

        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(add_node, range(nodes)))
        print(f"  created {nodes} nodes and {2 * nodes} GPUDevices in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        core.create_namespace({"metadata": {"name": "bench"}})

        def run(tag: str, annotations: dict[str, str]) -> float:
            def make(i: int) -> None:
                core.create_namespaced_pod("bench", {
                    "metadata": {"name": f"{tag}-{i:05d}", "annotations": annotations},
                    "spec": {"containers": [{"name": "c", "image": "x", "resources": {
                        "limits": {"gpu.exo.dev/gpu": "1"}}}]}})

            def bound() -> int:
                listing = core.list_namespaced_pod("bench", label_selector=None,
                                                   _preload_content=False)
                items = orjson.loads(listing.data)["items"]
                return sum(1 for p in items if p["metadata"]["name"].startswith(tag)
                           and p["spec"].get("nodeName"))

            begin = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(make, range(pods)))
            wait_for(lambda: bound() >= pods, timeout=600, what=f"{tag} pods bound",
                     interval=0.5)
            return pods / (time.perf_counter() - begin)

        without = run("plain", {})
        # The extender in its own process, as deployed (`exo-gpu extender`, mutual TLS).
        port, pki = free_port(), cluster.extender_pki()
        extender = subprocess.Popen(
            [sys.executable, "-m", "exo.gpu.cli", "extender", "--kubeconfig", cluster.kubeconfig,
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING",
             "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
             "--tls-client-ca", str(pki.ca_cert)])
        tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        tls.load_cert_chain(str(pki.client_cert), str(pki.client_key))

        def extender_ready() -> bool:
            import urllib.request

            with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", timeout=1,
                                        context=tls) as r:
                return bool(r.status == 200)

        try:
            wait_for(extender_ready, timeout=60, what="the extender")
            cluster.restart_scheduler([extender_entry(f"https://127.0.0.1:{port}",
                                                      scheduler_tls_config(pki))])
            with_extender = run("gpu", {"gpu.exo.dev/min-memory": "1Gi"})
            inside = _mean_latencies(f"https://127.0.0.1:{port}/metrics", tls)
        finally:
            extender.terminate()
            extender.wait(10)
        return {"without": without, "with": with_extender, **inside}


def _mean_latencies(url: str, tls: ssl.SSLContext) -> dict[str, float]:
    """Mean time inside the extender per verb (ms) over the run, from its own histogram."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5, context=tls) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            verb = sample.labels.get("verb", "")
            if sample.name == "exo_gpu_extender_request_duration_seconds_sum":
                sums[verb] = sample.value
            elif sample.name == "exo_gpu_extender_request_duration_seconds_count":
                counts[verb] = sample.value
    return {f"{verb}_ms": 1000 * sums[verb] / counts[verb] for verb in sums if counts.get(verb)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=300)
    parser.add_argument("--skip-cluster", action="store_true")
    args = parser.parse_args()

    r = bench_in_server()
    print(f"\nExtender inside the server: {r['nodes']} candidate nodes x 8 GPUs "
          f"({r['devices']} devices), {r['passed']} nodes pass the filter")
    print(f"{'path':28} {'p50 ms':>8} {'p99 ms':>8} {'budget':>10} {'verdict':>8}")
    for label, key, budget in (("filter", "filter", None), ("prioritize", "prioritize", None),
                               ("filter + prioritize", "both", 2.0)):
        verdict = "" if budget is None else ("PASS" if r[f"{key}_p99"] < budget else "FAIL")
        shown = "" if budget is None else f"< {budget:g} ms"
        print(f"{label:28} {r[f'{key}_p50']:8.3f} {r[f'{key}_p99']:8.3f} {shown:>10} "
              f"{verdict:>8}")
    if args.skip_cluster:
        return 0
    print(f"\nkube-scheduler throughput on {args.nodes} fake nodes, {args.pods} pods per run",
          flush=True)
    t = bench_throughput(args.nodes, args.pods)
    ratio = t["with"] / t["without"]
    print(f"{'without extender':28} {t['without']:8.1f} pods/s")
    print(f"{'with exo-gpu extender':28} {t['with']:8.1f} pods/s")
    print(f"{'ratio (budget >= 0.50)':28} {ratio:8.2f}   {'PASS' if ratio >= 0.5 else 'FAIL'}")
    print("mean time inside the extender per request during the run: " + ", ".join(
        f"{key[:-3]} {value:.2f} ms" for key, value in sorted(t.items()) if key.endswith("_ms")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
