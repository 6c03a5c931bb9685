"""The local control plane is the real thing: version, scheduling, RBAC, garbage collection."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from exo.gpu.devcluster import LocalCluster, wait_for
from exo.gpu.devcluster.binaries import KUBERNETES_VERSION

pytestmark = pytest.mark.cluster

GPU = "gpu.exo.dev/gpu"


def _pod(name: str, gpus: int, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                                     "resources": {"limits": {GPU: str(gpus)}}}], **spec}}


def _read_pod(cluster: LocalCluster, namespace: str, name: str) -> Any:
    return client.CoreV1Api(cluster.api_client()).read_namespaced_pod(name, namespace)


class TestVersion:
    def test_server_reports_the_built_version(self, kube_cluster: LocalCluster) -> None:
        version = client.VersionApi(kube_cluster.api_client()).get_code()
        assert version.git_version == KUBERNETES_VERSION
        assert (version.major, version.minor) == tuple(KUBERNETES_VERSION[1:].split(".")[:2])

    def test_kubectl_talks_to_it(self, kube_cluster: LocalCluster) -> None:
        out = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
        assert out["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


class TestScheduling:
    def test_pod_with_extended_resource_is_bound_to_the_fake_node_and_runs(
            self, kube_cluster: LocalCluster, namespace: str, gpu_nodes: Any) -> None:
        node = gpu_nodes("gpu-a", vendor="nvidia", model="H100", gpus=2)
        gpu_nodes("cpu-only")  # no GPU resource: the scheduler must not pick it
        core = client.CoreV1Api(kube_cluster.api_client())
        core.create_namespaced_pod(namespace, _pod("one-gpu", 1))

        wait_for(lambda: _read_pod(kube_cluster, namespace, "one-gpu").spec.node_name
                 is not None, timeout=30, what="the pod to be bound")
        assert _read_pod(kube_cluster, namespace, "one-gpu").spec.node_name == \
            node.metadata.name
        wait_for(lambda: _read_pod(kube_cluster, namespace, "one-gpu").status.phase
                 == "Running", timeout=30, what="the pod runner to start the pod")

    def test_pod_that_fits_nowhere_stays_pending_with_the_schedulers_reason(
            self, kube_cluster: LocalCluster, namespace: str, gpu_nodes: Any) -> None:
        gpu_nodes("gpu-small", vendor="amd", model="MI210", gpus=1)
        core = client.CoreV1Api(kube_cluster.api_client())
        core.create_namespaced_pod(namespace, _pod("too-big", 64))

        def failed_event() -> bool:
            events = core.list_namespaced_event(
                namespace, field_selector="involvedObject.name=too-big").items
            return any(e.reason == "FailedScheduling" and f"Insufficient {GPU}" in e.message
                       for e in events)

        wait_for(failed_event, timeout=30, what="a FailedScheduling event")
        assert _read_pod(kube_cluster, namespace, "too-big").spec.node_name is None


class _Extender(BaseHTTPRequestHandler):
    """A scheduler extender that keeps only nodes whose name ends with '-chosen'."""

    calls: list[str] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Extender.calls.append(self.path)
        names = body.get("NodeNames") or []
        keep = [n for n in names if n.endswith("-chosen") or "-chosen-" in n]
        reply = {"NodeNames": keep,
                 "FailedNodes": {n: "not chosen" for n in names if n not in keep},
                 "Error": ""}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def extender_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Extender)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class TestSchedulerExtenderConfig:
    def test_scheduler_consults_the_configured_extender(
            self, kube_cluster: LocalCluster, namespace: str, gpu_nodes: Any,
            extender_url: str) -> None:
        gpu_nodes("ext-other", gpus=4)
        chosen = gpu_nodes("ext-chosen", gpus=1)
        kube_cluster.restart_scheduler([{
            "urlPrefix": extender_url, "filterVerb": "filter", "nodeCacheCapable": True,
            "managedResources": [{"name": GPU, "ignoredByScheduler": False}],
            "httpTimeout": "5s"}])
        try:
            core = client.CoreV1Api(kube_cluster.api_client())
            core.create_namespaced_pod(namespace, _pod("via-extender", 1))
            wait_for(lambda: _read_pod(kube_cluster, namespace, "via-extender").spec.node_name
                     is not None, timeout=30, what="the pod to be bound")
            assert _read_pod(kube_cluster, namespace, "via-extender").spec.node_name == \
                chosen.metadata.name
            assert "/filter" in _Extender.calls
        finally:
            kube_cluster.restart_scheduler([])


class TestRBAC:
    def test_impersonated_service_account_gets_only_what_it_was_granted(
            self, kube_cluster: LocalCluster, namespace: str) -> None:
        sa = f"system:serviceaccount:{namespace}:reader"
        kube_cluster.kubectl("-n", namespace, "create", "serviceaccount", "reader")
        kube_cluster.kubectl("-n", namespace, "create", "role", "pod-reader",
                             "--verb=get,list", "--resource=pods")
        kube_cluster.kubectl("-n", namespace, "create", "rolebinding", "reader",
                             "--role=pod-reader", f"--serviceaccount={namespace}:reader")

        def can(verb: str, resource: str, ns: str = namespace) -> bool:
            result = kube_cluster.kubectl("auth", "can-i", verb, resource, "-n", ns,
                                          f"--as={sa}", check=False)
            return result.stdout.strip() == "yes"

        wait_for(lambda: can("list", "pods"), timeout=10, what="the RoleBinding to apply")
        assert not can("create", "pods")
        assert not can("list", "secrets")
        assert not can("list", "pods", "default")

        api = kube_cluster.api_client()
        api.set_default_header("Impersonate-User", sa)
        core = client.CoreV1Api(api)
        assert core.list_namespaced_pod(namespace).items == []
        with pytest.raises(ApiException) as denied:
            core.list_namespaced_secret(namespace)
        assert denied.value.status == 403


class TestGarbageCollection:
    def test_deleting_an_owner_collects_its_child(
            self, kube_cluster: LocalCluster, namespace: str) -> None:
        core = client.CoreV1Api(kube_cluster.api_client())
        owner = core.create_namespaced_config_map(
            namespace, {"metadata": {"name": "owner"}, "data": {"k": "v"}})
        core.create_namespaced_config_map(namespace, {"metadata": {
            "name": "child", "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                "uid": owner.metadata.uid}]}})
        core.delete_namespaced_config_map("owner", namespace)

        def child_gone() -> bool:
            try:
                core.read_namespaced_config_map("child", namespace)
            except ApiException as error:
                return error.status == 404
            return False

        wait_for(child_gone, timeout=60, what="the garbage collector to delete the child")


class TestHelm:
    def test_helm_is_built_at_its_version(self) -> None:
        import subprocess

        from exo.gpu.devcluster import ensure_helm
        from exo.gpu.devcluster.binaries import HELM_VERSION

        out = subprocess.run([str(ensure_helm()), "version", "--short"], capture_output=True,
                             text=True, check=True).stdout
        assert out.strip().startswith(HELM_VERSION)
