"""The controller's reconcile decision (exo.gpu.controller.reconcile.decide) as tables, and the
holds plans record in the ledger (no cluster)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from exo.gpu.controller import planning
from exo.gpu.controller.controller import Controller
from exo.gpu.controller.reasons import ConditionType, EventType, Reason, WorkloadPhase
from exo.gpu.controller.reconcile import PodInfo, decide
from exo.gpu.fit import FitReason
from exo.gpu.k8s.view import ClusterView, Reservation
from exo.gpu.k8s.workload import PHASES
from exo.gpu.selector import SelectionPolicy
from test_controller_handlers import TEMPLATE, FakeAPI, wl_body
from test_controller_planning import Clock, device

GIB = 1024**3
MOMENT = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def view(clock: Clock) -> ClusterView:
    view = ClusterView(policy=SelectionPolicy(reporting_interval_seconds=10), clock=clock)
    view.apply_device(device("n1", "nvidia", 0, 80))
    view.apply_device(device("n2", "amd", 0, 64))
    return view


def names_of(decision: Any) -> list[str]:
    return [name for name, _ in decision.create]


def first(view: ClusterView, spec: dict[str, Any]) -> Any:
    with view.lock:
        return decide(wl_body(spec), {}, {}, view, MOMENT)


class TestDecide:
    def test_phases_enum_is_the_schema_s(self) -> None:
        assert tuple(p.value for p in WorkloadPhase) == PHASES

    def test_invalid_spec(self, view: ClusterView) -> None:
        decision = first(view, {"tasks": True})
        assert decision.phase is WorkloadPhase.INVALID
        assert decision.status is not None and decision.status["message"].startswith("spec.tasks")
        assert [(e.type, e.reason) for e in decision.events] == [
            (EventType.WARNING, Reason.INVALID_SPEC)]
        assert not decision.create and not decision.delete and not decision.holds

    # spec, pods created, holds (device -> GiB), conditions
    @pytest.mark.parametrize(("spec", "pods", "holds", "pods_ready"), [
        ({"tasks": 2}, 0, {}, None),
        ({"tasks": 2, "template": TEMPLATE}, 2, {"n1-nvidia-0": 80, "n2-amd-0": 64},
         Reason.PODS_PENDING),
        ({"tasks": 2, "minMemoryBytes": "8Gi", "template": TEMPLATE}, 2,
         {"n1-nvidia-0": 8, "n2-amd-0": 8}, Reason.PODS_PENDING),
        ({"tasks": 4, "maxTasksPerDevice": 1, "template": TEMPLATE}, 0, {}, None),
    ])
    def test_first_reconcile(self, view: ClusterView, spec: dict[str, Any], pods: int,
                             holds: dict[str, int], pods_ready: Reason | None) -> None:
        decision = first(view, spec)
        assert len(decision.create) == pods
        assert decision.holds == {d: gib * GIB for d, gib in holds.items()}
        assert decision.status is not None
        conditions = {c["type"]: c for c in decision.status["conditions"]}
        if pods_ready is None:
            assert ConditionType.PODS_READY not in conditions
        else:
            assert conditions[ConditionType.PODS_READY]["reason"] == pods_ready
        if decision.phase is WorkloadPhase.PLACED:
            assert [e.reason for e in decision.events] == [Reason.PLACED]
        else:  # 4 tasks at most one per device on two devices
            assert decision.phase is WorkloadPhase.UNSCHEDULABLE
            assert conditions[ConditionType.PLACED]["reason"] == Reason.CAPS_TOO_LOW

    @pytest.mark.parametrize(("phases", "phase", "held"), [
        (["Pending", "Pending"], WorkloadPhase.PLACED, 2),
        (["Running", "Running"], WorkloadPhase.RUNNING, 2),
        (["Succeeded", "Running"], WorkloadPhase.RUNNING, 1),
        (["Succeeded", "Succeeded"], WorkloadPhase.SUCCEEDED, 0),
        (["Failed", "Running"], WorkloadPhase.FAILED, 0),
    ])
    def test_pod_phases_roll_up_and_finished_pods_hold_nothing(
            self, view: ClusterView, phases: list[str], phase: WorkloadPhase,
            held: int) -> None:
        body = wl_body({"tasks": 2, "template": TEMPLATE})
        created = first(view, {"tasks": 2, "template": TEMPLATE})
        pods = {name: PodInfo(f"uid-{name}", p, False)
                for (name, _), p in zip(created.create, phases, strict=True)}
        with view.lock:
            decision = decide(body, created.status, pods, view, MOMENT)
        assert decision.phase is phase
        assert not decision.create and not decision.delete
        assert len(decision.holds) == held

    def test_nothing_changed_writes_nothing(self, view: ClusterView) -> None:
        body = wl_body({"tasks": 2, "template": TEMPLATE})
        created = first(view, {"tasks": 2, "template": TEMPLATE})
        pods = {name: PodInfo(f"uid-{name}", "Pending", False) for name, _ in created.create}
        with view.lock:
            pending = decide(body, created.status, pods, view, MOMENT)
            again = decide(body, pending.status or {}, pods, view, MOMENT)
        assert pending.status is not None and "2 Pending" in pending.status["message"]
        assert pending.events == ()  # same plan, same phase: no Event
        assert again.status is None and again.events == ()
        assert again.holds == created.holds

    def test_terminal_phase_is_final_for_the_generation(self, view: ClusterView) -> None:
        body = wl_body({"tasks": 2})
        status = {"phase": "Succeeded", "observedGeneration": 1}
        with view.lock:
            decision = decide(body, status, {}, view, MOMENT)
        assert decision.phase is WorkloadPhase.SUCCEEDED
        assert decision.status is None and not decision.holds and decision.plan is None

    def test_a_pod_being_deleted_is_neither_deleted_again_nor_counted(
            self, view: ClusterView) -> None:
        body = wl_body({"tasks": 2, "template": TEMPLATE})
        created = first(view, {"tasks": 2, "template": TEMPLATE})
        (gone, _), (alive, _) = created.create
        pods = {gone: PodInfo("u1", "Running", True), alive: PodInfo("u2", "Running", False),
                "stray": PodInfo("u3", "Running", False)}
        with view.lock:
            decision = decide(body, created.status, pods, view, MOMENT)
        assert decision.delete == (("stray", "u3"),)
        assert decision.phase is WorkloadPhase.PLACED  # one of two pods running
        assert len(decision.holds) == 2  # the deleted pod comes back: its device stays held


class TestHolds:
    """Plans hold memory in the ledger, and nothing else plans or binds it."""

    @pytest.fixture
    def one_device(self, clock: Clock) -> ClusterView:
        view = ClusterView(policy=SelectionPolicy(reporting_interval_seconds=10), clock=clock)
        view.apply_device(device("n1", "nvidia", 0, 80))
        return view

    def test_two_workloads_never_plan_the_same_memory(self, one_device: ClusterView) -> None:
        api = FakeAPI()
        controller = Controller(view=one_device, api=api)  # type: ignore[arg-type]
        spec = {"tasks": 1, "minMemoryBytes": "48Gi", "template": TEMPLATE}
        assert controller.reconcile(wl_body(spec, name="a", uid="ua")) == "Placed"
        assert one_device.reserved_by_device == {"n1-nvidia-0": 48 * GIB}
        assert controller.reconcile(wl_body(spec, name="b", uid="ub")) == "Unschedulable"
        status = api.statuses["b"]
        placed = next(c for c in status["conditions"] if c["type"] == "Placed")
        assert placed["reason"] == "InsufficientMemory"
        assert "32.0 GiB on n1-nvidia-0" in status["message"]
        assert len(api.created) == 1
        # a pod without a workload cannot take the planned memory either
        from exo.gpu.extender.filter import fit_request
        from exo.gpu.extender.wire import PodRequest

        stray = PodRequest("ns", "stray", "us", 1, 48 * GIB, None, None, None)
        choice = one_device.state.choose("n1", fit_request(stray), one_device.clock())
        assert not choice.devices
        assert choice.rejections[0].reason is FitReason.INSUFFICIENT_MEMORY
        # the workload is deleted: its hold goes, b is placed
        controller.forget_workload("ua")
        assert one_device.reserved_by_device == {}
        assert controller.reconcile(wl_body(spec, name="b", uid="ub")) == "Placed"

    def test_racing_reconciles_never_both_place(self, one_device: ClusterView) -> None:
        api = FakeAPI()
        controller = Controller(view=one_device, api=api)  # type: ignore[arg-type]
        spec = {"tasks": 1, "template": TEMPLATE}  # whole device each
        barrier = threading.Barrier(8)
        phases: dict[str, str | None] = {}

        def run(i: int) -> None:
            barrier.wait()
            phases[f"w{i}"] = controller.reconcile(wl_body(spec, name=f"w{i}", uid=f"u{i}"))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(phases.values()) == ["Placed"] + ["Unschedulable"] * 7
        assert one_device.reserved_by_device == {"n1-nvidia-0": 80 * GIB}

    def test_a_whole_device_pod_keeps_other_workloads_off_its_device(
            self, view: ClusterView) -> None:
        """A pod without min-memory bound to a device holds all of it: the planner places
        nothing there (it used to, and those pods stayed Pending)."""
        view.commit(Reservation("p", "ns/p", "n1", ("n1-nvidia-0",), 80 * GIB))
        for spec, devices in (
                ({"tasks": 3, "template": TEMPLATE}, {"n2-amd-0"}),
                ({"tasks": 3, "minMemoryBytes": "1Gi", "template": TEMPLATE}, {"n2-amd-0"}),
                ({"tasks": 3, "minMemoryBytes": "1Gi"}, {"n2-amd-0"}),
                # no template, no size: no pod will ask for anything, as before
                ({"tasks": 3}, {"n1-nvidia-0", "n2-amd-0"})):
            workload, _ = planning.parse_workload(wl_body(spec))
            assert workload is not None
            result = planning.plan(workload, view)
            assert {p.device for p in result.placements} == devices, spec

    def test_a_pod_of_the_workload_takes_over_its_plan_s_hold(self, view: ClusterView) -> None:
        api = FakeAPI()
        controller = Controller(view=view, api=api)  # type: ignore[arg-type]
        body = wl_body({"tasks": 1, "maxTasksPerDevice": 1, "deviceSelector": {
            "matchLabels": {"gpu.exo.dev/vendor": "nvidia"}}, "template": TEMPLATE})
        controller.reconcile(body)
        (name,) = api.created
        assert view.reserved_by_device == {"n1-nvidia-0": 80 * GIB}
        pod = dict(api.pods[name])
        pod["metadata"] = {**pod["metadata"], "uid": "pod-uid"}
        view.apply_pod(pod)  # pending, planned on n1: counts once
        assert view.reserved_by_device == {"n1-nvidia-0": 80 * GIB}
        from exo.gpu.extender.bind import reserve
        from exo.gpu.extender.wire import parse_pod

        request = parse_pod(pod)
        decision = reserve(view, request, "n1", view.clock())  # the workload's own memory
        assert decision.reservation.devices == ("n1-nvidia-0",)
        assert view.reserved_by_device == {"n1-nvidia-0": 80 * GIB}
        view.release("pod-uid")  # the pod ended: the plan still holds until it is told
        assert view.reserved_by_device == {"n1-nvidia-0": 80 * GIB}
        controller.forget_workload("uid-1")
        assert view.reserved_by_device == {}

    def test_reconciling_an_unchanged_plan_moves_nothing(self, view: ClusterView) -> None:
        controller = Controller(view=view, api=FakeAPI())  # type: ignore[arg-type]
        body = wl_body({"tasks": 2, "template": TEMPLATE})
        controller.reconcile(body)
        generation = view.generation
        controller.reconcile(body)  # same holds: cached extender verdicts stay valid
        assert view.generation == generation

    def test_a_new_leadership_term_releases_holds_it_never_recorded(
            self, view: ClusterView) -> None:
        first = Controller(view=view, api=FakeAPI())  # type: ignore[arg-type]
        first.reconcile(wl_body({"tasks": 1, "template": TEMPLATE}))
        assert view.reserved_by_device
        second = Controller(view=view, api=FakeAPI())  # type: ignore[arg-type]
        second.forget_workload("uid-1", "ns/w")  # the deletion event names the workload
        assert view.reserved_by_device == {}
