"""The chart installed into a real API server: accepted objects, least privilege, own-node writes.

``helm install`` runs against the local control plane (real etcd and kube-apiserver with RBAC,
Pod Security and ValidatingAdmissionPolicy), so every object is checked by the same code that
checks it in production. Three things are proven here that no render can prove:

- every object of the chart (and of ``manifests/install.yaml``, and of the chart's optional
  variants) is accepted, and the Deployments' pods pass the ``restricted`` Pod Security level;
- each ServiceAccount can do what its component needs and nothing more (``kubectl auth can-i``
  with ``--as``, one row per right);
- the admission policy lets an exporter write only its own node's GPUDevices, both when the
  node claim is impersonated and with a real token bound to a Node by the API server;
- the real exporter, controller and extender, run with tokens of their own ServiceAccounts, do
  their work without one refused request (and an exporter posing as another node writes
  nothing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
import time
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


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    cluster: LocalCluster
    notes: str = ""

    @property
    def fullname(self) -> str:
        return f"{self.name}-exo-gpu"

    def account(self, component: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}-{component}"

    def helm(self, *args: str, check: bool = True,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(ensure_helm()), "--kubeconfig", self.cluster.kubeconfig,
                                 *args], capture_output=True, text=True, timeout=180,
                                input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)}:\n{result.stderr}")
        return result


@pytest.fixture(scope="module")
def release(kube_cluster: LocalCluster) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    rel = Release(name=f"it{suffix}", namespace=f"exo-gpu-it-{suffix}", cluster=kube_cluster)
    kube_cluster.kubectl("create", "namespace", rel.namespace)
    kube_cluster.kubectl("label", "namespace", rel.namespace,
                         "pod-security.kubernetes.io/enforce=restricted",
                         "pod-security.kubernetes.io/warn=restricted")
    installed = rel.helm("install", rel.name, str(CHART), "--namespace", rel.namespace)
    rel = dataclasses.replace(rel, notes=installed.stdout)
    yield rel
    # Fake nodes run no containers, so the post-delete cleanup Job would never finish here: it
    # is exercised on a real node (e2e/test_installed.py).
    rel.helm("uninstall", rel.name, "--namespace", rel.namespace, "--no-hooks", check=False)
    kube_cluster.kubectl("delete", "namespace", rel.namespace, "--wait=false", check=False)


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# ------------------------------------------------------------------------------- acceptance
def test_release_is_deployed_with_every_object_stored(release: Release) -> None:
    status = json.loads(release.helm("status", release.name, "-n", release.namespace,
                                     "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    manifest = _docs(release.helm("get", "manifest", release.name, "-n",
                                  release.namespace).stdout)
    assert len(manifest) >= 20
    for doc in manifest:
        meta = doc["metadata"]
        args = ["get", f"{doc['kind'].lower()}.{doc['apiVersion'].split('/')[0]}"
                if "/" in doc["apiVersion"] else doc["kind"].lower(), meta["name"], "-o", "name"]
        if "namespace" in meta:
            args += ["-n", meta["namespace"]]
        result = release.cluster.kubectl(*args, check=False)
        assert result.returncode == 0, (doc["kind"], meta["name"], result.stderr)


def test_install_prints_notes_naming_this_release(release: Release) -> None:
    notes = release.notes.split("NOTES:", 1)[1]
    assert f"deploy/{release.fullname}-controller" in notes
    assert f"helm test {release.name} -n {release.namespace}" in notes
    assert "schedulerName: exo-gpu-scheduler" in notes
    assert "WARNING" not in notes


def test_deployments_create_pods_that_pass_restricted_pod_security(release: Release) -> None:
    """kube-controller-manager creates the pods; Pod Security refuses any not locked down."""
    wanted = {"controller", "scheduler"}

    def created() -> bool:
        out = release.cluster.kubectl(
            "get", "pods", "-n", release.namespace, "-l",
            f"app.kubernetes.io/instance={release.name}", "-o", "json").stdout
        components = {p["metadata"]["labels"].get("app.kubernetes.io/component")
                      for p in json.loads(out)["items"]}
        return wanted <= components

    wait_for(created, timeout=90, what="controller and scheduler pods created")
    events = json.loads(release.cluster.kubectl(
        "get", "events", "-n", release.namespace, "-o", "json").stdout)["items"]
    refused = [e["message"] for e in events if e.get("reason") == "FailedCreate"]
    assert not refused, refused


def _server_dry_run(cluster: LocalCluster, text: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server",
                           "-f", "-", input=text, check=False, timeout=120)


@pytest.mark.parametrize("sets", [
    ("exporter.backend=simulated", 'exporter.fleet={"nodes":[{"name":"n1","devices":[]}]}',
     "exporter.runtimeClassName=nvidia", "controller.extender.tls.source=secrets",
     "controller.extender.tls.secretName=extender-tls",
     "controller.extender.tls.clientSecretName=scheduler-tls"),
    ("controller.replicas=2", 'controller.watchNamespaces=["ml-a","ml-b"]',
     "scheduler.replicas=2", 'imagePullSecrets=[{"name":"pull"}]',
     'exporter.extraVolumes=[{"name":"dri","hostPath":{"path":"/dev/dri"}}]',
     'exporter.extraVolumeMounts=[{"name":"dri","mountPath":"/dev/dri","readOnly":true}]',
     'exporter.podSecurityContext={"supplementalGroups":[44]}'),
    ("rbac.create=false", "admissionPolicy.enabled=false", "scheduler.enabled=false",
     'networkPolicy.extenderPeers=[{"ipBlock":{"cidr":"10.0.0.0/24"}}]'),
    ("controller.extender.tls.enabled=false", "networkPolicy.enabled=false"),
], ids=["simulated-tls-secrets", "replicas-namespaces-devices", "minimal", "plain-http"])
def test_optional_variants_are_accepted(release: Release, sets: tuple[str, ...]) -> None:
    server = json.loads(release.cluster.kubectl("version", "-o", "json").stdout)
    args = ["template", "variant", str(CHART), "--namespace", release.namespace,
            "--kube-version", server["serverVersion"]["gitVersion"]]
    for item in sets:
        args += ["--set-json", item] if "={" in item or "=[" in item else ["--set", item]
    text = release.helm(*args).stdout
    result = _server_dry_run(release.cluster, text)
    # hostPath volumes are refused by the restricted level of this namespace, as intended;
    # a server-side dry run of a DaemonSet is not subject to it (only its pods are).
    assert result.returncode == 0, result.stderr


@pytest.mark.usefixtures("cert_manager_api")
@pytest.mark.parametrize("sets", [
    (), ("controller.extender.tls.issuerRef.name=platform-ca",
         "controller.extender.tls.issuerRef.kind=ClusterIssuer")],
    ids=["chart-ca", "cluster-issuer"])
def test_cert_manager_variants_are_accepted(release: Release, sets: tuple[str, ...]) -> None:
    server = json.loads(release.cluster.kubectl("version", "-o", "json").stdout)
    args = ["template", "variant", str(CHART), "--namespace", release.namespace,
            "--kube-version", server["serverVersion"]["gitVersion"],
            "--api-versions", "cert-manager.io/v1"]
    for item in sets:
        args += ["--set", item]
    text = release.helm(*args).stdout
    assert "kind: Certificate" in text
    result = _server_dry_run(release.cluster, text)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def cert_manager_api(kube_cluster: LocalCluster) -> None:
    """cert-manager's Certificate and Issuer kinds (stand-ins with the fields the chart uses:
    cert-manager-crds.yaml), so that the API server checks the chart's cert-manager objects."""
    kube_cluster.kubectl("apply", "--server-side", "-f",
                         str(Path(__file__).parent / "cert-manager-crds.yaml"))
    for crd in ("certificates.cert-manager.io", "issuers.cert-manager.io"):
        kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                             f"crd/{crd}")


