"""docs/security.md, row by row, against the real control plane.

The chart is installed into the local API server with its defaults (mutual TLS with certificates
Helm generates, the exporter admission policy, NetworkPolicies). Then:

- **the extender's transport**: the real controller process serves the extender with the Secrets
  the chart created, and the real kube-scheduler reaches it with the chart's client certificate
  and binds a GPU pod through it; a caller without a client certificate, one with a certificate
  of another CA and an oversized body are each refused with their message;
- **the exporter's writes**: as the exporter's ServiceAccount with node A's claim, every write to
  node B's devices, and every write to a field of its own devices it does not own (a cordon, the
  controller's score, allocation and Stale condition, other labels, annotations), is refused
  with the policy's message; the real exporter with a node-bound token keeps writing its devices
  while an operator cordons one and the controller writes its fields;
- **the certificates survive an upgrade**: the CA stays, both certificates are re-issued.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from exo.gpu.devcluster import LocalCluster, ensure_helm, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "exo-gpu"
NODE_CLAIM = "authentication.kubernetes.io/node-name"
GIB = 1024**3

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    cluster: LocalCluster

    @property
    def fullname(self) -> str:
        return f"{self.name}-exo-gpu"

    def account(self, component: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}-{component}"

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(ensure_helm()), "--kubeconfig", self.cluster.kubeconfig,
                                 *args], capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
        return result

    def secret(self, name: str) -> dict[str, bytes]:
        doc = json.loads(self.cluster.kubectl("get", "secret", name, "-n", self.namespace,
                                              "-o", "json").stdout)
        return {key: base64.b64decode(value) for key, value in doc["data"].items()}


@pytest.fixture(scope="module")
def release(kube_cluster: LocalCluster) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    rel = Release(name=f"sec{suffix}", namespace=f"exo-gpu-sec-{suffix}", cluster=kube_cluster)
    rel.helm("install", rel.name, str(CHART), "--namespace", rel.namespace, "--create-namespace")
    yield rel
    subprocess.run([str(ensure_helm()), "--kubeconfig", kube_cluster.kubeconfig, "uninstall",
                    rel.name, "-n", rel.namespace], capture_output=True, timeout=180)
    kube_cluster.kubectl("delete", "namespace", rel.namespace, "--wait=false", check=False)


def device(node: str, index: int = 0, *, name: str | None = None,
           labels: dict[str, str] | None = None, unschedulable: bool = False
           ) -> dict[str, Any]:
    return {
        "apiVersion": "gpu.exo.dev/v1alpha1", "kind": "GPUDevice",
        "metadata": {"name": name or f"{node}-nvidia-{index}",
                     "labels": {"gpu.exo.dev/node": node, "gpu.exo.dev/vendor": "nvidia",
                                **(labels or {})}},
        "spec": {"node": node, "vendor": "nvidia", "index": index,
                 "model": "NVIDIA H100 80GB HBM3", "memoryTotalBytes": 80 * GIB,
                 "computeCapacity": 989.0, "unschedulable": unschedulable},
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ================================================================== the extender's transport
@dataclass
class Extender:
    url: str
    metrics_url: str
    files: dict[str, Path]

    def context(self, with_certificate: bool = True) -> ssl.SSLContext:
        """kube-scheduler's TLS: trusts the extender CA, presents its client certificate."""
        context = ssl.create_default_context(cafile=str(self.files["client/ca.crt"]))
        context.check_hostname = False  # the certificate names the Service; we dial 127.0.0.1
        if with_certificate:
            context.load_cert_chain(str(self.files["client/tls.crt"]),
                                    str(self.files["client/tls.key"]))
        return context

    def post(self, verb: str, body: bytes, context: ssl.SSLContext) -> tuple[int, str]:
        request = urllib.request.Request(f"{self.url}/{verb}", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60, context=context) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


