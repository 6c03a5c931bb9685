"""The controller against the real API server: kopf, the Lease, pods, garbage collection.

Simulated exporters are GPUDevice objects created here and kept fresh by a heartbeat thread that
writes ``status.metrics`` the way an exporter does; stopping a device's heartbeat is a failed
node. Every test runs its own controller watching only its namespace, with its own Lease, and
selects only its own devices (a label unique to the test), so tests never see each other's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from exo.gpu.controller import planning
from exo.gpu.controller.cli import load_view
from exo.gpu.controller.controller import Controller, ControllerConfig
from exo.gpu.controller.runner import LeaderSettings, run_operator
from exo.gpu.devcluster import LocalCluster, wait_for
from exo.gpu.k8s.view import ClusterView
from exo.gpu.selector import SelectionPolicy

pytestmark = pytest.mark.cluster

GROUP, VERSION = "gpu.exo.dev", "v1alpha1"
GIB = 1024**3
#: Heartbeats every second; stale after 3 missed 2 s intervals.
POLICY = SelectionPolicy(reporting_interval_seconds=2.0)
TEST_LABEL = "test.exo.dev/run"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Exporters:
    """GPUDevices with a heartbeat thread: the simulated exporters of one test."""

    def __init__(self, cluster: LocalCluster, run: str) -> None:
        self.api = client.CustomObjectsApi(cluster.api_client())
        self.run = run
        self.metrics: dict[str, dict[str, Any]] = {}
        self.alive: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def add(self, node: str, vendor: str, index: int, memory_gib: int, *, capacity: float,
            used_gib: float = 0, util: float = 0, temp: float = 50) -> str:
        name = f"{node}-{vendor}-{index}"
        self.api.create_cluster_custom_object(GROUP, VERSION, "gpudevices", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUDevice",
            "metadata": {"name": name, "labels": {
                "gpu.exo.dev/node": node, "gpu.exo.dev/vendor": vendor, TEST_LABEL: self.run}},
            "spec": {"node": node, "vendor": vendor, "index": index, "uuid": f"uuid-{name}",
                     "model": f"{vendor}-model", "memoryTotalBytes": memory_gib * GIB,
                     "computeCapacity": capacity}})
        self.metrics[name] = {"memoryUsedBytes": int(used_gib * GIB),
                              "computeUtilizationPercent": util, "temperatureCelsius": temp,
                              "powerWatts": 100.0, "clockRateMHz": 1500.0}
        self._write(name, conditions=True)
        self.alive.add(name)
        return name

    def _write(self, name: str, conditions: bool = False) -> None:
        now = _now()
        status: dict[str, Any] = {"metrics": {"timestamp": now, **self.metrics[name]},
                                  "lastHeartbeatTime": now}
        if conditions:
            status["conditions"] = [{"type": "Ready", "status": "True", "reason": "DeviceReady",
                                     "message": "simulated", "lastTransitionTime": now}]
        self.api.patch_cluster_custom_object_status(GROUP, VERSION, "gpudevices", name,
                                                    {"status": status})

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            for name in list(self.alive):
                with contextlib.suppress(ApiException):
                    self._write(name)

    def silence(self, name: str) -> None:
        self.alive.discard(name)

    def device(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.api.get_cluster_custom_object(GROUP, VERSION, "gpudevices",
                                                                 name)
        return obj

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for name in self.metrics:
            with contextlib.suppress(ApiException):
                self.api.delete_cluster_custom_object(GROUP, VERSION, "gpudevices", name)


class Replica:
    """One controller process: ``run_operator`` on its own thread and event loop."""

    def __init__(self, cluster: LocalCluster, namespace: str, lease: str, identity: str) -> None:
        self.view = ClusterView(policy=POLICY)
        self.controllers: list[Controller] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(cluster, namespace, lease,
                                                               identity), daemon=True)
        self.thread.start()

    def _run(self, cluster: LocalCluster, namespace: str, lease: str, identity: str) -> None:
        try:
            asyncio.run(run_operator(
                self.view, api_client=cluster.api_client(), namespaces=[namespace],
                stop_flag=self.stop, ready_flag=self.ready, informer=True,
                leader=LeaderSettings(namespace=namespace, name=lease, identity=identity,
                                      lease_duration=6, renew_interval=1, renew_margin=2),
                config=ControllerConfig(resync_interval=1.0, health_interval=1.0),
                on_controller=self.controllers.append))
        except BaseException as error:  # surfaced by the test through .error
            self.error = error

    @property
    def acted(self) -> int:
        return sum(c.reconciles for c in self.controllers)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the operator did not stop"
        assert self.error is None, self.error


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def exporters(kube_cluster: LocalCluster, run_id: str) -> Iterator[Exporters]:
    fleet = Exporters(kube_cluster, run_id)
    yield fleet
    fleet.close()


@pytest.fixture
def replicas(kube_cluster: LocalCluster, namespace: str,
             run_id: str) -> Iterator[Callable[[str], Replica]]:
    started: list[Replica] = []

    def start(identity: str = "replica-a") -> Replica:
        replica = Replica(kube_cluster, namespace, f"exo-gpu-{run_id}", identity)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        if replica.thread.is_alive():
            replica.close()


@pytest.fixture
def fleet(exporters: Exporters, gpu_nodes: Any) -> dict[str, str]:
    """A mixed-vendor fleet on fake nodes: 2 NVIDIA, 1 AMD, 1 Intel."""
    nodes = {vendor: gpu_nodes(f"ctl-{vendor}", vendor=vendor, model="m", gpus=4).metadata.name
             for vendor in ("nvidia", "amd", "intel")}
    exporters.add(nodes["nvidia"], "nvidia", 0, 80, capacity=400)
    exporters.add(nodes["nvidia"], "nvidia", 1, 80, capacity=400, used_gib=30, util=40)
    exporters.add(nodes["amd"], "amd", 0, 64, capacity=200, util=10)
    exporters.add(nodes["intel"], "intel", 0, 16, capacity=50, temp=80)
    return nodes


def workload_body(name: str, run: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("deviceSelector", {"matchLabels": {TEST_LABEL: run}})
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload",
            "metadata": {"name": name}, "spec": spec}


def custom(cluster: LocalCluster) -> Any:
    return client.CustomObjectsApi(cluster.api_client())


def get_workload(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom(cluster).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "gpuworkloads", name)
    return obj


def wait_phase(cluster: LocalCluster, namespace: str, name: str, *phases: str,
               timeout: float = 30) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(get_workload(cluster, namespace, name))
        return (seen.get("status") or {}).get("phase") in phases

    wait_for(reached, timeout=timeout, what=f"{name} to reach {'/'.join(phases)}")
    return seen


def owned_pods(cluster: LocalCluster, namespace: str, name: str) -> list[Any]:
    pods = client.CoreV1Api(cluster.api_client()).list_namespaced_pod(
        namespace, label_selector=f"gpu.exo.dev/workload={name}").items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


TEMPLATE = {"spec": {"containers": [{"name": "main", "image": "busybox"}]}}


# ------------------------------------------------------------------------------ the API server


class TestSchema:
    @pytest.mark.parametrize(("spec", "field"), [
        ({"tasks": 0}, "spec.tasks"),
        ({"tasks": []}, "spec.tasks"),
        ({"tasks": "three"}, "spec.tasks"),
        ({"tasks": 2, "maxTasksPerDevice": 0}, "spec.maxTasksPerDevice"),
        ({"tasks": 2, "strategy": "fastest"}, "spec.strategy"),
        ({"tasks": 2, "capacities": {"d": 1}}, "spec.capacities"),
        ({"tasks": 2, "strategy": "capacity", "capacities": {"d": 0}}, "spec.capacities"),
        ({"tasks": 2, "minMemoryBytes": "-8Gi"}, "spec.minMemoryBytes"),
        ({"tasks": 2, "minMemoryBytes": "plenty"}, "spec.minMemoryBytes"),
        ({"tasks": 2, "template": {"spec": {"containers": []}}}, "spec.template.spec.containers"),
        ({"tasks": 2, "template": {"spec": {}}}, "spec.template.spec.containers"),
    ])
    def test_the_api_server_refuses_bad_workloads(self, kube_cluster: LocalCluster,
                                                  namespace: str, spec: dict[str, Any],
                                                  field: str) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload",
                "metadata": {"name": "bad"}, "spec": spec}
        with pytest.raises(ApiException) as caught:
            custom(kube_cluster).create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                 "gpuworkloads", body)
        assert caught.value.status == 422
        assert field in caught.value.body
        with pytest.raises(ApiException, match="Not Found"):
            get_workload(kube_cluster, namespace, "bad")

    def test_a_good_workload_is_stored_with_defaults(self, kube_cluster: LocalCluster,
                                                     namespace: str) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload",
                "metadata": {"name": "good"},
                "spec": {"tasks": ["a", "b"], "minMemoryBytes": "8Gi",
                         "template": {"spec": {"containers": [{"name": "m", "image": "x"}],
                                               "nodeSelector": {"k": "v"}}}}}
        custom(kube_cluster).create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                             "gpuworkloads", body)
        stored = get_workload(kube_cluster, namespace, "good")
        assert stored["spec"]["strategy"] == "uniform"
        assert stored["spec"]["template"]["spec"]["nodeSelector"] == {"k": "v"}
        out = kube_cluster.kubectl("get", "gw", "-n", namespace).stdout.split("\n")[0].split()
        assert out == ["NAME", "STRATEGY", "TASKS", "PHASE", "DEVICES", "AGE"]


# ------------------------------------------------------------------------------ placement


class TestPlacement:
    def test_uniform_and_capacity_are_placed_as_the_policy_says(
            self, kube_cluster: LocalCluster, namespace: str, run_id: str,
            fleet: dict[str, str], replicas: Callable[[str], Replica]) -> None:
        replicas("a")
        api = custom(kube_cluster)
        specs = {
            "uni": {"tasks": 10, "maxTasksPerDevice": 3},
            "cap": {"tasks": 21, "strategy": "capacity"},
            "named": {"tasks": ["p", "q", "r", "s"], "strategy": "capacity",
                      "capacities": {f"{fleet['amd']}-amd-0": 3,
                                     f"{fleet['intel']}-intel-0": 1}},
        }
        for name, spec in specs.items():
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads",
                                                workload_body(name, run_id, **spec))
        placed = {name: wait_phase(kube_cluster, namespace, name, "Placed") for name in specs}
        view = load_view(kube_cluster.api_client(), POLICY, pods=False)
        for name, obj in placed.items():
            workload, _ = planning.parse_workload(obj)
            assert workload is not None
            expected = planning.plan(workload, view)
            got = [(p["device"], p["tasks"]) for p in obj["status"]["placements"]]
            assert got == [(p.device, p.tasks_text) for p in expected.placements], name
            for p in obj["status"]["placements"]:
                b = p["breakdown"]
                assert p["score"] == pytest.approx(max(0.0, b["memory"] + b["compute"]
                                                       - b["thermal"]), abs=1e-3)
        uni = placed["uni"]["status"]
        assert max(p["taskCount"] for p in uni["placements"]) <= 3
        assert uni["taskCount"] == 10 and uni["deviceCount"] == 4
        cap = {p["device"]: p["taskCount"] for p in placed["cap"]["status"]["placements"]}
        # weights 400:400:200:50 over 21 tasks
        assert cap[f"{fleet['nvidia']}-nvidia-0"] == cap[f"{fleet['nvidia']}-nvidia-1"] == 8
        assert cap[f"{fleet['amd']}-amd-0"] == 4 and cap[f"{fleet['intel']}-intel-0"] == 1
        named = {p["device"]: p["tasks"] for p in placed["named"]["status"]["placements"]}
        assert named == {f"{fleet['amd']}-amd-0": "p,q,r", f"{fleet['intel']}-intel-0": "s"}
        events = client.CoreV1Api(kube_cluster.api_client()).list_namespaced_event(
            namespace, field_selector="involvedObject.name=uni").items
        assert [e.reason for e in events] == ["Placed"]

    def test_unschedulable_and_invalid_workloads_say_why_and_others_are_served(
            self, kube_cluster: LocalCluster, namespace: str, run_id: str,
            fleet: dict[str, str], replicas: Callable[[str], Replica]) -> None:
        replicas("a")
        api = custom(kube_cluster)
        cases = {
            "too-big": ({"tasks": 2, "minMemoryBytes": "1Ti"}, "InsufficientMemory"),
            "nobody": ({"tasks": 2, "deviceSelector": {"matchLabels": {
                TEST_LABEL: run_id, "gpu.exo.dev/vendor": "qualcomm"}}},
                "NoDeviceMatchesSelector"),
            "ghost": ({"tasks": 2, "strategy": "capacity",
                       "capacities": {"ghost-device-0": 1}}, "UnknownDevice"),
            "capped": ({"tasks": 9, "maxTasksPerDevice": 2}, "CapsTooLow"),
            "boolean": ({"tasks": True}, "InvalidSpec"),
        }
        for name, (spec, _) in cases.items():
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads",
                                                workload_body(name, run_id, **spec))
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads",
                                            workload_body("fine", run_id, tasks=4))
        wait_phase(kube_cluster, namespace, "fine", "Placed")
        for name, (_, reason) in cases.items():
            obj = wait_phase(kube_cluster, namespace, name, "Unschedulable", "Invalid")
            placed = next(c for c in obj["status"]["conditions"] if c["type"] == "Placed")
            assert (placed["status"], placed["reason"]) == ("False", reason), name
            assert obj["status"]["message"] and not obj["status"]["placements"]
        assert get_workload(kube_cluster, namespace, "boolean")["status"]["phase"] == "Invalid"
        assert "1Ti" in get_workload(kube_cluster, namespace, "too-big")["status"]["message"]


# ------------------------------------------------------------------------------ pods


class TestPods:
    def test_pods_are_created_owned_run_and_are_collected_with_the_workload(
            self, kube_cluster: LocalCluster, namespace: str, run_id: str,
            fleet: dict[str, str], replicas: Callable[[str], Replica]) -> None:
        replicas("a")
        custom(kube_cluster).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "gpuworkloads",
            workload_body("job", run_id, tasks=8, maxTasksPerDevice=2, template=TEMPLATE))
        obj = wait_phase(kube_cluster, namespace, "job", "Running", timeout=60)
        pods = {p.metadata.name: p for p in owned_pods(kube_cluster, namespace, "job")}
        placements = obj["status"]["placements"]
        assert {p["pod"] for p in placements} == set(pods)
        for placement in placements:
            pod = pods[placement["pod"]]
            assert pod.metadata.owner_references[0].uid == obj["metadata"]["uid"]
            assert pod.metadata.owner_references[0].controller is True
            notes = pod.metadata.annotations
            assert notes["gpu.exo.dev/device"] == placement["device"]
            assert notes["gpu.exo.dev/tasks"] == placement["tasks"]
            assert pod.spec.node_name == placement["node"]
            limits = pod.spec.containers[0].resources.limits
            assert limits == {"gpu.exo.dev/gpu": "1"}
            env = {e.name for e in pod.spec.containers[0].env}
            vendor = placement["device"].split("-")[-2]
            assert {"nvidia": "CUDA_VISIBLE_DEVICES", "amd": "ROCR_VISIBLE_DEVICES",
                    "intel": "ZE_AFFINITY_MASK"}[vendor] in env
        # Finishing every pod finishes the workload.
        core = client.CoreV1Api(kube_cluster.api_client())
        for name in pods:
            core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": {
                "devcluster.exo.dev/complete": "Succeeded"}}})
        wait_phase(kube_cluster, namespace, "job", "Succeeded", timeout=60)
        custom(kube_cluster).delete_namespaced_custom_object(GROUP, VERSION, namespace,
                                                             "gpuworkloads", "job")
        wait_for(lambda: not owned_pods(kube_cluster, namespace, "job"), timeout=60,
                 what="garbage collection of the workload's pods")

    def test_a_failed_pod_fails_the_workload(
            self, kube_cluster: LocalCluster, namespace: str, run_id: str,
            fleet: dict[str, str], replicas: Callable[[str], Replica]) -> None:
        replicas("a")
        custom(kube_cluster).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "gpuworkloads",
            workload_body("flaky", run_id, tasks=2, template=TEMPLATE))
        wait_phase(kube_cluster, namespace, "flaky", "Running", timeout=60)
        pod = owned_pods(kube_cluster, namespace, "flaky")[0]
        client.CoreV1Api(kube_cluster.api_client()).patch_namespaced_pod(
            pod.metadata.name, namespace,
            {"metadata": {"annotations": {"devcluster.exo.dev/complete": "Failed"}}})
        obj = wait_phase(kube_cluster, namespace, "flaky", "Failed", timeout=60)
        assert "1 Failed" in obj["status"]["message"]


# ------------------------------------------------------------------------------ failures


class TestFailures:
    def test_a_device_going_stale_is_marked_and_its_tasks_move(
            self, kube_cluster: LocalCluster, namespace: str, run_id: str,
            fleet: dict[str, str], exporters: Exporters,
            replicas: Callable[[str], Replica]) -> None:
        replicas("a")
        custom(kube_cluster).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "gpuworkloads",
            workload_body("train", run_id, tasks=3, maxTasksPerDevice=1, template=TEMPLATE))
        obj = wait_phase(kube_cluster, namespace, "train", "Running", timeout=60)
        before = {p["device"]: p for p in obj["status"]["placements"]}
        spare = (set(exporters.metrics) - set(before)).pop()
        victim = next(d for d in before if d != spare)
        exporters.silence(victim)

        def moved() -> bool:
            status = get_workload(kube_cluster, namespace, "train")["status"]
            return victim not in {p["device"] for p in status["placements"]} and \
                status["phase"] == "Running"

        wait_for(moved, timeout=60, what=f"the tasks of {victim} to move")
        status = get_workload(kube_cluster, namespace, "train")["status"]
        after = {p["device"]: p for p in status["placements"]}
        assert after[spare]["tasks"] == before[victim]["tasks"]
        for device in set(before) - {victim}:
            assert after[device]["pod"] == before[device]["pod"]  # untouched
        assert status["planRevision"] == 2
        pods = {p.metadata.name for p in owned_pods(kube_cluster, namespace, "train")}
        assert pods == {p["pod"] for p in after.values()}
        conditions = {c["type"]: c for c in exporters.device(victim)["status"]["conditions"]}
        assert conditions["Stale"]["status"] == "True"
        assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == \
            ("False", "HeartbeatLost")
        core = client.CoreV1Api(kube_cluster.api_client())
        reasons = [e.reason for e in core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=train").items]
        assert "Replanned" in reasons
        device_events = [e.reason for e in core.list_namespaced_event(
            "default", field_selector=f"involvedObject.name={victim}").items]
        assert "HeartbeatLost" in device_events

    def test_a_restarted_controller_resumes_without_duplicate_pods(
            self, kube_cluster: LocalCluster, namespace: str, run_id: str,
            fleet: dict[str, str], replicas: Callable[[str], Replica]) -> None:
        first = replicas("a")
        custom(kube_cluster).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "gpuworkloads",
            workload_body("long", run_id, tasks=4, template=TEMPLATE))
        wait_phase(kube_cluster, namespace, "long", "Running", timeout=60)
        pods = {p.metadata.name: p.metadata.uid for p in owned_pods(kube_cluster, namespace,
                                                                    "long")}
        first.close()
        second = replicas("b")
        wait_for(lambda: second.acted >= 3, timeout=60, what="the new controller to resume")
        again = {p.metadata.name: p.metadata.uid for p in owned_pods(kube_cluster, namespace,
                                                                     "long")}
        assert again == pods
        assert get_workload(kube_cluster, namespace, "long")["status"]["phase"] == "Running"
        # A workload created now is served by the new controller.
        custom(kube_cluster).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "gpuworkloads", workload_body("next", run_id, tasks=2))
        wait_phase(kube_cluster, namespace, "next", "Placed")

    def test_two_replicas_never_both_act(
            self, kube_cluster: LocalCluster, namespace: str, run_id: str,
            fleet: dict[str, str], replicas: Callable[[str], Replica]) -> None:
        a = replicas("a")
        wait_for(a.ready.is_set, timeout=30, what="replica a to lead")
        b = replicas("b")
        api = custom(kube_cluster)
        for i in range(3):
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads",
                                                workload_body(f"w{i}", run_id, tasks=2))
        for i in range(3):
            wait_phase(kube_cluster, namespace, f"w{i}", "Placed")
        assert a.acted > 0 and b.acted == 0 and not b.controllers
        lease = client.CoordinationV1Api(kube_cluster.api_client()).read_namespaced_lease(
            f"exo-gpu-{run_id}", namespace)
        assert lease.spec.holder_identity == "a"
        a.close()  # releases the Lease: b takes over
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads",
                                            workload_body("after", run_id, tasks=2))
        wait_phase(kube_cluster, namespace, "after", "Placed", timeout=30)
        assert b.acted > 0
        lease = client.CoordinationV1Api(kube_cluster.api_client()).read_namespaced_lease(
            f"exo-gpu-{run_id}", namespace)
        assert lease.spec.holder_identity == "b"
        assert (lease.spec.lease_transitions or 0) >= 1

    def test_a_spec_change_replans(
            self, kube_cluster: LocalCluster, namespace: str, run_id: str,
            fleet: dict[str, str], replicas: Callable[[str], Replica]) -> None:
        replicas("a")
        api = custom(kube_cluster)
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads",
                                            workload_body("grow", run_id, tasks=2))
        wait_phase(kube_cluster, namespace, "grow", "Placed")
        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads", "grow",
                                           {"spec": {"tasks": 12}})

        def replanned() -> bool:
            status = get_workload(kube_cluster, namespace, "grow")["status"]
            return status["observedGeneration"] == 2 and status["taskCount"] == 12

        wait_for(replanned, timeout=30, what="the new generation to be planned")



# ------------------------------------------------------------------------------ CLI and Lease


class TestCommands:
    def test_plan_prints_the_placement_without_writing(
            self, kube_cluster: LocalCluster, namespace: str, run_id: str,
            fleet: dict[str, str], tmp_path: Any) -> None:
        import yaml
        from click.testing import CliRunner

        from exo.gpu.controller.cli import plan_command, top_command

        manifest = tmp_path / "w.yaml"
        manifest.write_text(yaml.safe_dump(workload_body("preview", run_id, tasks=5,
                                                         maxTasksPerDevice=2)))
        result = CliRunner().invoke(plan_command, ["-f", str(manifest), "--kubeconfig",
                                                   kube_cluster.kubeconfig])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("preview: Placed (Placed): 5 task(s) on 4 device(s)")
        assert f"{fleet['nvidia']}-nvidia-0" in result.output
        assert "nothing was written" in result.output
        with pytest.raises(ApiException, match="Not Found"):
            get_workload(kube_cluster, namespace, "preview")
        manifest.write_text(yaml.safe_dump(workload_body("huge", run_id, tasks=5,
                                                         minMemoryBytes="4Ti")))
        result = CliRunner().invoke(plan_command, ["-f", str(manifest), "--kubeconfig",
                                                   kube_cluster.kubeconfig])
        assert result.exit_code == 1
        assert "Unschedulable (InsufficientMemory)" in result.output
        top = CliRunner().invoke(top_command, ["--kubeconfig", kube_cluster.kubeconfig])
        assert top.exit_code == 0, top.output
        assert top.output.startswith("DEVICE")
        for name in (f"{fleet['amd']}-amd-0", f"{fleet['intel']}-intel-0"):
            assert name in top.output
        assert "devices:" in top.output and "memory:" in top.output


class TestLease:
    def test_only_one_candidate_holds_the_lease_and_a_lapsed_one_is_taken_over(
            self, kube_cluster: LocalCluster, namespace: str) -> None:
        from exo.gpu.controller.api import LeaseElector

        def elector(identity: str) -> LeaseElector:
            return LeaseElector(kube_cluster.api_client(), namespace, "race", identity,
                                lease_duration=4, renew_interval=1, renew_margin=1)

        a, b = elector("a"), elector("b")
        assert a.try_acquire() and a.is_leader
        assert not b.try_acquire() and not b.is_leader
        assert a.try_acquire()  # renewal
        # a stops renewing (paused, partitioned): its own clock ends its leadership first...
        wait_for(lambda: not a.is_leader, timeout=10, what="a's leadership to lapse locally")
        # ...and once the Lease expired on the server b takes it over, exactly once.
        wait_for(b.try_acquire, timeout=10, what="b to take the expired Lease", interval=0.5)
        assert b.is_leader and not a.try_acquire()
        lease = client.CoordinationV1Api(kube_cluster.api_client()).read_namespaced_lease(
            "race", namespace)
        assert lease.spec.holder_identity == "b" and lease.spec.lease_transitions == 1