@pytest.mark.usefixtures("cert_manager_api")
def test_install_yaml_is_accepted(release: Release) -> None:
    """install.yaml (rendered for a cluster with cert-manager) is accepted, cert-manager's
    Certificates and Issuers included."""
    docs = _docs((ROOT / "manifests" / "install.yaml").read_text())
    assert {d["kind"] for d in docs} >= {"Certificate", "Issuer", "NetworkPolicy"}
    assert docs[0]["kind"] == "Namespace"
    for doc in docs[1:]:  # into this test's namespace, so as not to touch exo-gpu-system
        if doc["metadata"].get("namespace") == "exo-gpu-system":
            doc["metadata"]["namespace"] = release.namespace
    result = _server_dry_run(release.cluster, yaml.safe_dump_all(docs[1:]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(docs) - 1


# ------------------------------------------------------------------------------- least privilege
# (component, verb, resource, scope, allowed). scope: "cluster" for cluster-scoped resources,
# "all" for every namespace, "release" for the release namespace, or a namespace name.
MATRIX: list[tuple[str, str, str, str, bool]] = [
    # exporter: its node's GPUDevices (list by label, create, patch, replace status, delete)
    ("exporter", "get", "gpudevices.gpu.exo.dev", "cluster", True),
    ("exporter", "list", "gpudevices.gpu.exo.dev", "cluster", True),
    ("exporter", "create", "gpudevices.gpu.exo.dev", "cluster", True),
    ("exporter", "patch", "gpudevices.gpu.exo.dev", "cluster", True),
    ("exporter", "delete", "gpudevices.gpu.exo.dev", "cluster", True),
    ("exporter", "update", "gpudevices.gpu.exo.dev/status", "cluster", True),
    ("exporter", "deletecollection", "gpudevices.gpu.exo.dev", "cluster", False),
    ("exporter", "patch", "gpudevices.gpu.exo.dev/status", "cluster", False),
    ("exporter", "get", "gpuworkloads.gpu.exo.dev", "all", False),
    ("exporter", "list", "pods", "all", False),
    ("exporter", "create", "pods", "release", False),
    ("exporter", "get", "nodes", "cluster", False),
    ("exporter", "get", "secrets", "release", False),
    ("exporter", "create", "events", "default", False),
    ("exporter", "get", "leases.coordination.k8s.io", "release", False),
    # controller: view, workloads, their pods, binding, events, its own Lease
    ("controller", "list", "gpudevices.gpu.exo.dev", "cluster", True),
    ("controller", "watch", "gpudevices.gpu.exo.dev", "cluster", True),
    ("controller", "patch", "gpudevices.gpu.exo.dev/status", "cluster", True),
    ("controller", "get", "gpudevices.gpu.exo.dev/status", "cluster", True),
    ("controller", "watch", "gpuworkloads.gpu.exo.dev", "all", True),
    ("controller", "patch", "gpuworkloads.gpu.exo.dev", "all", True),
    ("controller", "patch", "gpuworkloads.gpu.exo.dev/status", "all", True),
    ("controller", "watch", "pods", "all", True),
    ("controller", "create", "pods", "all", True),
    ("controller", "delete", "pods", "all", True),
    ("controller", "patch", "pods", "all", True),
    ("controller", "create", "pods/binding", "all", True),
    ("controller", "create", "pods/eviction", "all", True),
    ("controller", "patch", "pods/status", "all", True),
    ("controller", "create", "events", "all", True),
    ("controller", "watch", "customresourcedefinitions.apiextensions.k8s.io", "cluster", True),
    ("controller", "create", "leases.coordination.k8s.io", "release", True),
    ("controller", "get", "leases.coordination.k8s.io/{fullname}-controller", "release", True),
    ("controller", "patch", "leases.coordination.k8s.io/{fullname}-controller", "release", True),
    ("controller", "patch", "leases.coordination.k8s.io/someone-else", "release", False),
    ("controller", "create", "leases.coordination.k8s.io", "kube-system", False),
    ("controller", "create", "gpudevices.gpu.exo.dev", "cluster", False),
    ("controller", "update", "gpudevices.gpu.exo.dev", "cluster", False),
    ("controller", "delete", "gpudevices.gpu.exo.dev", "cluster", False),
    ("controller", "create", "gpuworkloads.gpu.exo.dev", "all", False),
    ("controller", "delete", "gpuworkloads.gpu.exo.dev", "all", False),
    ("controller", "update", "pods/status", "all", False),
    ("controller", "create", "pods/exec", "all", False),
    ("controller", "get", "secrets", "all", False),
    ("controller", "list", "namespaces", "cluster", False),
    ("controller", "patch", "nodes", "cluster", False),
    ("controller", "create", "serviceaccounts/token", "all", False),
    ("controller", "get", "configmaps", "release", False),
    # scheduler: kube-scheduler's own rights plus its Lease
    ("scheduler", "create", "pods/binding", "all", True),
    ("scheduler", "list", "nodes", "cluster", True),
    ("scheduler", "watch", "pods", "all", True),
    ("scheduler", "patch", "pods/status", "all", True),
    ("scheduler", "delete", "pods", "all", True),  # preemption removes victims
    ("scheduler", "create", "events.events.k8s.io", "all", True),
    ("scheduler", "get", "configmaps/extension-apiserver-authentication", "kube-system", True),
    ("scheduler", "create", "tokenreviews.authentication.k8s.io", "cluster", True),
    ("scheduler", "create", "subjectaccessreviews.authorization.k8s.io", "cluster", True),
    ("scheduler", "get", "leases.coordination.k8s.io/{schedulerName}", "release", True),
    ("scheduler", "update", "leases.coordination.k8s.io/{schedulerName}", "release", True),
    ("scheduler", "update", "leases.coordination.k8s.io/{fullname}-controller", "release", False),
    ("scheduler", "get", "secrets", "all", False),
    ("scheduler", "create", "pods", "all", False),
    ("scheduler", "patch", "gpudevices.gpu.exo.dev", "cluster", False),
    ("scheduler", "get", "gpudevices.gpu.exo.dev", "cluster", False),
    ("scheduler", "delete", "nodes", "cluster", False),
    ("scheduler", "get", "configmaps", "release", False),
]


def can_i(release: Release, component: str, verb: str, resource: str, scope: str) -> bool:
    resource = resource.format(fullname=release.fullname, schedulerName="exo-gpu-scheduler")
    args = ["auth", "can-i", verb]
    name, _, sub = resource.partition("/")
    group_resource = name
    if sub and sub in ("status", "binding", "exec", "eviction", "token"):
        args += [group_resource, "--subresource", sub]
    elif sub:
        args.append(f"{group_resource}/{sub}")
    else:
        args.append(group_resource)
    if scope == "all":
        args.append("--all-namespaces")
    elif scope == "release":
        args += ["-n", release.namespace]
    elif scope != "cluster":
        args += ["-n", scope]
    args.append(f"--as={release.account(component)}")
    result = release.cluster.kubectl(*args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), (args, result.stdout, result.stderr)
    return answer == "yes"


@pytest.mark.parametrize(("component", "verb", "resource", "scope", "allowed"), MATRIX,
                         ids=[f"{c}-{'may' if a else 'may-not'}-{v}-{r.split('.')[0]}"
                              f"{'-' + r.split('/', 1)[1] if '/' in r else ''}-{s}"
                              for c, v, r, s, a in MATRIX])
def test_least_privilege(release: Release, component: str, verb: str, resource: str, scope: str,
                         allowed: bool) -> None:
    assert can_i(release, component, verb, resource, scope) is allowed


# ------------------------------------------------------------------------------- own-node policy
def device(node: str, index: int = 0, label_node: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "gpu.exo.dev/v1alpha1",
        "kind": "GPUDevice",
        "metadata": {"name": f"{node}-nvidia-{index}",
                     "labels": {"gpu.exo.dev/node": label_node or node,
                                "gpu.exo.dev/vendor": "nvidia"}},
        "spec": {"node": node, "vendor": "nvidia", "index": index,
                 "model": "NVIDIA H100 80GB HBM3", "memoryTotalBytes": 80 * 2**30,
                 "computeCapacity": 989.0},
    }


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def nodes() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:6]
    return f"node-a-{suffix}", f"node-b-{suffix}"


@pytest.fixture
def exporter_of(release: Release) -> Callable[[str | None], Kubectl]:
    """kubectl as the exporter's ServiceAccount, with the node claim of ``node`` (or none)."""

    def make(node: str | None) -> Kubectl:
        identity = [f"--as={release.account('exporter')}"]
        if node is not None:
            identity.append(f"--as-user-extra={NODE_CLAIM}={node}")

        def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
            return release.cluster.kubectl(*args, *identity, input=input, check=False)

        return run

    return make


@pytest.fixture
def policy_active(release: Release, exporter_of: Callable[[str | None], Kubectl]) -> None:
    """Wait until the API server enforces the freshly installed policy (its informer syncs)."""
    probe = json.dumps(device(f"probe-{uuid.uuid4().hex[:6]}"))
    as_other = exporter_of("not-the-probe-node")

    def denied() -> bool:
        result = as_other("create", "--dry-run=server", "-f", "-", input=probe)
        return result.returncode != 0 and "denied request" in result.stderr

    wait_for(denied, timeout=60, what="the exporter admission policy to be enforced",
             interval=0.5)


def _cleanup(cluster: LocalCluster, *names: str) -> None:
    for name in names:
        cluster.kubectl("delete", "gpudevice", name, "--ignore-not-found", "--wait=false",
                        check=False)


@pytest.mark.usefixtures("policy_active")
def test_exporter_writes_its_own_nodes_devices(
        release: Release, exporter_of: Callable[[str | None], Kubectl],
        nodes: tuple[str, str]) -> None:
    node_a, _ = nodes
    mine = device(node_a)
    as_a = exporter_of(node_a)
    name = mine["metadata"]["name"]
    try:
        created = as_a("create", "-f", "-", "-o", "json", input=json.dumps(mine))
        assert created.returncode == 0, created.stderr
        patched = as_a("patch", "gpudevice", name, "--type=merge",
                       "-p", '{"spec":{"model":"NVIDIA H100 PCIe"}}')
        assert patched.returncode == 0, patched.stderr
        body = json.loads(release.cluster.kubectl("get", "gpudevice", name, "-o", "json").stdout)
        body["status"] = {"lastHeartbeatTime": "2026-01-01T00:00:00Z"}
        status = as_a("replace", "--subresource=status", "-f", "-", input=json.dumps(body))
        assert status.returncode == 0, status.stderr
        deleted = as_a("delete", "gpudevice", name, "--wait=false")
        assert deleted.returncode == 0, deleted.stderr
    finally:
        _cleanup(release.cluster, name)


@pytest.mark.usefixtures("policy_active")
def test_exporter_may_not_touch_another_nodes_devices(
        release: Release, exporter_of: Callable[[str | None], Kubectl],
        nodes: tuple[str, str]) -> None:
    node_a, node_b = nodes
    theirs = device(node_b)
    name = theirs["metadata"]["name"]
    as_a = exporter_of(node_a)
    try:
        refused = as_a("create", "-f", "-", input=json.dumps(theirs))
        assert refused.returncode != 0
        assert "spec.node: the exporter of node " + node_a in refused.stderr, refused.stderr
        assert node_b in refused.stderr
        assert release.cluster.kubectl("get", "gpudevice", name, check=False).returncode != 0

        release.cluster.kubectl("create", "-f", "-", input=json.dumps(theirs))
        for args in (("patch", "gpudevice", name, "--type=merge",
                      "-p", '{"spec":{"unschedulable":true}}'),
                     ("delete", "gpudevice", name, "--wait=false")):
            result = as_a(*args)
            assert result.returncode != 0 and "denied request" in result.stderr, \
                (args, result.stderr)
        body = json.loads(release.cluster.kubectl("get", "gpudevice", name, "-o", "json").stdout)
        body["status"] = {"lastHeartbeatTime": "2026-01-01T00:00:00Z"}
        status = as_a("replace", "--subresource=status", "-f", "-", input=json.dumps(body))
        assert status.returncode != 0 and "denied request" in status.stderr, status.stderr
        after = json.loads(release.cluster.kubectl("get", "gpudevice", name, "-o",
                                                   "json").stdout)
        assert after["spec"].get("unschedulable", False) is False
        assert "lastHeartbeatTime" not in (after.get("status") or {})
    finally:
        _cleanup(release.cluster, name)


@pytest.mark.usefixtures("policy_active")
def test_exporter_may_not_label_its_device_with_another_node(
        release: Release, exporter_of: Callable[[str | None], Kubectl],
        nodes: tuple[str, str]) -> None:
    node_a, node_b = nodes
    disguised = device(node_a, label_node=node_b)
    result = exporter_of(node_a)("create", "--dry-run=server", "-f", "-",
                                 input=json.dumps(disguised))
    assert result.returncode != 0
    assert "metadata.labels[gpu.exo.dev/node]" in result.stderr, result.stderr


@pytest.mark.usefixtures("policy_active")
def test_exporter_without_a_node_claim_writes_nothing(
        release: Release, exporter_of: Callable[[str | None], Kubectl],
        nodes: tuple[str, str]) -> None:
    result = exporter_of(None)("create", "--dry-run=server", "-f", "-",
                               input=json.dumps(device(nodes[0])))
    assert result.returncode != 0
    assert "carries no node" in result.stderr, result.stderr


@pytest.mark.usefixtures("policy_active")
def test_policy_leaves_the_controller_and_admins_alone(
        release: Release, nodes: tuple[str, str]) -> None:
    theirs = device(nodes[1])
    name = theirs["metadata"]["name"]
    try:
        release.cluster.kubectl("create", "-f", "-", input=json.dumps(theirs))
        result = release.cluster.kubectl(
            "patch", "gpudevice", name, "--subresource=status", "--type=merge",
            "-p", '{"status":{"score":0.5}}', f"--as={release.account('controller')}",
            check=False)
        assert result.returncode == 0, result.stderr
    finally:
        _cleanup(release.cluster, name)


def token_kubeconfig(release: Release, component: str, path: Path,
                     node: str | None = None) -> Path:
    """A kubeconfig holding a token the API server issues for the component's ServiceAccount,
    bound to ``node`` when given (the way a pod's token on that node is)."""
    args = ["create", "token", f"{release.fullname}-{component}", "-n", release.namespace,
            "--duration", "10m"]
    if node is not None:
        args += ["--bound-object-kind", "Node", "--bound-object-name", node]
    token = release.cluster.kubectl(*args).stdout.strip()
    config = yaml.safe_load(Path(release.cluster.kubeconfig).read_text())
    config["users"] = [{"name": component, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = component
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.usefixtures("policy_active")
def test_real_node_bound_token_carries_the_claim_the_policy_reads(
        release: Release, gpu_nodes: Callable[..., Any], tmp_path: Path) -> None:
    """A token the API server issues for a Node: the policy admits that node and no other."""
    node = gpu_nodes("exporter-node", vendor="nvidia", gpus=1).metadata.name
    kubeconfig = token_kubeconfig(release, "exporter", tmp_path / "exporter.kubeconfig", node)

    def as_token(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        assert release.cluster.binaries is not None
        return subprocess.run([str(release.cluster.binaries.kubectl), "--kubeconfig",
                               str(kubeconfig), *args], capture_output=True, text=True,
                              input=input, timeout=60)

    whoami = json.loads(as_token("auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == release.account("exporter")
    assert whoami["status"]["userInfo"]["extra"][NODE_CLAIM] == [node]

    own = as_token("create", "--dry-run=server", "-f", "-", input=json.dumps(device(node)))
    assert own.returncode == 0, own.stderr
    other = as_token("create", "--dry-run=server", "-f", "-",
                     input=json.dumps(device(f"{node}-other")))
    assert other.returncode != 0 and "spec.node" in other.stderr, other.stderr


# ------------------------------------------------------------------------------- real components
# API refusals as the clients log them, and kopf's "Not enough permissions to ..." warnings.
FORBIDDEN_MARKS = ("Forbidden", "forbidden", "permissions")


@contextlib.contextmanager
def component(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``exo-gpu <args>`` in the background, stopped with SIGTERM (then SIGKILL) afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "exo.gpu.cli", *args], stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _fleet(node: str, devices: int) -> dict[str, Any]:
    return {"nodes": [{"name": node, "devices": [
        {"vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3", "memory": "80Gi",
         "utilization": {"pattern": "constant", "value": 10}, "memoryUsed": {"base": "4Gi"},
         "temperature": {"idle": 35, "full": 70}, "power": {"idle": 80, "full": 700},
         "clock": {"idle": 1300, "full": 1980}} for _ in range(devices)]}]}


def _devices_of(cluster: LocalCluster, node: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "gpudevices", "-l", f"gpu.exo.dev/node={node}", "-o", "json")
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items


@pytest.mark.usefixtures("policy_active")
def test_exporter_runs_with_exactly_its_rights(
        release: Release, gpu_nodes: Callable[..., Any], tmp_path: Path) -> None:
    """The real exporter, with its ServiceAccount's node-bound token: its node's devices appear
    (RBAC and the policy allow everything it does); pretending to be another node writes
    nothing (the policy refuses), and the exporter keeps running."""
    node = gpu_nodes("own-node", vendor="nvidia", gpus=2).metadata.name
    other = gpu_nodes("other-node", vendor="nvidia", gpus=2).metadata.name
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(
        {"nodes": _fleet(node, 2)["nodes"] + _fleet(other, 2)["nodes"]}))
    kubeconfig = token_kubeconfig(release, "exporter", tmp_path / "exporter.kubeconfig", node)
    common = ["exporter", "--backend", "simulated", "--fleet", str(fleet), "--poll-interval",
              "0.5", "--kubeconfig", str(kubeconfig), "--metrics-host", "127.0.0.1",
              "--metrics-port", "0", "--vanish-grace", "0"]
    try:
        with component([*common, "--node", node], tmp_path / "own.log") as own, \
                component([*common, "--node", other], tmp_path / "other.log") as impostor:
            def reported() -> bool:
                return len(_devices_of(release.cluster, node)) == 2

            wait_for(reported, timeout=60, what="the exporter's own devices", interval=0.5)

            def refused() -> bool:
                return "denied request" in (tmp_path / "other.log").read_text()

            wait_for(refused, timeout=60, what="the impostor's writes refused", interval=0.5)
            assert own.poll() is None and impostor.poll() is None
        assert _devices_of(release.cluster, other) == []
        own_log = (tmp_path / "own.log").read_text()
        assert not [m for m in FORBIDDEN_MARKS if m in own_log], own_log[-3000:]
        statuses = [d.get("status") or {} for d in _devices_of(release.cluster, node)]
        assert all(s.get("metrics") for s in statuses), statuses
    finally:
        release.cluster.kubectl("delete", "gpudevices", "-l",
                                f"gpu.exo.dev/node in ({node},{other})", "--wait=false",
                                check=False)


def test_controller_and_extender_run_with_exactly_their_rights(
        release: Release, namespace: str, tmp_path: Path) -> None:
    """The real controller and extender with the controller ServiceAccount's token: the Lease
    is won, a GPUWorkload is placed and its pod created, the extender's informer syncs, and
    nothing was refused."""
    from exo.gpu.devcluster.cluster import free_port

    node = f"ctl-{uuid.uuid4().hex[:6]}"
    release.cluster.kubectl("create", "-f", "-", input=json.dumps(device(node)))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    name = device(node)["metadata"]["name"]
    release.cluster.kubectl(
        "patch", "gpudevice", name, "--subresource=status", "--type=merge", "-p", json.dumps(
            {"status": {"lastHeartbeatTime": now, "metrics": {
                "timestamp": now, "memoryUsedBytes": 2**30, "computeUtilizationPercent": 5,
                "temperatureCelsius": 40, "powerWatts": 100, "clockRateMHz": 1500},
                "conditions": [{"type": "Ready", "status": "True", "reason": "Reporting",
                                "message": "test", "lastTransitionTime": now}]}}))
    kubeconfig = token_kubeconfig(release, "controller", tmp_path / "controller.kubeconfig")
    port = free_port()
    workload = {"apiVersion": "gpu.exo.dev/v1alpha1", "kind": "GPUWorkload",
                "metadata": {"name": "rights", "namespace": namespace},
                "spec": {"tasks": 2, "strategy": "uniform", "deviceSelector": {
                    "matchLabels": {"gpu.exo.dev/node": node}},
                    "template": {"spec": {"containers": [
                        {"name": "main", "image": "busybox:1.36", "command": ["true"]}]}}}}
    try:
        with component(["controller", "--kubeconfig", str(kubeconfig), "--metrics-port", "0",
                        "--liveness", "", "--lease-namespace", release.namespace,
                        "--lease-name", f"{release.fullname}-controller",
                        "--extender-port", "0"],
                       tmp_path / "controller.log") as controller, \
                component(["extender", "--kubeconfig", str(kubeconfig), "--host", "127.0.0.1",
                           "--port", str(port), "--plain-http"],
                          tmp_path / "extender.log") as extender:
            release.cluster.kubectl("create", "-f", "-", input=json.dumps(workload))

            def placed() -> bool:
                out = release.cluster.kubectl("get", "gpuworkload", "rights", "-n", namespace,
                                              "-o", "json", check=False).stdout
                return bool(out) and (json.loads(out).get("status") or {}).get("phase") in \
                    ("Placed", "Running", "Succeeded")

            wait_for(placed, timeout=90, what="the workload placed by the controller",
                     interval=0.5)

            def pod_created() -> bool:
                out = release.cluster.kubectl("get", "pods", "-n", namespace, "-l",
                                              "gpu.exo.dev/workload=rights", "-o", "name")
                return len(out.stdout.split()) == 1

            wait_for(pod_created, timeout=60, what="the workload's pod created", interval=0.5)

            def ready() -> bool:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz",
                                                timeout=2) as response:
                        return bool(response.status == 200)
                except OSError:
                    return False

            wait_for(ready, timeout=60, what="the extender's informer synced", interval=0.5)
            holder = json.loads(release.cluster.kubectl(
                "get", "lease", f"{release.fullname}-controller", "-n", release.namespace,
                "-o", "json").stdout)["spec"]["holderIdentity"]
            assert holder
            assert controller.poll() is None and extender.poll() is None
        for log in ("controller.log", "extender.log"):
            text = (tmp_path / log).read_text()
            assert not [m for m in FORBIDDEN_MARKS if m in text], (log, text[-3000:])
    finally:
        release.cluster.kubectl("delete", "gpudevice", name, "--wait=false", check=False)


def test_uninstall_removes_cluster_scoped_objects(kube_cluster: LocalCluster) -> None:
    """A second release, removed again: no ClusterRole or policy of it is left behind."""
    suffix = uuid.uuid4().hex[:6]
    rel = Release(name=f"rm{suffix}", namespace=f"exo-gpu-rm-{suffix}", cluster=kube_cluster)
    rel.helm("install", rel.name, str(CHART), "--namespace", rel.namespace,
             "--create-namespace")
    try:
        names = kube_cluster.kubectl("get", "clusterroles,validatingadmissionpolicies",
                                     "-o", "name").stdout
        assert f"{rel.fullname}-exporter" in names
    finally:
        rel.helm("uninstall", rel.name, "--namespace", rel.namespace, "--no-hooks")
        kube_cluster.kubectl("delete", "namespace", rel.namespace, "--wait=false", check=False)

    def gone() -> bool:
        names = kube_cluster.kubectl("get", "clusterroles,clusterrolebindings,"
                                     "validatingadmissionpolicies", "-o", "name").stdout
        return rel.fullname not in names

    wait_for(gone, timeout=30, what="the release's cluster-scoped objects to go")


@pytest.mark.parametrize("example", sorted(p.name for p in
                                           (ROOT / "manifests" / "examples").glob("*.yaml")))
def test_examples_are_accepted(release: Release, namespace: str, example: str) -> None:
    text = (ROOT / "manifests" / "examples" / example).read_text()
    result = release.cluster.kubectl("apply", "--dry-run=server", "-n", namespace,
                                     "-f", "-", input=text, check=False)
    assert result.returncode == 0, result.stderr
