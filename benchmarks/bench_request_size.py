"""How large kube-scheduler's extender requests get at 20,000 nodes, and how long the extender takes
to answer the largest one over mutual TLS (the figures behind ``--max-request-bytes``).

kube-scheduler sends the extender a pod and, with ``nodeCacheCapable: true`` (the chart's
setting), the names of the nodes its plugins found feasible: at most every node (with
``percentageOfNodesToScore: 100``; by default about 5 % at this size). The body is measured as
kube-scheduler writes it (``ExtenderArgs``, PascalCase) for node names of a cloud's usual length
and of the longest length the API server accepts (253), with a typical pod and with a pod at the
API server's object limit (1.5 MiB, etcd's request limit). Then the extender (a real server on
loopback, mutual TLS, a view of 20,000 nodes with one GPU each) answers filter and prioritize for
every one of those nodes, and the largest body (the longest names, none of them in the view).

Run: ``.venv/bin/python benchmarks/bench_request_size.py [--nodes 20000] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from exo.gpu.extender.server import MAX_BODY_BYTES

LONGEST_NODE_NAME = 253
ETCD_REQUEST_LIMIT = 1_572_864  # bytes: the largest object the API server stores


def typical_name(i: int) -> str:
    """A node name as clouds make them: ip-10-1-2-3.eu-west-1.compute.internal (38-44)."""
    return f"ip-10-{i // 65536 % 256}-{i // 256 % 256}-{i % 256}.eu-west-1.compute.internal"


def longest_name(i: int) -> str:
    return f"{i:05d}-" + "n" * (LONGEST_NODE_NAME - 6)


def pod(size: int | None = None) -> dict[str, Any]:
    """A GPU pod as the scheduler sends it; with ``size``, padded to that many bytes."""
    body: dict[str, Any] = {
        "metadata": {"name": "train-7f9c-0", "namespace": "ml", "uid": "c3a4" + "0" * 32,
                     "labels": {"app": "train", "team": "ml"},
                     "annotations": {"gpu.exo.dev/min-memory": "16Gi"}},
        "spec": {"schedulerName": "exo-gpu-scheduler", "containers": [{
            "name": "main", "image": "registry.example.com/ml/train:1.4.2",
            "command": ["python", "train.py"], "args": ["--epochs", "10"],
            "env": [{"name": f"VAR_{i}", "value": "x" * 40} for i in range(20)],
            "resources": {"limits": {"gpu.exo.dev/gpu": "1", "cpu": "8", "memory": "64Gi"}}}]},
        "status": {"phase": "Pending"}}
    if size is not None:
        missing = size - len(orjson.dumps(body))
        body["spec"]["containers"][0]["args"] += ["a" * 1022] * (missing // 1026)
    return body


def request(names: list[str], the_pod: dict[str, Any]) -> bytes:
    return orjson.dumps({"Pod": the_pod, "Nodes": None, "NodeNames": names})


def sizes(nodes: int) -> list[tuple[str, int]]:
    rows = []
    for label, make in (("cloud names (38-44 chars)", typical_name),
                        ("longest names (253 chars)", longest_name)):
        names = [make(i) for i in range(nodes)]
        for pod_label, the_pod in (("typical pod", pod()),
                                   ("1.5 MiB pod", pod(ETCD_REQUEST_LIMIT))):
            rows.append((f"{label}, {pod_label}", len(request(names, the_pod))))
    return rows


async def answer_times(nodes: int, rounds: int) -> dict[str, float]:
    import ssl

    import aiohttp

    from bench_extender import device_object
    from exo.gpu.devcluster.cluster import free_port
    from exo.gpu.devcluster.pki import make_extender_pki
    from exo.gpu.extender.server import ExtenderServer, ServingTLS, start_site
    from exo.gpu.k8s.informer import freeze_long_lived
    from exo.gpu.k8s.view import ClusterView

    now = time.time()
    view = ClusterView(clock=lambda: now)
    names = [typical_name(i) for i in range(nodes)]
    started = time.perf_counter()
    for n, name in enumerate(names):
        view.apply_device(device_object(name, 0, now, n))
    print(f"  (view of {nodes} nodes built in {time.perf_counter() - started:.1f} s)")
    freeze_long_lived()
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_extender_pki(Path(tmp))
        port = free_port()
        server = ExtenderServer(view, binder=None, clock=lambda: now)
        runner = await start_site(server.app(), "127.0.0.1", port,
                                  ServingTLS(str(pki.server_cert), str(pki.server_key),
                                             str(pki.ca_cert)))
        client = ssl.create_default_context(cafile=str(pki.ca_cert))
        client.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        known = request(names, pod(ETCD_REQUEST_LIMIT))
        largest = request([longest_name(i) for i in range(nodes)], pod(ETCD_REQUEST_LIMIT))
        results: dict[str, float] = {"known_bytes": float(len(known)),
                                     "largest_bytes": float(len(largest))}
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client)) as s:
                for label, verb, body in (("filter", "filter", known),
                                          ("prioritize", "prioritize", known),
                                          ("largest", "filter", largest)):
                    times = []
                    for _ in range(rounds):
                        begin = time.perf_counter()
                        async with s.post(f"https://127.0.0.1:{port}/{verb}", data=body) as r:
                            assert r.status == 200, await r.text()
                            await r.read()
                        times.append(time.perf_counter() - begin)
                    results[f"{label}_median_s"] = statistics.median(times)
                    results[f"{label}_max_s"] = max(times)
        finally:
            await runner.cleanup()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    mib = 1024**2
    print(f"extender request bodies at {args.nodes} nodes (nodeCacheCapable: node names):")
    for label, size in sizes(args.nodes):
        print(f"  {label:48} {size:>10,} bytes ({size / mib:5.2f} MiB)")
    print(f"default --max-request-bytes: {MAX_BODY_BYTES:,} bytes ({MAX_BODY_BYTES / mib:.0f} MiB)")
    times = asyncio.run(answer_times(args.nodes, args.rounds))
    print(f"answered over mutual TLS by a view of {args.nodes} nodes, {args.rounds} rounds "
          "(round trip from the client):")
    for label, what in (("filter", f"filter, every node known ({times['known_bytes'] / mib:.2f}"
                                   " MiB)"),
                        ("prioritize", "prioritize, every node known"),
                        ("largest", f"filter, the largest body ({times['largest_bytes'] / mib:.2f}"
                                    " MiB)")):
        print(f"  {what:44} median {times[f'{label}_median_s'] * 1000:6.0f} ms, "
              f"max {times[f'{label}_max_s'] * 1000:6.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
