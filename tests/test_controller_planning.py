"""Placement decisions of the controller as plain data (no cluster): exo.gpu.controller.planning."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo.gpu.controller import planning
from exo.gpu.controller.planning import Plan, parse_task_text, pod_name, rollup, task_text
from exo.gpu.k8s.view import ClusterView
from exo.gpu.k8s.workload import GPUWorkload
from exo.gpu.selector import SelectionPolicy

GIB = 1024**3
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def device(node: str, vendor: str, index: int, memory_gib: int, *, used_gib: float = 0,
           util: float = 0, temp: float = 50, capacity: float = 100.0, at: float = NOW,
           ready: bool = True, cordoned: bool = False, labels: dict[str, str] | None = None,
           model: str = "H100") -> dict[str, Any]:
    name = f"{node}-{vendor}-{index}"
    stamp = _iso(at)
    return {
        "apiVersion": "gpu.exo.dev/v1alpha1", "kind": "GPUDevice",
        "metadata": {"name": name, "labels": {"gpu.exo.dev/node": node,
                                              "gpu.exo.dev/vendor": vendor,
                                              "gpu.exo.dev/model": model, **(labels or {})}},
        "spec": {"node": node, "vendor": vendor, "index": index, "uuid": f"uuid-{name}",
                 "model": model, "memoryTotalBytes": memory_gib * GIB,
                 "computeCapacity": capacity, "unschedulable": cordoned},
        "status": {
            "metrics": {"timestamp": stamp, "memoryUsedBytes": int(used_gib * GIB),
                        "computeUtilizationPercent": util, "temperatureCelsius": temp,
                        "powerWatts": 100, "clockRateMHz": 1500},
            "lastHeartbeatTime": stamp,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                            "reason": "DeviceReady" if ready else "Unhealthy", "message": "",
                            "lastTransitionTime": _iso(NOW - 1000)}]},
    }


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def workload(spec: dict[str, Any], name: str = "w") -> GPUWorkload:
    obj = {"apiVersion": "gpu.exo.dev/v1alpha1", "kind": "GPUWorkload",
           "metadata": {"name": name, "namespace": "ns", "uid": "uid-1", "generation": 1},
           "spec": spec}
    parsed, invalid = planning.parse_workload(obj)
    assert invalid is None, invalid
    assert parsed is not None
    return parsed


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fleet(clock: Clock) -> ClusterView:
    """A mixed-vendor fleet: two H100s (one half used), an MI250, a warm Arc, an M2 Ultra."""
    view = ClusterView(policy=SelectionPolicy(reporting_interval_seconds=10), clock=clock)
    for obj in (
        device("n1", "nvidia", 0, 80, capacity=400),
        device("n1", "nvidia", 1, 80, used_gib=40, util=50, capacity=400),
        device("n2", "amd", 0, 64, util=20, capacity=200),
        device("n3", "intel", 0, 16, temp=85, capacity=50, model="Arc-A770"),
        device("n4", "apple", 0, 192, util=10, capacity=100, model="M2-Ultra"),
    ):
        assert view.apply_device(obj) is not None
    return view


def devices_of(plan: Plan) -> dict[str, int]:
    return {p.device: len(p.tasks) for p in plan.placements}


# ------------------------------------------------------------------------------ placing


class TestPlacement:
    def test_uniform_spreads_evenly_and_gives_extras_to_the_best_scored(
            self, fleet: ClusterView) -> None:
        plan = planning.plan(workload({"tasks": 12}), fleet)
        assert plan.phase == "Placed" and plan.reason == "Placed"
        counts = devices_of(plan)
        assert sorted(counts.values()) == [2, 2, 2, 3, 3]
        by_score = sorted(plan.placements, key=lambda p: -p.score)
        assert [len(p.tasks) for p in by_score] == [3, 3, 2, 2, 2]
        # Each device holds a contiguous run, the runs in device order cover every task once.
        flat = [t for p in plan.placements for t in p.tasks]
        assert flat == [str(i) for i in range(12)]

    def test_breakdown_matches_the_score_and_the_hot_device_is_penalized(
            self, fleet: ClusterView) -> None:
        plan = planning.plan(workload({"tasks": 5}), fleet)
        for p in plan.placements:
            assert p.score == pytest.approx(max(0.0, p.memory + p.compute - p.thermal))
        hot = next(p for p in plan.placements if p.device == "n3-intel-0")
        assert hot.thermal == pytest.approx(0.5 * (85 - 75) / 15)
        cool = next(p for p in plan.placements if p.device == "n1-nvidia-0")
        assert cool.thermal == 0 and cool.score == pytest.approx(1.0)

    def test_capacity_strategy_follows_the_device_capacities(self, fleet: ClusterView) -> None:
        plan = planning.plan(workload({"tasks": 75, "strategy": "capacity"}), fleet)
        counts = devices_of(plan)
        # Weights 400, 400, 200, 100, 50 out of 1150 -> 26.1, 26.1, 13.0, 6.5, 3.3.
        assert counts["n1-nvidia-0"] == counts["n1-nvidia-1"] == 26
        assert counts["n2-amd-0"] == 13
        assert counts["n4-apple-0"] in (6, 7) and counts["n3-intel-0"] in (3, 4)
        assert sum(counts.values()) == 75
        assert {p.device: p.weight for p in plan.placements}["n2-amd-0"] == 200

    def test_explicit_capacities_use_only_the_named_devices(self, fleet: ClusterView) -> None:
        plan = planning.plan(workload({"tasks": 9, "strategy": "capacity",
                                       "capacities": {"n2-amd-0": 2, "n4-apple-0": 1}}), fleet)
        assert devices_of(plan) == {"n2-amd-0": 6, "n4-apple-0": 3}

    @pytest.mark.parametrize("cap", [1, 2, 3])
    def test_caps_are_respected(self, fleet: ClusterView, cap: int) -> None:
        plan = planning.plan(workload({"tasks": 5 * cap, "strategy": "capacity",
                                       "maxTasksPerDevice": cap}), fleet)
        assert plan.placed
        assert max(devices_of(plan).values()) <= cap
        assert sum(devices_of(plan).values()) == 5 * cap

    def test_task_list_keeps_its_ids_and_order(self, fleet: ClusterView) -> None:
        ids = ["prefill", "decode-a", "decode-b", "embed"]
        plan = planning.plan(workload({"tasks": ids}), fleet)
        assert [t for p in plan.placements for t in p.tasks] == ids
        assert plan.placements[0].tasks_text == "prefill"

    @pytest.mark.parametrize(("selector", "expected"), [
        ({"matchLabels": {"gpu.exo.dev/vendor": "nvidia"}}, {"n1-nvidia-0", "n1-nvidia-1"}),
        ({"matchExpressions": [{"key": "gpu.exo.dev/vendor", "operator": "In",
                                "values": ["amd", "apple"]}]}, {"n2-amd-0", "n4-apple-0"}),
        ({"matchExpressions": [{"key": "gpu.exo.dev/vendor", "operator": "NotIn",
                                "values": ["nvidia", "intel"]}]}, {"n2-amd-0", "n4-apple-0"}),
        ({"matchLabels": {"gpu.exo.dev/node": "n1"}}, {"n1-nvidia-0", "n1-nvidia-1"}),
    ])
    def test_device_selector(self, fleet: ClusterView, selector: dict[str, Any],
                             expected: set[str]) -> None:
        plan = planning.plan(workload({"tasks": 4, "deviceSelector": selector}), fleet)
        assert set(devices_of(plan)) == expected

    def test_min_memory_excludes_devices_without_enough_free_memory(
            self, fleet: ClusterView) -> None:
        plan = planning.plan(workload({"tasks": 10, "minMemoryBytes": "50Gi"}), fleet)
        # n1-nvidia-1 has 40 GiB free, the Arc 16 GiB: both out.
        assert set(devices_of(plan)) == {"n1-nvidia-0", "n2-amd-0", "n4-apple-0"}

    def test_same_inputs_same_plan(self, fleet: ClusterView) -> None:
        spec = {"tasks": 17, "strategy": "capacity", "maxTasksPerDevice": 6}
        assert planning.plan(workload(spec), fleet) == planning.plan(workload(spec), fleet)

    def test_ineligible_devices_take_no_part(self, clock: Clock) -> None:
        view = ClusterView(policy=SelectionPolicy(reporting_interval_seconds=10), clock=clock)
        view.apply_device(device("a", "nvidia", 0, 80))
        view.apply_device(device("b", "nvidia", 0, 80, cordoned=True))
        view.apply_device(device("c", "nvidia", 0, 80, ready=False))
        view.apply_device(device("d", "nvidia", 0, 80, temp=95))
        view.apply_device(device("e", "nvidia", 0, 80, at=NOW - 60))
        plan = planning.plan(workload({"tasks": 4}), view)
        assert devices_of(plan) == {"a-nvidia-0": 4}


# ------------------------------------------------------------------------------ bad input


class TestBadInput:
    @pytest.mark.parametrize(("spec", "field"), [
        ({"tasks": 0}, "spec.tasks"),
        ({"tasks": -1}, "spec.tasks"),
        ({"tasks": []}, "spec.tasks"),
        ({"tasks": True}, "spec.tasks"),
        ({"tasks": "five"}, "spec.tasks"),
        ({"tasks": ["a", "b", "a"]}, "spec.tasks"),
        ({"tasks": ["has space"]}, "spec.tasks"),
        ({"tasks": 4, "strategy": "fastest"}, "spec.strategy"),
        ({"tasks": 4, "maxTasksPerDevice": 0}, "spec.maxTasksPerDevice"),
        ({"tasks": 4, "minMemoryBytes": "lots"}, "spec.minMemoryBytes"),
        ({"tasks": 4, "minMemoryBytes": -1}, "spec.minMemoryBytes"),
        ({"tasks": 4, "strategy": "capacity", "capacities": {"a": 0}}, "spec.capacities"),
        ({"tasks": 4, "template": {"spec": {"containers": []}}}, "spec.template"),
        ({"tasks": 4, "deviceSelector": {"matchExpressions": [
            {"key": "k", "operator": "In"}]}}, "spec.deviceSelector"),
    ])
    def test_invalid_specs_become_an_invalid_plan_naming_the_field(
            self, spec: dict[str, Any], field: str) -> None:
        obj = {"metadata": {"name": "w", "namespace": "ns"}, "spec": spec}
        parsed, plan = planning.parse_workload(obj)
        assert parsed is None and plan is not None
        assert plan.phase == "Invalid" and plan.reason == "InvalidSpec"
        assert plan.message.startswith(field), plan.message
        assert not plan.placements

    def test_capacities_naming_unknown_devices(self, fleet: ClusterView) -> None:
        plan = planning.plan(workload({"tasks": 4, "strategy": "capacity",
                                       "capacities": {"n2-amd-0": 1, "ghost-0": 2}}), fleet)
        assert (plan.phase, plan.reason) == ("Unschedulable", "UnknownDevice")
        assert "ghost-0" in plan.message and not plan.placements

    def test_min_memory_above_every_device(self, fleet: ClusterView) -> None:
        plan = planning.plan(workload({"tasks": 4, "minMemoryBytes": "500Gi"}), fleet)
        assert (plan.phase, plan.reason) == ("Unschedulable", "InsufficientMemory")
        assert "500Gi" in plan.message and "192.0 GiB on n4-apple-0" in plan.message

    def test_selector_matching_nothing(self, fleet: ClusterView) -> None:
        plan = planning.plan(workload({"tasks": 4, "deviceSelector": {
            "matchLabels": {"gpu.exo.dev/vendor": "qualcomm"}}}), fleet)
        assert (plan.phase, plan.reason) == ("Unschedulable", "NoDeviceMatchesSelector")
        assert "gpu.exo.dev/vendor=qualcomm" in plan.message

    def test_caps_that_cannot_hold_every_task_name_the_shortfall(
            self, fleet: ClusterView) -> None:
        plan = planning.plan(workload({"tasks": 12, "maxTasksPerDevice": 2}), fleet)
        assert (plan.phase, plan.reason) == ("Unschedulable", "CapsTooLow")
        assert "2 task(s) short" in plan.message and not plan.placements

    def test_no_devices_at_all(self, clock: Clock) -> None:
        plan = planning.plan(workload({"tasks": 3}), ClusterView(clock=clock))
        assert (plan.phase, plan.reason) == ("Unschedulable", "NoDevices")

    def test_every_device_stale_says_so(self, clock: Clock) -> None:
        view = ClusterView(policy=SelectionPolicy(reporting_interval_seconds=10), clock=clock)
        view.apply_device(device("a", "nvidia", 0, 80))
        view.apply_device(device("b", "amd", 0, 80))
        clock.now += 31
        plan = planning.plan(workload({"tasks": 3}), view)
        assert (plan.phase, plan.reason) == ("Unschedulable", "NoEligibleDevice")
        assert "2 Stale" in plan.message


# ------------------------------------------------------------------------------ replanning


def _refresh(view: ClusterView, clock: Clock, skip: set[str], **changes: Any) -> None:
    """Every device reports again at the current time, except those in ``skip``."""
    for name, dev in list(view.devices.items()):
        if name in skip:
            continue
        obj = dev.model_dump(by_alias=True, mode="json", exclude_none=True)
        obj["status"]["metrics"]["timestamp"] = _iso(clock.now)
        obj["status"]["lastHeartbeatTime"] = _iso(clock.now)
        obj["status"]["metrics"].update(changes)
        view.apply_device(obj)


class TestReplanning:
    def test_healthy_placements_are_kept_even_when_scores_move(
            self, fleet: ClusterView, clock: Clock) -> None:
        wl = workload({"tasks": 10})
        first = planning.plan(wl, fleet)
        clock.now += 5
        _refresh(fleet, clock, set(), computeUtilizationPercent=90)
        again = planning.plan(wl, fleet, [p.to_status() for p in first.placements])
        assert again.mode == "kept"
        assert [(p.device, p.tasks) for p in again.placements] == \
            [(p.device, p.tasks) for p in first.placements]

    def test_a_stale_device_moves_only_its_tasks_to_an_unused_device(
            self, fleet: ClusterView, clock: Clock) -> None:
        wl = workload({"tasks": 6, "deviceSelector": {"matchExpressions": [
            {"key": "gpu.exo.dev/vendor", "operator": "NotIn", "values": ["apple"]}]}})
        first = planning.plan(wl, fleet)
        assert set(devices_of(first)) == {"n1-nvidia-0", "n1-nvidia-1", "n2-amd-0",
                                          "n3-intel-0"}
        # Let the apple take part now (new label), and let n2-amd-0 go silent.
        clock.now += 31
        _refresh(fleet, clock, {"n2-amd-0"})
        relabelled = fleet.devices["n4-apple-0"].model_dump(by_alias=True, mode="json",
                                                            exclude_none=True)
        wl2 = workload({"tasks": 6})  # same tasks, no selector: the apple is eligible
        fleet.apply_device(relabelled)
        again = planning.plan(wl2, fleet, [p.to_status() for p in first.placements])
        assert again.mode == "partial" and again.reason == "Replanned"
        assert set(again.failed_devices) == {"n2-amd-0"}
        assert again.failed_devices["n2-amd-0"].startswith("Stale")
        before = {p.device: p.tasks for p in first.placements}
        after = {p.device: p.tasks for p in again.placements}
        assert after["n4-apple-0"] == before["n2-amd-0"]
        for name in ("n1-nvidia-0", "n1-nvidia-1", "n3-intel-0"):
            assert after[name] == before[name]

    def test_without_a_free_device_orphans_merge_into_healthy_ones_under_the_cap(
            self, clock: Clock) -> None:
        view = ClusterView(policy=SelectionPolicy(reporting_interval_seconds=10), clock=clock)
        for node in ("a", "b", "c"):
            view.apply_device(device(node, "nvidia", 0, 80))
        wl = workload({"tasks": 6, "maxTasksPerDevice": 3})
        first = planning.plan(wl, view)
        assert sorted(devices_of(first).values()) == [2, 2, 2]
        clock.now += 31
        _refresh(view, clock, {"b-nvidia-0"})
        again = planning.plan(wl, view, [p.to_status() for p in first.placements])
        assert again.mode == "partial"
        assert devices_of(again) == {"a-nvidia-0": 3, "c-nvidia-0": 3}
        assert sorted(t for p in again.placements for t in p.tasks) == sorted(
            str(i) for i in range(6))

    def test_when_nothing_else_fits_the_whole_workload_is_replanned(
            self, clock: Clock) -> None:
        view = ClusterView(policy=SelectionPolicy(reporting_interval_seconds=10), clock=clock)
        for node in ("a", "b"):
            view.apply_device(device(node, "nvidia", 0, 80))
        wl = workload({"tasks": 4, "maxTasksPerDevice": 2})
        first = planning.plan(wl, view)
        clock.now += 31
        _refresh(view, clock, {"b-nvidia-0"})
        again = planning.plan(wl, view, [p.to_status() for p in first.placements])
        assert again.phase == "Unschedulable" and again.reason == "CapsTooLow"
        assert set(again.failed_devices) == {"b-nvidia-0"}

    def test_a_deleted_device_counts_as_failed(self, fleet: ClusterView) -> None:
        wl = workload({"tasks": 5})
        first = planning.plan(wl, fleet)
        fleet.remove_device("n4-apple-0")
        again = planning.plan(wl, fleet, [p.to_status() for p in first.placements])
        assert again.failed_devices["n4-apple-0"].startswith("DeviceGone")
        assert "n4-apple-0" not in devices_of(again)
        assert sum(devices_of(again).values()) == 5

    def test_a_cordon_does_not_evict(self, fleet: ClusterView) -> None:
        wl = workload({"tasks": 5})
        first = planning.plan(wl, fleet)
        obj = fleet.devices["n2-amd-0"].model_dump(by_alias=True, mode="json",
                                                   exclude_none=True)
        obj["spec"]["unschedulable"] = True
        fleet.apply_device(obj)
        again = planning.plan(wl, fleet, [p.to_status() for p in first.placements])
        assert again.mode == "kept"


# ------------------------------------------------------------------------------ helpers


class TestHelpers:
    @given(st.integers(min_value=0, max_value=500), st.integers(min_value=1, max_value=300))
    @settings(max_examples=100, deadline=None)
    def test_counted_runs_round_trip(self, start: int, length: int) -> None:
        tasks = [str(i) for i in range(start, start + length)]
        text = task_text(tasks, counted=True)
        assert "," not in text
        assert parse_task_text(text, counted=True) == tasks

    @given(st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}[A-Za-z0-9]", fullmatch=True),
                    min_size=1, max_size=20, unique=True))
    @settings(max_examples=100, deadline=None)
    def test_id_lists_round_trip(self, ids: list[str]) -> None:
        assert parse_task_text(task_text(ids, counted=False), counted=False) == ids

    def test_non_contiguous_counted_tasks_are_listed(self) -> None:
        assert task_text(["1", "3", "4"], counted=True) == "1,3,4"
        assert parse_task_text("1,3,4", counted=True) == ["1", "3", "4"]

    def test_pod_names_are_deterministic_and_distinct(self) -> None:
        assert pod_name("w", "dev-0", "0-3") == pod_name("w", "dev-0", "0-3")
        assert pod_name("w", "dev-0", "0-3") != pod_name("w", "dev-0", "0-4")
        assert pod_name("w", "dev-0", "0-3") != pod_name("w", "dev-1", "0-3")
        assert len(pod_name("x" * 253, "d", "1")) <= 253

    @pytest.mark.parametrize(("phases", "expected"), [
        ([], "Placed"),
        ([None, "Running"], "Placed"),
        (["Pending", "Running"], "Placed"),
        (["Running", "Running"], "Running"),
        (["Running", "Succeeded"], "Running"),
        (["Succeeded", "Succeeded"], "Succeeded"),
        (["Succeeded", "Failed", "Running"], "Failed"),
    ])
    def test_rollup(self, phases: list[str | None], expected: str) -> None:
        phase, message = rollup(phases)
        assert phase == expected
        if phases:
            assert message.startswith("pods: ")