@pytest.fixture(scope="module")
def extender(release: Release, kube_cluster: LocalCluster,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Extender]:
    """The controller process serving the extender as the chart runs it, with the Secrets the
    chart created; kube-scheduler configured with the chart's client Secret."""
    from exo.gpu.devcluster.cluster import extender_entry, free_port

    folder = tmp_path_factory.mktemp("chart-tls")
    files: dict[str, Path] = {}
    for prefix, secret in (("server", f"{release.fullname}-extender-tls"),
                           ("client", f"{release.fullname}-scheduler-tls")):
        (folder / prefix).mkdir()
        for key, value in release.secret(secret).items():
            files[f"{prefix}/{key}"] = folder / prefix / key
            files[f"{prefix}/{key}"].write_bytes(value)
    port, metrics_port = free_port(), free_port()
    log = folder / "controller.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "exo.gpu.cli", "controller", "--kubeconfig",
             kube_cluster.kubeconfig, "--no-leader-elect", "--liveness", "",
             "--metrics-port", str(metrics_port), "--extender-host", "127.0.0.1",
             "--extender-port", str(port), "--max-request-bytes", str(8 * 1024**2),
             "--tls-cert", str(files["server/tls.crt"]), "--tls-key", str(files["server/tls.key"]),
             "--tls-client-ca", str(files["server/ca.crt"]),
             "--tls-client-name", "exo-gpu-scheduler"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    running = Extender(url=f"https://127.0.0.1:{port}",
                       metrics_url=f"http://127.0.0.1:{metrics_port}/metrics", files=files)

    def ready() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        with urllib.request.urlopen(f"{running.url}/readyz", timeout=2,
                                    context=running.context(with_certificate=False)) as reply:
            return bool(reply.status == 200)

    try:
        wait_for(ready, timeout=120, what="the extender served with the chart's certificates")
        kube_cluster.restart_scheduler([extender_entry(running.url, {
            "serverName": f"{release.fullname}-extender.{release.namespace}.svc",
            "caFile": str(files["client/ca.crt"]), "certFile": str(files["client/tls.crt"]),
            "keyFile": str(files["client/tls.key"])})])
        yield running
    finally:
        kube_cluster.restart_scheduler([])
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _publish(cluster: LocalCluster, node: str) -> str:
    """A GPUDevice with fresh metrics, as the node's exporter writes it."""
    body = device(node)
    cluster.kubectl("create", "-f", "-", input=json.dumps(body))
    now = _now()
    cluster.kubectl("patch", "gpudevice", body["metadata"]["name"], "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": {
                        "lastHeartbeatTime": now, "metrics": {
                            "timestamp": now, "memoryUsedBytes": GIB,
                            "computeUtilizationPercent": 5, "temperatureCelsius": 40},
                        "conditions": [{"type": "Ready", "status": "True", "reason": "Reporting",
                                        "message": "", "lastTransitionTime": now}]}}))
    return str(body["metadata"]["name"])


def test_kube_scheduler_binds_through_the_extender_with_the_charts_certificates(
        extender: Extender, kube_cluster: LocalCluster, gpu_nodes: Callable[..., Any],
        namespace: str) -> None:
    node = gpu_nodes("mtls", vendor="nvidia", gpus=1).metadata.name
    name = _publish(kube_cluster, node)
    try:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "mtls", "annotations": {"gpu.exo.dev/min-memory": "8Gi"}},
               "spec": {"containers": [{"name": "c", "image": "x", "resources": {
                   "limits": {"gpu.exo.dev/gpu": "1"}}}]}}
        kube_cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))

        def bound() -> dict[str, Any]:
            out = kube_cluster.kubectl("get", "pod", "mtls", "-n", namespace, "-o", "json")
            doc: dict[str, Any] = json.loads(out.stdout)
            return doc if doc["spec"].get("nodeName") else {}

        wait_for(lambda: bool(bound()), timeout=90,
                 what="the pod bound by the extender over mutual TLS")
        assert bound()["metadata"]["annotations"]["gpu.exo.dev/device"] == name
    finally:
        kube_cluster.kubectl("delete", "gpudevice", name, "--wait=false", check=False)


