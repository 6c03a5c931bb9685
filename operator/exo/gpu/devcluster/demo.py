"""``exo-gpu up`` / ``make demo``: the whole system on this machine, then where everything went.

1. the local control plane (built first where missing) with one fake node per node of the demo
   fleet (NVIDIA, AMD, Intel, Apple and Qualcomm devices);
2. one simulated exporter per node and the controller (serving the scheduler extender) as
   processes, kube-scheduler reconfigured with the extender;
3. sample GPUWorkloads and GPU pods (``data/demo-workloads.yaml``), among them a workload of
   2-GPU tasks packed into one rack and a 2-GPU pod;
4. once everything has settled: the devices with their scores, every placement with its score
   breakdown (device sets with their link scores, packed workloads with their rack), every pod
   with its node and devices (or why it is Pending).

With ``--kubeconfig`` (or ``KUBECONFIG``) it targets an existing cluster instead: it installs the
CRDs, runs simulated exporters and the controller locally against that cluster, applies the
workloads without pod templates and shows their placements; it creates no Node and does not
touch the cluster's scheduler.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .cluster import (
    SCHEDULER_NAME,
    LocalCluster,
    extender_entry,
    free_port,
    scheduler_tls_config,
    wait_for,
)
from .nodes import create_gpu_node

Say = Callable[[str], None]
DEMO_NAMESPACE = "exo-gpu-demo"


def _data(name: str) -> Path:
    return Path(str(resources.files("exo.gpu") / "data" / name))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned table (first row headers)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)


def _celsius(value: float | None) -> str:
    """A temperature for the table; ``-`` where the device's driver exposes none."""
    return "-" if value is None else f"{value:.0f}"


def _gib(value: float) -> str:
    return f"{value / 1024**3:.0f}"


