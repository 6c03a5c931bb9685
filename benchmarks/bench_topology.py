"""Device-set benchmarks: choosing the best-linked set on 8-GPU nodes (issue budget: p99 under
1 ms per node judged, at 1,000 nodes).

1,000 nodes of 8 GPUs, in the shapes of ``data/fleet-topology.yaml`` taken in turn: NVSwitch
(every pair 18 NVLinks), NVLink pairs, PCIe-switch pairs and XGMI; a third of the devices of
every other node partly held (so the sets that fit differ from node to node). For a request of
1, 2, 4 and 8 whole devices (a one-device request on a linked node looks at every device too:
the device that breaks the fewest sets), it times:

- ``choose`` per node judged: ``exo.gpu.fit.choose`` with the node's ``NodeTopology`` (what
  the extender's filter, prioritize and bind and the planner do per node), in wall-clock time
  and in the thread's CPU time; the budget is judged on CPU time, which other processes on a
  shared machine cannot inflate (on an idle machine the two agree);
- the extender's filter + prioritize over all 1,000 nodes, per request (in process, no HTTP),
  with an eighth of the nodes changed before each request (new samples arrive all the time; an
  unchanged node's answer is kept by ``ClusterState.choose``);
- the planner: a workload of 8 tasks of ``devicesPerTask`` devices over all 1,000 nodes.

Run: ``.venv/bin/python benchmarks/bench_topology.py [--nodes 1000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

from exo.gpu.controller import planning
from exo.gpu.extender.filter import filter_nodes
from exo.gpu.extender.prioritize import prioritize_nodes
from exo.gpu.extender.wire import PodRequest
from exo.gpu.fit import FitRequest, choose
from exo.gpu.k8s.informer import freeze_long_lived
from exo.gpu.k8s.models import Condition, DeviceMetrics, GPUDevice, GPUDeviceStatus, to_time
from exo.gpu.k8s.view import ClusterView, Reservation
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

GIB = 1024**3
GPUS = 8
BUDGET_MS = 1.0


def peers(shape: str, node: str, i: int) -> list[dict[str, Any]]:
    out = []
    for j in range(GPUS):
        if j == i:
            continue
        peer: dict[str, Any] = {"device": f"{node}-nvidia-{j}"}
        same_numa = (i < 4) == (j < 4)
        level = "SingleSwitch" if i // 2 == j // 2 else ("NUMANode" if same_numa else "System")
        if shape == "nvswitch":
            peer.update(link="NVSwitch", links=18, level=level)
        elif shape == "xgmi":
            peer.update(link="XGMI", links=1, level="NUMANode" if same_numa else "System")
        elif shape == "nvlink-pairs" and i // 2 == j // 2:
            peer.update(link="NVLink", links=12, level=level)
        else:
            peer.update(link="PCIe", level=level)
        out.append(peer)
    return out


SHAPES = ("nvswitch", "nvlink-pairs", "pcie-switch-pairs", "xgmi")


def build(nodes: int, now: float) -> ClusterView:
    view = ClusterView(clock=lambda: now)
    for n in range(nodes):
        node = f"node-{n:04d}"
        shape = SHAPES[n % len(SHAPES)]
        for i in range(GPUS):
            seed = n * GPUS + i
            info = GPUDeviceInfo(device_id="x", vendor=Vendor.NVIDIA, name="Bench GPU",
                                 memory_total_bytes=80 * GIB, uuid=f"GPU-{node}-{i}")
            obj = GPUDevice.from_info(info, node, i, 100.0)
            obj.status = GPUDeviceStatus(
                metrics=DeviceMetrics.from_sample(GPUMetrics(
                    device_id="x", timestamp=now, memory_used_bytes=(seed * 7919) % (8 * GIB),
                    memory_total_bytes=80 * GIB,
                    compute_utilization_percent=float(seed * 37 % 100), power_watts=200.0,
                    temperature_celsius=40.0 + seed * 13 % 40, clock_rate_mhz=1500)),
                last_heartbeat_time=to_time(now),
                conditions=[Condition(type="Ready", status="True", reason="Reporting",
                                      message="", last_transition_time=to_time(now))])
            body = obj.to_api()
            body["status"]["topology"] = {"numaNode": 0 if i < 4 else 1,
                                          "peers": peers(shape, node, i)}
            view.apply_device(body)
            if n % 2 and seed % 3 == 0:  # a third of the devices of every other node held
                view.commit(Reservation(f"pod-{seed}", f"bench/pod-{seed}", node,
                                        (f"{node}-nvidia-{i}",), 8 * GIB))
    return view


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    now = time.time()
    started = time.perf_counter()
    view = build(args.nodes, now)
    print(f"{args.nodes} nodes x {GPUS} GPUs ({', '.join(SHAPES)} in turn) built in "
          f"{time.perf_counter() - started:.1f} s")
    state = view.state
    names = sorted(state.nodes)
    for node in names:  # built once per change of a node's links, not per decision
        state.topology(node)
    freeze_long_lived()
    gc.disable()  # the figures are the decision's, not the collector's
    header = (f"{'set size':>8}  {'choose p50':>11}  {'choose p99':>11}  {'max':>8}  "
              f"{'CPU p50':>9}  {'CPU p99':>9}  "
              f"{'filter+prioritize':>18}  {'plan 8 tasks':>12}  budget p99 < {BUDGET_MS} ms")
    print(header)
    print("-" * len(header))
    failed = 0
    for size in (1, 2, 4, 8):
        request = FitRequest(whole_device=True, devices=size)
        per_node: list[float] = []
        per_node_cpu: list[float] = []
        for _ in range(args.rounds):
            for node in names:
                devices = state.nodes[node]
                topology = state.topology(node)
                c0, t0 = time.thread_time_ns(), time.perf_counter()
                choose(devices, request, now, state.policy, topology=topology)
                per_node.append((time.perf_counter() - t0) * 1000)
                per_node_cpu.append((time.thread_time_ns() - c0) / 1e6)
        pod = PodRequest("bench", "p", "uid-p", size, None, None, None, None)
        request_ms = []
        for _ in range(6):  # the first after a change judges every node, the next reuse it
            for node in names[::8]:  # an eighth of the nodes changed since the last request
                state.nodes[node][0].refresh(state.policy)
                state._resort(node)
            t0 = time.perf_counter()
            outcome = filter_nodes(view, pod, names, now)
            prioritize_nodes(view, pod, outcome.passed, now, outcome.verdicts)
            request_ms.append((time.perf_counter() - t0) * 1000)
        workload, _ = planning.parse_workload({
            "metadata": {"name": "w", "namespace": "bench"},
            "spec": {"tasks": 8, "devicesPerTask": size, "template": {
                "spec": {"containers": [{"name": "c"}]}}}})
        assert workload is not None
        t0 = time.perf_counter()
        result = planning.plan(workload, view)
        plan_ms = (time.perf_counter() - t0) * 1000
        assert result.placed, result.message
        cpu_p99 = pct(per_node_cpu, 0.99)
        ok = cpu_p99 < BUDGET_MS
        failed += not ok
        print(f"{size:>8}  {pct(per_node, 0.5) * 1000:>9.1f}us  "
              f"{pct(per_node, 0.99) * 1000:>9.1f}us  {max(per_node) * 1000:>6.0f}us  "
              f"{pct(per_node_cpu, 0.5) * 1000:>7.1f}us  {cpu_p99 * 1000:>7.1f}us  "
              f"{pct(request_ms, 0.5):>15.1f} ms  "
              f"{plan_ms:>9.1f} ms  {'ok' if ok else 'OVER'}")
    gc.enable()
    print(f"(choose: per node judged, {args.rounds} rounds over {args.nodes} nodes, wall "
          f"clock then CPU time, the budget judged on CPU p99; "
          f"filter+prioritize: median of 6 requests over all {args.nodes} nodes, an eighth of "
          f"them changed before each; plan: a GPUWorkload of 8 tasks x set size, whole "
          f"devices)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