FILTER = json.dumps({"Pod": {"metadata": {"name": "p", "namespace": "n", "uid": "u"},
                             "spec": {"containers": []}}, "NodeNames": []}).encode()


def test_a_caller_without_a_client_certificate_is_refused(extender: Extender) -> None:
    for verb in ("filter", "prioritize", "bind", "preempt"):
        status, body = extender.post(verb, FILTER, extender.context(with_certificate=False))
        assert status == 403, (verb, body)
        assert json.loads(body)["Error"] == (
            "exo-gpu: a client certificate signed by the extender's client CA is required "
            "(kube-scheduler's tlsConfig certFile and keyFile)")
    # ...counted on the controller's metrics port, where Prometheus scrapes the extender.
    with urllib.request.urlopen(extender.metrics_url, timeout=5) as reply:
        metrics = reply.read().decode()
    assert 'exo_gpu_extender_errors_total{reason="no_client_certificate",verb="bind"} 1.0' \
        in metrics


def test_a_caller_with_a_certificate_of_another_ca_is_refused(
        extender: Extender, tmp_path: Path) -> None:
    from exo.gpu.devcluster.pki import make_extender_pki

    stranger = make_extender_pki(tmp_path, client_name="exo-gpu-scheduler")  # same name
    context = extender.context(with_certificate=False)
    context.load_cert_chain(str(stranger.client_cert), str(stranger.client_key))
    # The handshake is refused: the connection closes before any HTTP answer.
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        extender.post("filter", FILTER, context)
    assert extender.post("filter", FILTER, extender.context())[0] == 200


def test_an_oversized_body_is_refused_and_the_largest_real_one_answered(
        extender: Extender) -> None:
    status, body = extender.post("filter", b" " * (8 * 1024**2 + 1), extender.context())
    assert status == 413
    assert json.loads(body)["Error"] == (
        "exo-gpu: the filter request body (8388609 bytes) is over the limit of 8388608 bytes "
        "(--max-request-bytes)")
    names = [f"{i:05d}-" + "n" * 247 for i in range(20_000)]
    large = json.dumps({"Pod": {"metadata": {"name": "p", "namespace": "n", "uid": "u2"},
                                "spec": {"containers": [{"name": "c", "args": ["a" * 1022] *
                                                         1536}]}},
                        "NodeNames": names}).encode()
    assert len(large) > 6_000_000
    status, body = extender.post("filter", large, extender.context())
    assert status == 200, body[:500]
    assert len(json.loads(body)["FailedAndUnresolvableNodes"]) == 20_000


def test_certificates_are_reissued_on_upgrade_under_the_same_ca(release: Release) -> None:
    from cryptography import x509

    def leaves() -> tuple[bytes, bytes, bytes]:
        return (release.secret(f"{release.fullname}-extender-ca")["tls.crt"],
                release.secret(f"{release.fullname}-extender-tls")["tls.crt"],
                release.secret(f"{release.fullname}-scheduler-tls")["tls.crt"])

    ca, serving, client = leaves()
    release.helm("upgrade", release.name, str(CHART), "--namespace", release.namespace,
                 "--reuse-values")
    ca_after, serving_after, client_after = leaves()
    assert ca_after == ca
    assert serving_after != serving and client_after != client
    authority = x509.load_pem_x509_certificate(ca)
    for pem in (serving_after, client_after):
        x509.load_pem_x509_certificate(pem).verify_directly_issued_by(authority)
    for secret in ("extender-tls", "scheduler-tls"):
        assert release.secret(f"{release.fullname}-{secret}")["ca.crt"] == ca