@dataclass
class Demo:
    workdir: Path
    kubeconfig: str | None = None
    say: Say = print
    timeout: float = 180.0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cluster: LocalCluster | None = None

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        fleet = yaml.safe_load(_data("fleet-demo.yaml").read_text())
        workloads = list(yaml.safe_load_all(_data("demo-workloads.yaml").read_text()))
        with self._control_plane() as kubeconfig:
            api = self._api(kubeconfig)
            self._apply_crds(kubeconfig)
            local = self.cluster is not None
            if local:
                self._nodes(api, fleet)
            self._start_components(kubeconfig, fleet)
            expected = sum(len(n["devices"]) for n in fleet["nodes"])
            self.say(f"waiting for {expected} GPUDevices with metrics")
            wait_for(lambda: self._devices_reporting(api) >= expected, timeout=self.timeout,
                     what="every simulated GPU to report", interval=0.5)
            self._apply_workloads(kubeconfig, workloads, with_pods=local)
            self.say("waiting for placements")
            wait_for(lambda: self._settled(api, workloads, local), timeout=self.timeout,
                     what="the workloads and pods to be placed", interval=0.5)
            self.say("")
            self.say(self.report(api, workloads, local))
            return 0

    @contextlib.contextmanager
    def _control_plane(self) -> Iterator[str]:
        try:
            if self.kubeconfig:
                self.say(f"using the existing cluster of {self.kubeconfig}")
                yield self.kubeconfig
            else:
                self.cluster = LocalCluster(workdir=self.workdir / "cluster",
                                            progress=lambda line: self.say(f"[cluster] {line}"))
                with self.cluster:
                    yield self.cluster.kubeconfig
        finally:
            self._stop_components()

    def _api(self, kubeconfig: str) -> Any:
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return client.ApiClient(configuration)

    def _kubectl(self, kubeconfig: str, *args: str, input: str | None = None) -> str:
        from .binaries import _venv_binary

        return subprocess.run([str(_venv_binary("kubectl")), "--kubeconfig", kubeconfig, *args],
                              check=True, capture_output=True, text=True, input=input).stdout

    def _apply_crds(self, kubeconfig: str) -> None:
        # Rendered from the models, as crds/ is: works from an installed package too.
        from exo.gpu.k8s.crdgen import generate

        rendered = generate()
        self._kubectl(kubeconfig, "apply", "--server-side", "-f", "-",
                      input="\n---\n".join(rendered.values()))
        self._kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
                      "crd/gpudevices.gpu.exo.dev", "crd/gpuworkloads.gpu.exo.dev")
        self.say(f"installed {len(rendered)} CRDs")

    def _nodes(self, api: Any, fleet: dict[str, Any]) -> None:
        for node in fleet["nodes"]:
            vendors = sorted({d["vendor"] for d in node["devices"]})
            create_gpu_node(api, node["name"], vendor=vendors[0] if len(vendors) == 1 else None,
                            gpus=len(node["devices"]),
                            labels={"gpu.exo.dev/vendors": "-".join(vendors),
                                    **node.get("labels", {})})
        self.say(f"created {len(fleet['nodes'])} fake GPU nodes: "
                 + ", ".join(n["name"] for n in fleet["nodes"]))

    def _spawn(self, name: str, *args: str) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "exo.gpu.cli", *args], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)

    def _start_components(self, kubeconfig: str, fleet: dict[str, Any]) -> None:
        start = f"{time.time():.3f}"
        for node in fleet["nodes"]:
            self._spawn(f"exporter-{node['name']}", "exporter", "--node", node["name"],
                        "--backend", "simulated", "--fleet", str(_data("fleet-demo.yaml")),
                        "--fleet-start", start, "--poll-interval", "2",
                        "--kubeconfig", kubeconfig, "--metrics-host", "127.0.0.1",
                        "--metrics-port", str(free_port()))
        port = free_port() if self.cluster is not None else 0
        # The extender speaks mutual TLS with kube-scheduler, as the chart sets it up.
        pki = self.cluster.extender_pki() if self.cluster is not None else None
        tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
               "--tls-client-ca", str(pki.ca_cert)] if pki is not None else []
        self._spawn("controller", "controller", "--kubeconfig", kubeconfig,
                    "--metrics-port", str(free_port()),
                    "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
                    "--no-leader-elect", "--extender-host", "127.0.0.1",
                    "--extender-port", str(port), "--scheduler-name", SCHEDULER_NAME, *tls)
        self.say(f"started {len(fleet['nodes'])} simulated exporters and the controller "
                 f"(logs in {self.workdir})")
        if self.cluster is None or pki is None:
            return
        url = f"https://127.0.0.1:{port}"
        wait_for(lambda: _http_ok(f"{url}/readyz", str(pki.ca_cert)), timeout=self.timeout,
                 what="the controller's scheduler extender to be ready")
        self.cluster.restart_scheduler([extender_entry(url, scheduler_tls_config(pki))])
        self.say("kube-scheduler now asks the exo-gpu extender about GPU pods (mutual TLS)")

    def _stop_components(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()

    # ------------------------------------------------------------------ workloads
    def _apply_workloads(self, kubeconfig: str, docs: list[dict[str, Any]],
                         with_pods: bool) -> None:
        from kubernetes import client

        api = self._api(kubeconfig)
        core = client.CoreV1Api(api)
        with contextlib.suppress(Exception):
            core.create_namespace({"metadata": {"name": DEMO_NAMESPACE}})
        applied = []
        for doc in docs:
            if doc["kind"] == "Pod" and not with_pods:
                continue
            if doc["kind"] == "GPUWorkload" and not with_pods:
                doc = {**doc, "spec": {k: v for k, v in doc["spec"].items() if k != "template"}}
            doc = {**doc, "metadata": {**doc["metadata"], "namespace": DEMO_NAMESPACE}}
            self._kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(doc))
            applied.append(f"{doc['kind']}/{doc['metadata']['name']}")
        self.say(f"applied {len(applied)} objects: {', '.join(applied)}")

    def _devices_reporting(self, api: Any) -> int:
        from kubernetes import client

        items = client.CustomObjectsApi(api).list_cluster_custom_object(
            "gpu.exo.dev", "v1alpha1", "gpudevices")["items"]
        return sum(1 for d in items if (d.get("status") or {}).get("metrics"))

    def _settled(self, api: Any, docs: list[dict[str, Any]], with_pods: bool) -> bool:
        from kubernetes import client

        custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        workloads = custom.list_namespaced_custom_object(
            "gpu.exo.dev", "v1alpha1", DEMO_NAMESPACE, "gpuworkloads")["items"]
        if len(workloads) < sum(1 for d in docs if d["kind"] == "GPUWorkload"):
            return False
        if any((w.get("status") or {}).get("phase") in (None, "Pending") for w in workloads):
            return False
        if not with_pods:
            return True
        for pod in core.list_namespaced_pod(DEMO_NAMESPACE).items:
            if pod.spec.node_name:
                continue
            events = core.list_namespaced_event(
                DEMO_NAMESPACE, field_selector=f"involvedObject.name={pod.metadata.name}").items
            if not any(e.reason == "FailedScheduling" for e in events):
                return False
        return True

    # ------------------------------------------------------------------ report
    def report(self, api: Any, docs: list[dict[str, Any]], with_pods: bool) -> str:
        from kubernetes import client

        custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        from exo.gpu.k8s.view import ClusterView

        devices = custom.list_cluster_custom_object("gpu.exo.dev", "v1alpha1",
                                                    "gpudevices")["items"]
        # Scores as the extender and the controller see them: live metrics and reservations.
        view = ClusterView()
        for d in devices:
            view.apply_device(d)
        view.resync_pods(api.sanitize_for_serialization(p)
                         for p in core.list_pod_for_all_namespaces().items)
        slots = {name: slot for node in view.slots_by_node.values()
                 for name, slot in node.items()}
        rows = []
        for d in sorted(devices, key=lambda d: d["metadata"]["name"]):
            spec, status = d["spec"], d.get("status") or {}
            metrics = status.get("metrics") or {}
            ready = next((c["status"] for c in status.get("conditions", [])
                          if c["type"] == "Ready"), "?")
            slot = slots.get(d["metadata"]["name"])
            rows.append([d["metadata"]["name"], spec["model"],
                         f"{_gib(metrics.get('memoryUsedBytes', 0))}/"
                         f"{_gib(spec['memoryTotalBytes'])}",
                         _gib(slot.reserved) if slot else "-",
                         f"{metrics.get('computeUtilizationPercent', 0):.0f}",
                         _celsius(metrics.get("temperatureCelsius")), ready,
                         f"{slot.score:.2f}" if slot else "-"])
        out = ["GPU devices (score: 0.6 x free memory + 0.4 x compute headroom - thermal penalty)",
               format_table(["DEVICE", "MODEL", "USED/TOTAL GiB", "RESERVED GiB", "UTIL%",
                             "TEMP C", "READY", "SCORE"], rows), ""]

        workloads = custom.list_namespaced_custom_object(
            "gpu.exo.dev", "v1alpha1", DEMO_NAMESPACE, "gpuworkloads")["items"]
        rows, sets = [], []
        for w in sorted(workloads, key=lambda w: w["metadata"]["name"]):
            status = w.get("status") or {}
            placements = status.get("placements") or []
            if not placements:
                rows.append([w["metadata"]["name"], w["spec"].get("strategy", "uniform"),
                             status.get("phase", "?"), "-", "-", "-", "-", "-", "-",
                             _first_message(status)])
            for p in placements:
                b = p.get("breakdown") or {}
                links = p.get("links")
                rows.append([w["metadata"]["name"], w["spec"].get("strategy", "uniform"),
                             status.get("phase", "?"), p["device"], p.get("taskCount", "?"),
                             f"{p.get('score', 0):.2f}",
                             f"{b.get('memory', 0):.2f}/{b.get('compute', 0):.2f}/"
                             f"{b.get('thermal', 0):.2f}",
                             "+".join(d.rsplit("-", 1)[1] for d in p["devices"][1:]) or "-"
                             if p.get("devices") else "-",
                             p.get("domain") or "-", p.get("tasks", "")])
                if links:
                    pairs = "; ".join(f"{'-'.join(q['devices'])} {q.get('link', '?')} "
                                      f"= {q['score']}" for q in links["pairs"])
                    sets.append(f"  {w['metadata']['name']} task {p.get('tasks')}: set score "
                                f"{links['score']}: {pairs}")
        out += ["GPUWorkload placements (breakdown: memory/compute/thermal penalty; SET: the "
                "other devices of a device set; DOMAIN: the rack or zone packed into)",
                format_table(["WORKLOAD", "STRATEGY", "PHASE", "DEVICE", "TASKS", "SCORE",
                              "BREAKDOWN", "SET", "DOMAIN", "TASK IDS / REASON"], rows),
                *sets, ""]
        if with_pods:
            rows, pending = [], []
            for pod in sorted(core.list_namespaced_pod(DEMO_NAMESPACE).items,
                              key=lambda p: p.metadata.name):
                annotations = pod.metadata.annotations or {}
                if pod.spec.node_name:
                    rows.append([pod.metadata.name, pod.status.phase, pod.spec.node_name,
                                 annotations.get("gpu.exo.dev/device", "-")])
                    if "gpu.exo.dev/device-links" in annotations:
                        pending.append(f"{pod.metadata.name} links: "
                                       f"{annotations['gpu.exo.dev/device-links']}")
                else:
                    events = core.list_namespaced_event(
                        DEMO_NAMESPACE,
                        field_selector=f"involvedObject.name={pod.metadata.name}").items
                    why = next((e.message for e in reversed(events)
                                if e.reason == "FailedScheduling"), "")
                    rows.append([pod.metadata.name, "Pending", "-", "-"])
                    pending.append(f"{pod.metadata.name} is Pending: {why}")
            out += ["GPU pods (scheduled by kube-scheduler with the exo-gpu extender)",
                    format_table(["POD", "PHASE", "NODE", "DEVICE"], rows), *pending]
        return "\n".join(out)


def _first_message(status: dict[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if condition.get("message"):
            return _short(str(condition["message"]), 80)
    return str(status.get("message", ""))


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _http_ok(url: str, ca_file: str) -> bool:
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(url, timeout=1, context=context) as response:
        return bool(response.status == 200)
