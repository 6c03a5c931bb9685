"""The controller's reconcile, pod building and device health, against an in-memory API double.

The double records what the controller asks of the API (status writes, pod creates and deletes,
events) so that idempotence and transitions are asserted as data; the real API server tier is
tests/integration/test_controller_integration.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from exo.gpu.controller.controller import Controller
from exo.gpu.controller.health import (
    SUMMARY_MIN_INTERVAL_S,
    health_conditions,
    heartbeat,
    stale_state,
    summary_needs_write,
)
from exo.gpu.controller.planning import parse_workload, plan
from exo.gpu.controller.pods import build_pod
from exo.gpu.k8s.models import GPUDevice, find_condition
from exo.gpu.k8s.view import ClusterView, Reservation
from exo.gpu.selector import SelectionPolicy
from test_controller_planning import NOW, Clock, _iso, device


class FakeAPI:
    """Records requests; pods and statuses live in dicts."""

    def __init__(self) -> None:
        self.statuses: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        self.devices: dict[str, dict[str, Any]] = {}
        self.device_writes = 0
        self.summaries: dict[str, list[dict[str, Any]]] = {}
        self.api_client = None

    def patch_workload_status(self, namespace: str, name: str, status: Mapping[str, Any],
                              uid: str | None = None) -> dict[str, Any] | None:
        self.statuses[name] = copy.deepcopy(dict(status))
        return {"metadata": {"name": name}, "status": status}

    def create_pod(self, namespace: str, body: Mapping[str, Any]) -> bool:
        name = body["metadata"]["name"]
        if name in self.pods:
            return False
        self.pods[name] = copy.deepcopy(dict(body))
        self.created.append(name)
        return True

    def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> None:
        self.pods.pop(name, None)
        self.deleted.append(name)

    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str,
                   message: str) -> None:
        self.events.append((type_, reason, message))

    def patch_device_status(self, name: str, status: Mapping[str, Any]) -> None:
        self.summaries.setdefault(name, []).append(copy.deepcopy(dict(status)))

    def update_device_status(self, name: str,
                             compute: Callable[[dict[str, Any]], dict[str, Any] | None]
                             ) -> dict[str, Any] | None:
        obj = self.devices.get(name)
        if obj is None:
            return None
        status = compute(copy.deepcopy(obj))
        if status is None:
            return None
        obj["status"].update(status)
        self.device_writes += 1
        return obj


def wl_body(spec: dict[str, Any], name: str = "w", uid: str = "uid-1",
            generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": "gpu.exo.dev/v1alpha1", "kind": "GPUWorkload",
            "metadata": {"name": name, "namespace": "ns", "uid": uid,
                         "generation": generation}, "spec": spec}


TEMPLATE = {"metadata": {"labels": {"app": "train"}, "annotations": {"team": "ml"}},
            "spec": {"containers": [
                {"name": "main", "image": "trainer:1", "env": [{"name": "A", "value": "1"}]},
                {"name": "side", "image": "logger:1"}]}}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def view(clock: Clock) -> ClusterView:
    view = ClusterView(policy=SelectionPolicy(reporting_interval_seconds=10), clock=clock)
    view.apply_device(device("n1", "nvidia", 0, 80))
    view.apply_device(device("n2", "amd", 0, 64))
    view.apply_device(device("n3", "intel", 0, 16))
    return view


@pytest.fixture
def api() -> FakeAPI:
    return FakeAPI()


@pytest.fixture
def controller(view: ClusterView, api: FakeAPI, clock: Clock) -> Controller:
    return Controller(view=view, api=api, clock=clock)  # type: ignore[arg-type]


def pod_event(controller: Controller, api: FakeAPI, name: str, phase: str | None,
              deleted: bool = False) -> str | None:
    pod = copy.deepcopy(api.pods.get(name) or {})
    pod.setdefault("metadata", {}).setdefault("uid", f"pod-{name}")
    pod["status"] = {"phase": phase}
    return controller.observe_pod(pod, deleted=deleted)


class TestReconcile:
    def test_places_writes_status_and_posts_one_event(self, controller: Controller,
                                                      api: FakeAPI) -> None:
        body = wl_body({"tasks": 6})
        assert controller.reconcile(body) == "Placed"
        status = api.statuses["w"]
        assert status["phase"] == "Placed" and status["taskCount"] == 6
        assert status["deviceCount"] == 3 and status["observedGeneration"] == 1
        placed = find_condition_dict(status, "Placed")
        assert placed["status"] == "True" and placed["reason"] == "Placed"
        assert [e[1] for e in api.events] == ["Placed"]
        for p in status["placements"]:
            assert set(p["breakdown"]) == {"memory", "compute", "thermal"}
            assert "pod" not in p  # no template, no pods
        assert not api.created

    def test_second_reconcile_changes_nothing(self, controller: Controller,
                                              api: FakeAPI) -> None:
        body = wl_body({"tasks": 6, "template": TEMPLATE})
        controller.reconcile(body)
        writes, created, events = dict(api.statuses), list(api.created), list(api.events)
        api.statuses.clear()
        controller.reconcile({**body, "status": writes["w"]})
        assert api.created == created and not api.statuses and api.events == events

    def test_template_makes_one_owned_pod_per_placement_and_rolls_up(
            self, controller: Controller, api: FakeAPI) -> None:
        body = wl_body({"tasks": 6, "template": TEMPLATE})
        controller.observe_workload(body)
        assert controller.reconcile(body) == "Placed"
        assert len(api.created) == 3
        status = api.statuses["w"]
        assert {p["pod"] for p in status["placements"]} == set(api.created)
        assert find_condition_dict(status, "PodsReady")["status"] == "False"
        for name in api.created:
            assert pod_event(controller, api, name, "Running") == "uid-1"
        assert controller.reconcile(body) == "Running"
        assert api.statuses["w"]["phase"] == "Running"
        assert find_condition_dict(api.statuses["w"], "PodsReady")["reason"] == "PodsRunning"
        for name in api.created:
            pod_event(controller, api, name, "Succeeded")
        assert controller.reconcile(body) == "Succeeded"
        # Terminal: nothing more happens for this generation, whatever the devices do.
        api.statuses.clear()
        controller.view.remove_device("n1-nvidia-0")
        assert controller.reconcile(body) == "Succeeded"
        assert not api.statuses

    def test_a_failed_pod_fails_the_workload(self, controller: Controller,
                                             api: FakeAPI) -> None:
        body = wl_body({"tasks": 3, "template": TEMPLATE})
        controller.reconcile(body)
        first, *rest = api.created
        pod_event(controller, api, first, "Failed")
        for name in rest:
            pod_event(controller, api, name, "Running")
        assert controller.reconcile(body) == "Failed"
        assert api.events[-1][:2] == ("Warning", "Failed")

    def test_a_lost_pod_is_recreated_under_the_same_name(self, controller: Controller,
                                                         api: FakeAPI) -> None:
        body = wl_body({"tasks": 3, "template": TEMPLATE})
        controller.reconcile(body)
        for name in api.created:
            pod_event(controller, api, name, "Running")
        lost = api.created[0]
        pod_event(controller, api, lost, None, deleted=True)
        api.pods.pop(lost)
        controller.reconcile(body)
        assert api.created.count(lost) == 2 and len(api.pods) == 3

    def test_a_stale_device_replaces_only_its_pod(self, controller: Controller, api: FakeAPI,
                                                  view: ClusterView, clock: Clock) -> None:
        view.apply_device(device("n4", "nvidia", 0, 80, util=90))  # spare, worst score
        body = wl_body({"tasks": 3, "maxTasksPerDevice": 1, "template": TEMPLATE})
        controller.reconcile(body)
        before = {p["device"]: p["pod"] for p in api.statuses["w"]["placements"]}
        assert set(before) == {"n1-nvidia-0", "n2-amd-0", "n3-intel-0"}
        for name in api.created:
            pod_event(controller, api, name, "Running")
        clock.now += 31
        for obj in (device("n1", "nvidia", 0, 80, at=clock.now),
                    device("n3", "intel", 0, 16, at=clock.now),
                    device("n4", "nvidia", 0, 80, util=90, at=clock.now)):
            view.apply_device(obj)
        controller.reconcile(body)
        after = {p["device"]: p["pod"] for p in api.statuses["w"]["placements"]}
        assert set(after) == {"n1-nvidia-0", "n4-nvidia-0", "n3-intel-0"}
        assert api.deleted == [before["n2-amd-0"]]
        assert after["n1-nvidia-0"] == before["n1-nvidia-0"]
        assert api.statuses["w"]["planRevision"] == 2
        assert api.events[-1][1] == "Replanned" and "n2-amd-0" in api.events[-1][2]

    def test_a_new_generation_replans(self, controller: Controller, api: FakeAPI) -> None:
        controller.reconcile(wl_body({"tasks": 6}))
        status = api.statuses["w"]
        controller.reconcile({**wl_body({"tasks": 2}, generation=2), "status": status})
        assert api.statuses["w"]["taskCount"] == 2
        assert api.statuses["w"]["observedGeneration"] == 2

    @pytest.mark.parametrize("spec", [{"tasks": True}, {"tasks": ["a", "a"]},
                                      {"tasks": 3, "strategy": "fastest"}])
    def test_invalid_spec_is_reported_once_and_nothing_is_created(
            self, controller: Controller, api: FakeAPI, spec: dict[str, Any]) -> None:
        body = wl_body(spec)
        assert controller.reconcile(body) == "Invalid"
        status = api.statuses["w"]
        assert status["phase"] == "Invalid" and status["message"].startswith("spec.")
        assert find_condition_dict(status, "Placed")["reason"] == "InvalidSpec"
        assert api.events == [("Warning", "InvalidSpec", status["message"])]
        controller.reconcile({**body, "status": status})
        assert len(api.events) == 1 and not api.created

    def test_unschedulable_then_placed_when_a_device_arrives(
            self, controller: Controller, api: FakeAPI, view: ClusterView) -> None:
        body = wl_body({"tasks": 2, "deviceSelector": {"matchLabels": {
            "gpu.exo.dev/vendor": "apple"}}})
        assert controller.reconcile(body) == "Unschedulable"
        assert api.statuses["w"]["message"].startswith("spec.deviceSelector")
        view.apply_device(device("mac", "apple", 0, 192))
        assert controller.reconcile({**body, "status": api.statuses["w"]}) == "Placed"

    def test_one_bad_workload_does_not_stop_the_resync_of_others(
            self, controller: Controller, api: FakeAPI) -> None:
        controller.observe_workload(wl_body({"tasks": 2}, name="a", uid="ua"))
        controller.observe_workload({"metadata": {"name": "broken", "uid": "ub"}})  # no spec
        controller.observe_workload(wl_body({"tasks": 2}, name="c", uid="uc"))
        assert controller.resync_once() == 3
        assert api.statuses["a"]["phase"] == "Placed" and api.statuses["c"]["phase"] == "Placed"
        assert api.statuses["broken"]["phase"] == "Invalid"

    def test_not_leader_does_nothing(self, view: ClusterView, api: FakeAPI) -> None:
        follower = Controller(view=view, api=api, is_leader=lambda: False)  # type: ignore[arg-type]
        assert follower.reconcile(wl_body({"tasks": 2})) is None
        assert follower.check_devices_once() == 0
        assert not api.statuses and not api.events


def find_condition_dict(status: Mapping[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


class TestPods:
    def _pod(self, view: ClusterView, vendor_device: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = wl_body(spec)
        workload, _ = parse_workload(body)
        assert workload is not None
        result = plan(workload, view)
        placement = next(p for p in result.placements if p.device == vendor_device)
        return build_pod(body, workload, placement, "w-abc")

    @pytest.mark.parametrize(("device_name", "variables"), [
        ("n1-nvidia-0", {"NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"}),
        ("n2-amd-0", {"ROCR_VISIBLE_DEVICES"}),
        ("n3-intel-0", {"ZE_AFFINITY_MASK"}),
    ])
    def test_device_env_comes_from_the_uuid_annotation(
            self, view: ClusterView, device_name: str, variables: set[str]) -> None:
        pod = self._pod(view, device_name, {"tasks": 3, "template": TEMPLATE})
        for container in pod["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            for var in variables:
                assert env[var]["valueFrom"]["fieldRef"]["fieldPath"] == \
                    "metadata.annotations['gpu.exo.dev/device-uuid']"
            others = {"NVIDIA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
                      "ZE_AFFINITY_MASK"} - variables
            assert not others & set(env)
            assert env["EXO_GPU_TASKS"]["value"]

    def test_metadata_owner_limits_and_node(self, view: ClusterView) -> None:
        pod = self._pod(view, "n2-amd-0", {"tasks": 6, "minMemoryBytes": "8Gi",
                                           "template": TEMPLATE})
        meta = pod["metadata"]
        assert meta["labels"] == {"app": "train", "gpu.exo.dev/workload": "w"}
        assert meta["annotations"]["team"] == "ml"
        assert meta["annotations"]["gpu.exo.dev/workload"] == "w"
        assert meta["annotations"]["gpu.exo.dev/device"] == "n2-amd-0"
        assert meta["annotations"]["gpu.exo.dev/vendor"] == "amd"
        assert meta["annotations"]["gpu.exo.dev/min-memory"] == str(8 * 1024**3)
        tasks = meta["annotations"]["gpu.exo.dev/tasks"]
        assert tasks in ("0-1", "2-3", "4-5")
        assert pod["spec"]["containers"][0]["env"][-3]["value"] == ",".join(
            str(i) for i in range(int(tasks[0]), int(tasks[-1]) + 1))
        owner = meta["ownerReferences"][0]
        assert owner == {"apiVersion": "gpu.exo.dev/v1alpha1", "kind": "GPUWorkload",
                         "name": "w", "uid": "uid-1", "controller": True,
                         "blockOwnerDeletion": True}
        main, side = pod["spec"]["containers"]
        assert main["resources"]["limits"] == {"gpu.exo.dev/gpu": "1"}
        assert "resources" not in side
        assert {"name": "A", "value": "1"} in main["env"]
        terms = pod["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                           "values": ["n2"]}]}]
        assert pod["spec"]["restartPolicy"] == "Never"

    def test_existing_node_affinity_terms_are_narrowed_not_replaced(
            self, view: ClusterView) -> None:
        template = copy.deepcopy(TEMPLATE)
        template["spec"]["affinity"] = {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}]}}}
        template["spec"]["restartPolicy"] = "OnFailure"
        pod = self._pod(view, "n1-nvidia-0", {"tasks": 3, "template": template})
        terms = pod["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms[0]["matchExpressions"][0]["key"] == "zone"
        assert terms[0]["matchFields"][0]["values"] == ["n1"]
        assert pod["spec"]["restartPolicy"] == "OnFailure"

    def test_template_is_not_mutated(self, view: ClusterView) -> None:
        template = copy.deepcopy(TEMPLATE)
        self._pod(view, "n1-nvidia-0", {"tasks": 3, "template": template})
        assert template == TEMPLATE


class TestDeviceHealth:
    def _device(self, at: float, **kw: Any) -> GPUDevice:
        return GPUDevice.model_validate(device("n1", "nvidia", 0, 80, at=at, **kw))

    def test_heartbeat_and_staleness(self) -> None:
        dev = self._device(NOW - 100)
        assert heartbeat(dev) == pytest.approx(NOW - 100)
        assert stale_state(dev, NOW, 90) is True
        assert stale_state(dev, NOW, 120) is False
        silent = GPUDevice.model_validate({**device("n1", "nvidia", 0, 80), "status": None})
        assert stale_state(silent, NOW, 90) is None

    def test_stale_sets_stale_and_not_ready_and_resume_clears_stale(self) -> None:
        dev = self._device(NOW - 100)
        conditions = health_conditions(dev, True, NOW, 90)
        stale = find_condition(conditions, "Stale")
        ready = find_condition(conditions, "Ready")
        assert stale is not None and ready is not None
        assert (stale.status, stale.reason) == ("True", "HeartbeatMissed")
        assert (ready.status, ready.reason) == ("False", "HeartbeatLost")
        assert "100 s" in stale.message
        back = health_conditions(dev.model_copy(update={"status": dev.status.model_copy(
            update={"conditions": conditions})}), False, NOW, 90)  # type: ignore[union-attr]
        stale_again = find_condition(back, "Stale")
        assert stale_again is not None and stale_again.status == "False"

    def test_health_loop_writes_once_per_transition(self, clock: Clock) -> None:
        api = FakeAPI()
        view = ClusterView(policy=SelectionPolicy(reporting_interval_seconds=10), clock=clock)
        obj = device("n1", "nvidia", 0, 80)
        api.devices["n1-nvidia-0"] = copy.deepcopy(obj)
        view.apply_device(obj)
        controller = Controller(view=view, api=api, clock=clock)  # type: ignore[arg-type]
        assert controller.check_devices_once() == 0
        clock.now += 31
        assert controller.check_devices_once() == 1
        assert api.events[-1][1] == "HeartbeatLost"
        view.apply_device(api.devices["n1-nvidia-0"])
        assert controller.check_devices_once() == 0  # already marked
        # The exporter reports again (fresh metrics, Ready True).
        fresh = device("n1", "nvidia", 0, 80, at=clock.now)
        fresh["status"]["conditions"] = api.devices["n1-nvidia-0"]["status"]["conditions"]
        fresh["status"]["conditions"] = [c for c in fresh["status"]["conditions"]
                                         if c["type"] != "Ready"] + [
            {"type": "Ready", "status": "True", "reason": "DeviceReady", "message": "",
             "lastTransitionTime": _iso(clock.now)}]
        api.devices["n1-nvidia-0"] = copy.deepcopy(fresh)
        view.apply_device(fresh)
        assert controller.check_devices_once() == 1
        assert api.events[-1][1] == "HeartbeatResumed"
        assert api.device_writes == 2


class TestCaches:
    def test_the_echo_of_our_own_write_is_recognized(self, controller: Controller,
                                                     api: FakeAPI) -> None:
        body = wl_body({"tasks": 2})
        assert not controller.is_echo(body)
        controller.reconcile(body)
        echo = {**body, "status": copy.deepcopy(api.statuses["w"])}
        assert controller.is_echo(echo)
        assert not controller.is_echo({**wl_body({"tasks": 3}, generation=2),
                                       "status": api.statuses["w"]})
        assert not controller.is_echo({**body, "status": {**api.statuses["w"],
                                                          "phase": "Running"}})

    def test_pods_without_a_workload_owner_are_ignored(self, controller: Controller) -> None:
        assert controller.observe_pod({"metadata": {"name": "p", "uid": "x"}}, False) is None
        assert controller.observe_pod({"metadata": {"name": "p", "ownerReferences": [
            {"kind": "ReplicaSet", "uid": "rs", "controller": True}]}}, False) is None
        assert not controller.pods

    def test_index_of_a_deleted_workload_is_dropped_once_its_pods_are_gone(
            self, controller: Controller, api: FakeAPI) -> None:
        body = wl_body({"tasks": 2, "template": TEMPLATE})
        controller.observe_workload(body)
        controller.reconcile(body)
        for name in api.created:
            pod_event(controller, api, name, "Running")
        controller.forget_workload("uid-1")
        for name in api.created:  # garbage collection deletes them
            pod_event(controller, api, name, "Running")
        assert controller.pods["uid-1"]
        controller.resync_once()
        assert "uid-1" in controller.pods  # pods still there
        for name in api.created:
            pod_event(controller, api, name, None, deleted=True)
        controller.resync_once()
        assert "uid-1" not in controller.pods


@pytest.mark.parametrize("name", ["w", "x" * 63, "a" * 51 + "-" + "b" * 100])
def test_workload_label_values_are_valid(name: str) -> None:
    import re

    from exo.gpu.controller.pods import label_value

    value = label_value(name)
    assert len(value) <= 63
    assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", value)
    assert (value == name) == (len(name) <= 63)


class TestDeviceSummaries:
    """The controller writes each device's score and allocation, only when they move."""

    def test_first_pass_writes_every_device_then_nothing_until_something_moves(
            self, controller: Controller, view: ClusterView, api: FakeAPI, clock: Clock) -> None:
        assert controller.publish_summaries_once() == 3
        first = api.summaries["n1-nvidia-0"][-1]
        assert first["allocation"] == {"podCount": 0, "memoryReservedBytes": 0, "pods": []}
        assert 0 < first["score"] <= 1
        clock.now += SUMMARY_MIN_INTERVAL_S + 1
        assert controller.publish_summaries_once() == 0  # nothing moved

        view.commit(Reservation("u1", "ns/train", "n1", ("n1-nvidia-0",), 40 * 2**30))
        assert controller.publish_summaries_once() == 1
        latest = api.summaries["n1-nvidia-0"][-1]
        assert latest["allocation"] == {"podCount": 1, "memoryReservedBytes": 40 * 2**30,
                                        "pods": ["ns/train"]}
        assert latest["score"] < first["score"]  # half its memory is now promised

        view.commit(Reservation("u2", "ns/eval", "n1", ("n1-nvidia-0",), 8 * 2**30))
        assert controller.publish_summaries_once() == 0  # written less than 10 s ago
        clock.now += SUMMARY_MIN_INTERVAL_S + 1
        assert controller.publish_summaries_once() == 1
        assert api.summaries["n1-nvidia-0"][-1]["allocation"]["pods"] == ["ns/eval", "ns/train"]

    def test_followers_write_nothing(self, view: ClusterView, api: FakeAPI,
                                     clock: Clock) -> None:
        follower = Controller(view=view, api=api, clock=clock,  # type: ignore[arg-type]
                              is_leader=lambda: False)
        assert follower.publish_summaries_once() == 0
        assert api.summaries == {}


@pytest.mark.parametrize(("previous", "summary", "elapsed", "expected"), [
    (None, {"score": 0.5, "allocation": {}}, 0, True),
    ({"score": 0.5, "allocation": {}}, {"score": 0.54, "allocation": {}}, 60, False),
    ({"score": 0.5, "allocation": {}}, {"score": 0.55, "allocation": {}}, 60, True),
    ({"score": 0.5, "allocation": {}}, {"score": 0.2, "allocation": {}}, 5, False),
    ({"score": 0.5, "allocation": {"podCount": 0}}, {"score": 0.5,
                                                      "allocation": {"podCount": 1}}, 60, True),
])
def test_summary_write_rule(previous: dict[str, Any] | None, summary: dict[str, Any],
                            elapsed: float, expected: bool) -> None:
    before = None if previous is None else (previous, 100.0)
    assert summary_needs_write(summary, before, 100.0 + elapsed) is expected