def test_plain_http_is_an_explicit_choice_and_the_notes_warn(release: Release) -> None:
    notes = release.helm("install", f"{release.name}p", str(CHART), "-n", release.namespace,
                         "--dry-run=server", "--set", "controller.extender.tls.enabled=false"
                         ).stdout.split("NOTES:", 1)[1]
    assert "WARNING: controller.extender.tls.enabled is false: the extender serves plain, " \
           "unauthenticated\nHTTP" in notes
    default = release.helm("get", "notes", release.name, "-n", release.namespace).stdout
    assert "kube-scheduler and the extender speak mutual TLS (certificates: helm" in default
    assert "WARNING" not in default


# ================================================================== the exporter's writes
@pytest.fixture
def nodes() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:6]
    return f"node-a-{suffix}", f"node-b-{suffix}"


@pytest.fixture
def as_exporter(release: Release) -> Callable[[str], Kubectl]:
    """kubectl as the exporter's ServiceAccount with the node claim of ``node``."""

    def make(node: str) -> Kubectl:
        def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
            return release.cluster.kubectl(*args, f"--as={release.account('exporter')}",
                                           f"--as-user-extra={NODE_CLAIM}={node}",
                                           input=input, check=False)

        return run

    return make


@pytest.fixture(scope="module")
def policy_active(release: Release) -> None:
    """Wait until the API server enforces the freshly installed policy (its informer syncs)."""
    probe = json.dumps(device(f"probe-{uuid.uuid4().hex[:6]}"))

    def denied() -> bool:
        result = release.cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", f"--as={release.account('exporter')}",
            f"--as-user-extra={NODE_CLAIM}=not-the-probe-node", input=probe, check=False)
        return result.returncode != 0 and "denied request" in result.stderr

    wait_for(denied, timeout=60, what="the exporter admission policy to be enforced",
             interval=0.5)


@contextlib.contextmanager
def objects(cluster: LocalCluster, *bodies: dict[str, Any]) -> Iterator[list[str]]:
    """GPUDevices created by an administrator, deleted afterwards."""
    names = [str(b["metadata"]["name"]) for b in bodies]
    try:
        for body in bodies:
            cluster.kubectl("create", "-f", "-", input=json.dumps(body))
        yield names
    finally:
        for name in names:
            cluster.kubectl("patch", "gpudevice", name, "--type=merge",
                            "-p", '{"spec":{"unschedulable":false}}', check=False)
            cluster.kubectl("delete", "gpudevice", name, "--ignore-not-found", "--wait=false",
                            check=False)


def _as_controller(release: Release, name: str) -> None:
    """Score, allocation and a Stale condition, written as the controller writes them."""
    now = _now()
    result = release.cluster.kubectl(
        "patch", "gpudevice", name, "--subresource=status", "--type=merge", "-p", json.dumps(
            {"status": {"score": 0.42, "allocation": {"podCount": 1, "memoryReservedBytes": GIB,
                                                      "pods": ["ml/train-0"]},
                        "conditions": [{"type": "Stale", "status": "False",
                                        "reason": "HeartbeatResumed", "message": "ok",
                                        "lastTransitionTime": now}]}}),
        f"--as={release.account('controller')}", check=False)
    assert result.returncode == 0, result.stderr


def _status_body(release: Release, name: str, change: Callable[[dict[str, Any]], None]) -> str:
    body = json.loads(release.cluster.kubectl("get", "gpudevice", name, "-o", "json").stdout)
    body.setdefault("status", {})
    change(body["status"])
    return json.dumps(body)


