"""Exporter benchmark, beside DESIGN.md section 10.

Runs the real ``exo-gpu exporter`` process (simulated backend, 8 devices, 2 s poll) against the
real kube-apiserver of the local control plane, lets it settle, then measures over a window:

* CPU: the exporter process's user + system time (``/proc/PID/stat``) over the window, in
  millicores. Budget: < 5 millicores.
* RSS: resident memory at the end of the window and its high-water mark (``/proc/PID/status``).
  Budget: < 60 MiB.
* API writes per device per minute: ``exo_gpu_exporter_api_writes_total`` scraped from its own
  ``/metrics`` at both ends of the window. Budget: about one write per device per 30 s (2/min)
  at steady state.

The 8 simulated devices behave like a steady serving node: constant utilization per device
(between 5 % and 90 %), memory growing by 16 MiB a minute, no faults. ``--busy`` swaps in loads
that swing by 60 points every 20 s, to show the rate limit (at most 12 writes/device/minute).

Run: ``.venv/bin/python benchmarks/bench_exporter.py [--seconds 120] [--warmup 20] [--busy]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from exo.gpu.devcluster.cluster import LocalCluster
from exo.gpu.devcluster.pytest_plugin import apply_crds

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")
BUDGET_MILLICORES = 5.0
BUDGET_RSS_MIB = 60.0
BUDGET_WRITES_PER_DEVICE_MIN = 2.0


def fleet(busy: bool) -> dict[str, Any]:
    devices = []
    models = [("nvidia", "NVIDIA H100 80GB HBM3", "80Gi"), ("amd", "AMD Instinct MI300X", "192Gi")]
    for i in range(8):
        vendor, model, memory = models[i % 2]
        utilization: dict[str, Any] = {"pattern": "constant", "value": 5 + i * 12}
        if busy:
            utilization = {"pattern": "sine", "base": 50, "amplitude": 30, "periodSeconds": 20}
        devices.append({
            "vendor": vendor, "model": model, "memory": memory, "utilization": utilization,
            "memoryUsed": {"base": f"{8 + i}Gi", "growthPerMinute": "16Mi"},
            "temperature": {"idle": 35, "full": 80}, "power": {"idle": 80, "full": 650},
        })
    return {"nodes": [{"name": "bench-node", "devices": devices}]}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mib(pid: int) -> tuple[float, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def writes(port: int) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("exo_gpu_exporter_api_writes_total{"):
            labels = dict(
                part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(",")
            )
            key = (labels["kind"].strip('"'), labels["result"].strip('"'))
            out[key] = float(line.rsplit(" ", 1)[1])
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"exporter exited with {proc.returncode}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("exporter did not become ready")


def run(seconds: float, warmup: float, busy: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="exo-bench-exporter-") as tmp:
        work = Path(tmp)
        fleet_path = work / "fleet.yaml"
        fleet_path.write_text(yaml.safe_dump(fleet(busy)))
        with LocalCluster(workdir=work / "cluster") as cluster:
            apply_crds(cluster, ROOT / "crds")
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "exo.gpu.cli", "exporter", "--node", "bench-node",
                 "--backend", "simulated", "--fleet", str(fleet_path), "--poll-interval", "2",
                 "--kubeconfig", cluster.kubeconfig, "--metrics-host", "127.0.0.1",
                 "--metrics-port", str(port), "--log-level", "warning"],
                stdout=subprocess.DEVNULL,
            )
            try:
                wait_ready(port, proc)
                time.sleep(warmup)
                cpu0, wall0, writes0 = cpu_seconds(proc.pid), time.monotonic(), writes(port)
                time.sleep(seconds)
                cpu1, wall1, writes1 = cpu_seconds(proc.pid), time.monotonic(), writes(port)
                rss, hwm = rss_mib(proc.pid)
                objects = json.loads(cluster.kubectl("get", "gpudevices", "-o", "json").stdout)
            finally:
                proc.terminate()
                try:
                    stopped_rc = proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    stopped_rc = -9
    wall = wall1 - wall0
    status_ok = writes1.get(("status", "ok"), 0) - writes0.get(("status", "ok"), 0)
    all_writes = sum(writes1.values()) - sum(writes0.values())
    devices = len(objects["items"])
    return {
        "api": "real kube-apiserver (local control plane)",
        "scenario": "busy" if busy else "steady",
        "devices": devices,
        "poll_interval_s": 2.0,
        "window_s": round(wall, 1),
        "cpu_millicores": round((cpu1 - cpu0) / wall * 1000, 2),
        "rss_mib": round(rss, 1),
        "rss_high_water_mib": round(hwm, 1),
        "status_writes_per_device_per_min": round(status_ok / devices / wall * 60, 2),
        "api_writes_per_device_per_min": round(all_writes / devices / wall * 60, 2),
        "exit_code_on_sigterm": stopped_rc,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=20.0, help="settling time before it")
    parser.add_argument("--busy", action="store_true", help="loads that always leave the deadband")
    args = parser.parse_args()
    result = run(args.seconds, args.warmup, args.busy)
    rows = [
        ("exporter CPU", f"{result['cpu_millicores']} millicores",
         f"< {BUDGET_MILLICORES:g} millicores", result["cpu_millicores"] < BUDGET_MILLICORES),
        ("exporter RSS", f"{result['rss_mib']} MiB (peak {result['rss_high_water_mib']})",
         f"< {BUDGET_RSS_MIB:g} MiB", result["rss_high_water_mib"] < BUDGET_RSS_MIB),
        ("status writes", f"{result['status_writes_per_device_per_min']} /device/min",
         f"~{BUDGET_WRITES_PER_DEVICE_MIN:g} /device/min at steady state",
         result["scenario"] == "busy"
         or result["status_writes_per_device_per_min"] <= BUDGET_WRITES_PER_DEVICE_MIN * 1.25),
    ]
    print(f"exporter benchmark: {result['devices']} simulated devices, 2 s poll, "
          f"{result['scenario']} load, {result['window_s']} s window, API: {result['api']}")
    for name, measured, budget, ok in rows:
        print(f"  {name:<15} {measured:<32} budget {budget:<36} {'ok' if ok else 'OVER'}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"exporter-{result['scenario']}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