# (row id, objects an administrator made first: "theirs" node B's device, "mine" node A's,
#  "cordoned" node A's cordoned, "controlled" node A's with the controller's fields;
#  what the exporter of node A tries; the refusal it must get, with {a} {b} {mine} {theirs})
ROWS: list[tuple[str, str, Callable[..., tuple[Any, ...]], str]] = [
    ("create-another-nodes-device", "", lambda r, a, b: (
        ("create", "-f", "-"), json.dumps(device(b))),
     "spec.node: the exporter of node {a} may not write GPUDevice {theirs} of node {b}"),
    ("squat-another-nodes-name", "", lambda r, a, b: (
        ("create", "-f", "-"), json.dumps(device(a, name=f"{a}-nvidia-nvidia-0"))),
     "metadata.name: the exporter of node {a} may write only GPUDevices named {mine} "
     "(<node>-<vendor>-<index>), not {a}-nvidia-nvidia-0"),
    ("update-another-nodes-device", "theirs", lambda r, a, b: (
        ("patch", "gpudevice", f"{b}-nvidia-0", "--type=merge", "-p",
         '{"spec":{"model":"fake"}}'), None),
     "spec.node: the exporter of node {a} may not write GPUDevice {theirs} of node {b}"),
    ("update-another-nodes-status", "theirs", lambda r, a, b: (
        ("replace", "--subresource=status", "-f", "-"),
        _status_body(r, f"{b}-nvidia-0", lambda s: s.update(
            lastHeartbeatTime="2026-01-01T00:00:00Z"))),
     "spec.node: the exporter of node {a} may not write GPUDevice {theirs} of node {b}"),
    ("delete-another-nodes-device", "theirs", lambda r, a, b: (
        ("delete", "gpudevice", f"{b}-nvidia-0", "--wait=false"), None),
     "spec.node: the exporter of node {a} may not change or delete GPUDevice {theirs} "
     "of node {b}"),
    ("lift-a-cordon", "cordoned", lambda r, a, b: (
        ("patch", "gpudevice", f"{a}-nvidia-0", "--type=merge", "-p",
         '{"spec":{"unschedulable":false}}'), None),
     "spec.unschedulable: the exporter of node {a} may not lift the cordon of GPUDevice {mine} "
     "(a cordon belongs to whoever set it)"),
    ("lift-a-cordon-by-deleting", "cordoned", lambda r, a, b: (
        ("delete", "gpudevice", f"{a}-nvidia-0", "--wait=false"), None),
     "spec.unschedulable: the exporter of node {a} may not delete GPUDevice {mine} while it is "
     "cordoned (re-creating it would lift the cordon)"),
    ("lift-another-nodes-cordon", "theirs-cordoned", lambda r, a, b: (
        ("patch", "gpudevice", f"{b}-nvidia-0", "--type=merge", "-p",
         '{"spec":{"unschedulable":false}}'), None),
     "spec.node: the exporter of node {a} may not write GPUDevice {theirs} of node {b}"),
    ("cordon", "mine", lambda r, a, b: (
        ("patch", "gpudevice", f"{a}-nvidia-0", "--type=merge", "-p",
         '{"spec":{"unschedulable":true}}'), None),
     "spec.unschedulable: the exporter of node {a} may not cordon GPUDevice {mine}"),
    ("change-the-controllers-score", "controlled", lambda r, a, b: (
        ("replace", "--subresource=status", "-f", "-"),
        _status_body(r, f"{a}-nvidia-0", lambda s: s.update(score=1.0))),
     "status.score, status.allocation: the exporter of node {a} may not change the "
     "controller's fields of GPUDevice {mine}"),
    ("drop-the-controllers-allocation", "controlled", lambda r, a, b: (
        ("replace", "--subresource=status", "-f", "-"),
        _status_body(r, f"{a}-nvidia-0", lambda s: s.pop("allocation"))),
     "status.score, status.allocation: the exporter of node {a} may not change the "
     "controller's fields of GPUDevice {mine}"),
    ("change-the-stale-condition", "controlled", lambda r, a, b: (
        ("replace", "--subresource=status", "-f", "-"),
        _status_body(r, f"{a}-nvidia-0", lambda s: s.update(conditions=[
            {**c, "status": "True"} if c["type"] == "Stale" else c
            for c in s["conditions"]]))),
     "status.conditions: the exporter of node {a} may set only the Ready and Healthy "
     "conditions of GPUDevice {mine}"),
    ("label-its-device-into-a-pool", "mine", lambda r, a, b: (
        ("label", "gpudevice", f"{a}-nvidia-0", "pool=premium"), None),
     "metadata.labels: the exporter of node {a} may set only the labels gpu.exo.dev/node, "
     "gpu.exo.dev/vendor, gpu.exo.dev/model of GPUDevice {mine}"),
    ("create-with-a-foreign-label", "", lambda r, a, b: (
        ("create", "-f", "-"), json.dumps(device(a, labels={"pool": "premium"}))),
     "metadata.labels: the exporter of node {a} may set only the labels gpu.exo.dev/node, "
     "gpu.exo.dev/vendor, gpu.exo.dev/model of GPUDevice {mine}"),
    ("annotate-or-own-its-device", "mine", lambda r, a, b: (
        ("patch", "gpudevice", f"{a}-nvidia-0", "--type=merge", "-p", json.dumps(
            {"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Node",
                                               "name": a, "uid": str(uuid.uuid4())}]}})),
        None),
     "metadata.annotations, finalizers, ownerReferences: the exporter of node {a} may not set "
     "them on GPUDevice {mine}"),
]


@pytest.mark.usefixtures("policy_active")
@pytest.mark.parametrize(("setup", "attempt", "message"), [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_node_a_is_refused(release: Release, as_exporter: Callable[[str], Kubectl],
                           nodes: tuple[str, str], setup: str,
                           attempt: Callable[..., tuple[Any, ...]], message: str) -> None:
    a, b = nodes
    made = {"": [], "theirs": [device(b)], "theirs-cordoned": [device(b, unschedulable=True)],
            "mine": [device(a)], "cordoned": [device(a, unschedulable=True)],
            "controlled": [device(a)]}[setup]
    with objects(release.cluster, *made) as names:
        if setup == "controlled":
            _as_controller(release, names[0])
        before = {n: release.cluster.kubectl("get", "gpudevice", n, "-o", "json").stdout
                  for n in names}
        args, body = attempt(release, a, b)
        result = as_exporter(a)(*args, input=body)
        assert result.returncode != 0, result.stdout
        expected = message.format(a=a, b=b, mine=f"{a}-nvidia-0", theirs=f"{b}-nvidia-0")
        assert "denied request: " + expected in result.stderr, result.stderr
        for name, text in before.items():  # nothing changed
            now = release.cluster.kubectl("get", "gpudevice", name, "-o", "json").stdout
            assert json.loads(now)["metadata"]["resourceVersion"] == \
                json.loads(text)["metadata"]["resourceVersion"], name
        if not names:
            listed = release.cluster.kubectl("get", "gpudevices", "-o", "name").stdout
            assert f"{a}-nvidia" not in listed and f"{b}-nvidia-0" not in listed


@pytest.mark.usefixtures("policy_active")
def test_node_a_writes_what_it_owns(release: Release, as_exporter: Callable[[str], Kubectl],
                                    nodes: tuple[str, str]) -> None:
    """Create, change an owned field, replace status keeping the controller's fields, delete."""
    a, _ = nodes
    mine = device(a)
    name = mine["metadata"]["name"]
    as_a = as_exporter(a)
    try:
        created = as_a("create", "-f", "-", input=json.dumps(mine))
        assert created.returncode == 0, created.stderr
        _as_controller(release, name)
        patched = as_a("patch", "gpudevice", name, "--type=merge", "-p", json.dumps(
            {"metadata": {"labels": {"gpu.exo.dev/model": "H100"}},
             "spec": {"model": "NVIDIA H100 PCIe", "uuid": "GPU-1"}}))
        assert patched.returncode == 0, patched.stderr
        now = _now()
        status = as_a("replace", "--subresource=status", "-f", "-", input=_status_body(
            release, name, lambda s: s.update(
                lastHeartbeatTime=now, observedGeneration=2,
                metrics={"timestamp": now, "memoryUsedBytes": GIB,
                         "computeUtilizationPercent": 10},
                conditions=sorted([c for c in s["conditions"] if c["type"] != "Ready"] + [
                    {"type": "Ready", "status": "True", "reason": "DeviceReady",
                     "message": "", "lastTransitionTime": now}], key=lambda c: c["type"]))))
        assert status.returncode == 0, status.stderr
        deleted = as_a("delete", "gpudevice", name, "--wait=false")
        assert deleted.returncode == 0, deleted.stderr
    finally:
        release.cluster.kubectl("delete", "gpudevice", name, "--ignore-not-found",
                                "--wait=false", check=False)


def _token_kubeconfig(release: Release, node: str, path: Path) -> Path:
    token = release.cluster.kubectl(
        "create", "token", f"{release.fullname}-exporter", "-n", release.namespace,
        "--duration", "10m", "--bound-object-kind", "Node", "--bound-object-name", node
    ).stdout.strip()
    config = yaml.safe_load(Path(release.cluster.kubeconfig).read_text())
    config["users"] = [{"name": "exporter", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "exporter"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.usefixtures("policy_active")
def test_the_real_exporter_keeps_writing_beside_a_cordon_and_the_controller(
        release: Release, gpu_nodes: Callable[..., Any], tmp_path: Path) -> None:
    """The exporter, with a token the API server bound to its Node, writes its devices while
    an operator cordons one and the controller writes score, allocation and Stale: every write
    it makes passes the policy, and none of the others' fields is lost."""
    from exo.gpu.devcluster.cluster import free_port

    node = gpu_nodes("owner", vendor="nvidia", gpus=1).metadata.name
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"nodes": [{"name": node, "devices": [
        {"vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3", "memory": "80Gi",
         "utilization": {"pattern": "sine", "base": 50, "amplitude": 45, "periodSeconds": 8},
         "memoryUsed": {"base": "4Gi"}}]}]}))
    kubeconfig = _token_kubeconfig(release, node, tmp_path / "exporter.kubeconfig")
    name = f"{node}-nvidia-0"
    log = tmp_path / "exporter.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "exo.gpu.cli", "exporter", "--node", node, "--backend",
             "simulated", "--fleet", str(fleet), "--poll-interval", "0.5", "--kubeconfig",
             str(kubeconfig), "--metrics-host", "127.0.0.1", "--metrics-port",
             str(free_port())], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def status() -> dict[str, Any]:
            out = release.cluster.kubectl("get", "gpudevice", name, "-o", "json", check=False)
            return dict(json.loads(out.stdout).get("status") or {}) if out.returncode == 0 \
                else {}

        wait_for(lambda: bool(status().get("metrics")), timeout=60,
                 what="the exporter's first status", interval=0.5)
        release.cluster.kubectl("patch", "gpudevice", name, "--type=merge",
                                "-p", '{"spec":{"unschedulable":true}}')
        _as_controller(release, name)
        marked = time.time()

        def written_after() -> bool:
            beat = status().get("lastHeartbeatTime", "1970-01-01T00:00:00Z")
            moment = time.mktime(time.strptime(beat[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            return moment > marked + 1

        wait_for(written_after, timeout=60, what="the exporter's writes after theirs",
                 interval=0.5)
        after = json.loads(release.cluster.kubectl("get", "gpudevice", name, "-o",
                                                   "json").stdout)
        assert after["spec"]["unschedulable"] is True
        # (A controller may be running in this test session and rewrite its own fields.)
        assert "score" in after["status"] and "allocation" in after["status"]
        assert {c["type"] for c in after["status"]["conditions"]} >= {"Ready", "Stale"}
        assert process.poll() is None
        text = log.read_text()
        assert "denied" not in text and "refused" not in text, text[-3000:]
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        release.cluster.kubectl("patch", "gpudevice", name, "--type=merge",
                                "-p", '{"spec":{"unschedulable":false}}', check=False)
        release.cluster.kubectl("delete", "gpudevice", name, "--ignore-not-found",
                                "--wait=false", check=False)
