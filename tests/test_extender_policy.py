"""Filter, prioritize and bind decisions over a ClusterView, without a cluster."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo.gpu.extender.bind import BindError, reserve
from exo.gpu.extender.filter import filter_nodes
from exo.gpu.extender.prioritize import prioritize_nodes
from exo.gpu.extender.wire import PodRequest
from exo.gpu.k8s.models import (
    Condition,
    DeviceMetrics,
    GPUDevice,
    GPUDeviceStatus,
    to_time,
)
from exo.gpu.k8s.view import ClusterView, Reservation
from exo.gpu.selector import extender_score, score_device
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

GIB = 1024**3
NOW = 1_790_000_000.0


def device(node: str, index: int, *, vendor: str = "nvidia", total: int = 80 * GIB,
           used: int = 0, util: float = 0.0, temp: float | None = 50.0, age: float = 0.0,
           ready: bool = True, cordoned: bool = False, metrics: bool = True) -> dict[str, Any]:
    info = GPUDeviceInfo(device_id="x", vendor=Vendor(vendor), name="Test GPU",
                         memory_total_bytes=total, uuid=f"UUID-{node}-{index}")
    obj = GPUDevice.from_info(info, node, index, 100.0)
    obj.spec.unschedulable = cordoned
    status = GPUDeviceStatus(conditions=[Condition(
        type="Ready", status="True" if ready else "False",
        reason="Reporting" if ready else "BackendError", message="",
        last_transition_time=to_time(NOW))])
    if metrics:
        status.metrics = DeviceMetrics.from_sample(GPUMetrics(
            device_id="x", timestamp=NOW - age, memory_used_bytes=used,
            memory_total_bytes=total, compute_utilization_percent=util, power_watts=100,
            temperature_celsius=temp, clock_rate_mhz=1500))
    obj.status = status
    return obj.to_api()


def pod(uid: str = "u1", *, gpus: int = 1, min_memory: int | None = 10 * GIB,
        vendor: str | None = None, planned: str | None = None) -> PodRequest:
    return PodRequest(namespace="ns", name=f"pod-{uid}", uid=uid, gpus=gpus,
                      min_memory_bytes=min_memory, vendor=vendor, planned_device=planned,
                      workload=None)


def view_of(*objects: dict[str, Any]) -> ClusterView:
    view = ClusterView(clock=lambda: NOW)
    for obj in objects:
        assert view.apply_device(obj) is not None
    return view


class TestFilter:
    @pytest.mark.parametrize(("obj", "fits", "resolvable", "reason"), [
        (device("n", 0), True, None, None),
        (device("n", 0, cordoned=True), False, False, "Cordoned"),
        (device("n", 0, ready=False), False, False, "NotReady"),
        (device("n", 0, metrics=False), False, False, "NoMetrics"),
        (device("n", 0, temp=90), False, False, "TooHot"),
        (device("n", 0, temp=89), True, None, None),
        (device("n", 0, temp=None), True, None, None),  # not exposed: never TooHot
        (device("n", 0, age=91), False, False, "Stale"),
        (device("n", 0, age=89), True, None, None),
        (device("n", 0, vendor="amd"), False, False, "VendorMismatch"),
        (device("n", 0, used=75 * GIB), False, True, "InsufficientMemory"),
        (device("n", 0, total=8 * GIB), False, False, "TooSmall"),
    ])
    def test_single_device_node(self, obj: dict[str, Any], fits: bool,
                                resolvable: bool | None, reason: str | None) -> None:
        view = view_of(obj)
        outcome = filter_nodes(view, pod(vendor="nvidia"), ["n"], NOW)
        assert (outcome.passed == ["n"]) is fits
        if not fits:
            failures = outcome.failed if resolvable else outcome.unresolvable
            assert reason is not None and reason in failures["n"]
            assert "n" not in (outcome.unresolvable if resolvable else outcome.failed)

    def test_unknown_node_is_unresolvable(self) -> None:
        outcome = filter_nodes(view_of(device("n", 0)), pod(), ["other"], NOW)
        assert "no GPU devices known" in outcome.unresolvable["other"]

    def test_reservations_count_against_free_memory(self) -> None:
        view = view_of(device("n", 0, total=40 * GIB))
        view.commit(Reservation("held", "ns/held", "n", ("n-nvidia-0",), 35 * GIB))
        outcome = filter_nodes(view, pod(min_memory=10 * GIB), ["n"], NOW)
        assert "InsufficientMemory (5.0 GiB free" in outcome.failed["n"]
        view.release("held")
        assert filter_nodes(view, pod(min_memory=10 * GIB), ["n"], NOW).passed == ["n"]

    def test_whole_device_pod_needs_a_device_nobody_holds(self) -> None:
        view = view_of(device("n", 0))
        view.commit(Reservation("held", "ns/held", "n", ("n-nvidia-0",), 1 * GIB))
        outcome = filter_nodes(view, pod(min_memory=None), ["n"], NOW)
        assert "InUse" in outcome.failed["n"]

    def test_planned_device_holds_a_workload_pod(self) -> None:
        view = view_of(device("a", 0), device("b", 0, used=70 * GIB))
        outcome = filter_nodes(view, pod(planned="b-nvidia-0", min_memory=GIB), ["a", "b"], NOW)
        assert outcome.passed == ["b"]
        assert "NotPlanned" in outcome.unresolvable["a"]

    def test_multi_gpu_pod_needs_that_many_devices(self) -> None:
        view = view_of(device("n", 0), device("n", 1), device("m", 0))
        outcome = filter_nodes(view, pod(gpus=2), ["n", "m"], NOW)
        assert outcome.passed == ["n"]
        assert outcome.unresolvable["m"].startswith("exo-gpu: 1 of 2 requested GPUs eligible")

    def test_message_is_bounded_for_big_nodes(self) -> None:
        view = view_of(*(device("n", i, temp=95) for i in range(8)))
        message = filter_nodes(view, pod(), ["n"], NOW).unresolvable["n"]
        assert message.count("TooHot") == 3
        assert message.endswith("and 5 more")


class TestPrioritize:
    def test_node_scores_its_best_eligible_device(self) -> None:
        view = view_of(device("n", 0, util=90, used=60 * GIB), device("n", 1, util=20),
                       device("m", 0, temp=95))
        scores = prioritize_nodes(view, pod(), ["n", "m"], NOW)
        expected = score_device(80 * GIB, 0, 20.0, 50.0).total
        assert scores == {"n": extender_score(expected), "m": 0}

    def test_score_table(self) -> None:
        # Cooler and emptier wins: free memory and headroom raise it, heat lowers it.
        view = view_of(device("cool", 0, util=10, temp=50), device("warm", 0, util=10, temp=85),
                       device("full", 0, util=10, used=70 * GIB))
        scores = prioritize_nodes(view, pod(min_memory=GIB), ["cool", "warm", "full"], NOW)
        assert scores["cool"] > scores["full"]
        assert scores["cool"] > scores["warm"]
        assert all(0 <= s <= 10 for s in scores.values())


class TestReserve:
    def test_picks_the_best_device_and_commits(self) -> None:
        view = view_of(device("n", 0, util=80), device("n", 1, util=10))
        decision = reserve(view, pod(min_memory=8 * GIB), "n", NOW)
        assert decision.reservation.devices == ("n-nvidia-1",)
        assert decision.uuids == ("UUID-n-1",)
        assert view.reserved_by_device == {"n-nvidia-1": 8 * GIB}
        assert decision.annotations()["gpu.exo.dev/reserved-memory"] == str(8 * GIB)

    def test_retry_on_the_same_node_keeps_the_choice(self) -> None:
        view = view_of(device("n", 0), device("n", 1))
        first = reserve(view, pod(min_memory=8 * GIB), "n", NOW)
        again = reserve(view, pod(min_memory=8 * GIB), "n", NOW)
        assert again.reservation == first.reservation
        assert sum(view.reserved_by_device.values()) == 8 * GIB

    def test_whole_device_pod_reserves_all_of_it(self) -> None:
        view = view_of(device("n", 0, total=24 * GIB))
        reserve(view, pod(min_memory=None), "n", NOW)
        assert view.reserved_by_device == {"n-nvidia-0": 24 * GIB}
        with pytest.raises(BindError, match="no eligible GPU left on n"):
            reserve(view, pod("u2", min_memory=GIB), "n", NOW)

    def test_racing_threads_never_overcommit(self) -> None:
        view = view_of(device("n", 0, total=40 * GIB), device("n", 1, total=40 * GIB))
        results: list[str] = []
        barrier = threading.Barrier(16)

        def worker(i: int) -> None:
            barrier.wait()
            try:
                reserve(view, pod(f"u{i}", min_memory=10 * GIB), "n", NOW)
                results.append("ok")
            except BindError:
                results.append("refused")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count("ok") == 8  # 4 x 10 GiB on each of two 40 GiB devices
        assert all(v <= 40 * GIB for v in view.reserved_by_device.values())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["reserve", "release", "end"]),
                          st.integers(0, 11), st.integers(1, 30)), max_size=60))
def test_ledger_never_exceeds_memory(ops: list[tuple[str, int, int]]) -> None:
    view = view_of(device("n", 0, total=32 * GIB), device("n", 1, total=16 * GIB))
    for op, who, gib in ops:
        uid = f"u{who}"
        if op == "reserve":
            with contextlib.suppress(BindError):
                reserve(view, pod(uid, min_memory=gib * GIB), "n", NOW)
        elif op == "release":
            view.release(uid)
        else:
            view.apply_pod({"metadata": {"uid": uid}, "status": {"phase": "Succeeded"}})
        totals = {"n-nvidia-0": 32 * GIB, "n-nvidia-1": 16 * GIB}
        for name, held in view.reserved_by_device.items():
            assert 0 < held <= totals[name]
        assert sum(r.bytes_per_device * len(r.devices) for r in view.reservations.values()) \
            == sum(view.reserved_by_device.values())


class TestLedgerFromPods:
    @staticmethod
    def bound(uid: str, device_name: str, reserved: int, phase: str = "Running",
              deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"uid": uid, "name": uid, "namespace": "ns", "annotations": {
            "gpu.exo.dev/device": device_name, "gpu.exo.dev/reserved-memory": str(reserved)}}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {"metadata": meta, "spec": {"nodeName": "n"}, "status": {"phase": phase}}

    def test_rebuilt_from_a_listing_and_released_when_pods_end(self) -> None:
        view = view_of(device("n", 0))
        view.resync_pods([self.bound("a", "n-nvidia-0", GIB), self.bound("b", "n-nvidia-0", GIB),
                          self.bound("c", "n-nvidia-0", GIB, phase="Succeeded")])
        assert view.reserved_by_device == {"n-nvidia-0": 2 * GIB}
        deleting = self.bound("a", "n-nvidia-0", GIB, deleting=True)
        view.apply_pod(deleting)  # Terminating: may still use the device in its grace period
        assert view.reserved_by_device == {"n-nvidia-0": 2 * GIB}
        view.remove_pod(deleting)  # gone
        assert view.reserved_by_device == {"n-nvidia-0": GIB}
        view.resync_pods([])  # b vanished while the watch was down
        assert view.reserved_by_device == {}

    @pytest.mark.parametrize("pod_obj", [
        {"metadata": {"uid": "x", "annotations": {"gpu.exo.dev/device": "n-nvidia-0",
                                                  "gpu.exo.dev/reserved-memory": "lots"}},
         "spec": {"nodeName": "n"}},
        {"metadata": {"uid": "x", "annotations": {"gpu.exo.dev/device": "n-nvidia-0",
                                                  "gpu.exo.dev/reserved-memory": "5"}},
         "spec": {}},
        {"metadata": {"annotations": {}}},
    ])
    def test_unusable_pods_reserve_nothing(self, pod_obj: dict[str, Any]) -> None:
        view = view_of(device("n", 0))
        view.apply_pod(pod_obj)
        assert view.reserved_by_device == {}


class TestViewDevices:
    def test_invalid_device_object_is_skipped(self) -> None:
        view = view_of(device("n", 0))
        bad = device("m", 0)
        bad["spec"]["memoryTotalBytes"] = -1
        assert view.apply_device(bad) is None
        assert set(view.devices) == {"n-nvidia-0"}

    def test_removed_device_leaves_the_node(self) -> None:
        view = view_of(device("n", 0), device("n", 1))
        view.remove_device("n-nvidia-0")
        assert set(view.node_slots("n")) == {"n-nvidia-1"}
        view.remove_device("n-nvidia-1")
        assert view.node_slots("n") == {}
        assert len(view.manager) == 0

    def test_update_changes_the_score(self) -> None:
        view = view_of(device("n", 0, util=0))
        before = view.node_slots("n")["n-nvidia-0"].score
        newer = device("n", 0, util=100, age=-1)
        view.apply_device(newer)
        assert view.node_slots("n")["n-nvidia-0"].score < before



@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 80), st.integers(0, 100), st.integers(30, 95),
                          st.integers(0, 120), st.booleans()), min_size=1, max_size=6),
       st.one_of(st.none(), st.integers(0, 90)), st.sampled_from([None, "nvidia", "amd"]),
       st.integers(1, 3))
def test_fast_path_agrees_with_the_full_rules(
        specs: list[tuple[int, int, int, int, bool]], need_gib: int | None,
        vendor: str | None, gpus: int) -> None:
    from exo.gpu.extender.filter import fit_request, judge_node
    from exo.gpu.fit import fit

    view = view_of(*(device("n", i, vendor="amd" if amd else "nvidia", used=used * GIB,
                            util=util, temp=temp, age=age, total=80 * GIB)
                     for i, (used, util, temp, age, amd) in enumerate(specs)))
    request = fit_request(pod(gpus=gpus, min_memory=None if need_gib is None else need_gib * GIB,
                              vendor=vendor))
    ordered = view.ordered_by_node["n"]
    fitting = [s.name for s in ordered if fit(s, request, NOW, view.policy).fits]
    verdict = judge_node(view, request, "n", NOW)
    # A set is of one vendor: the first devices that fit of the vendor whose set starts first.
    groups = [[n for n in fitting if n.split("-")[1] == v] for v in ("nvidia", "amd")]
    sets = sorted((g[:gpus] for g in groups if len(g) >= gpus), key=lambda g: fitting.index(g[0]))
    if sets:
        assert [s.name for s in verdict.devices] == sets[0]
        assert verdict.rejections == ()
    elif len(fitting) < gpus:  # every device that does not fit says why
        assert len(verdict.rejections) == len(ordered) - len(fitting)
    else:  # enough devices, of two vendors: the others say they cannot join the set
        assert {str(r.reason) for r in verdict.rejections} == {"VendorMismatch"}


class TestPreempt:
    """Preemption is only worth it where the victims hold the GPU memory the pod needs."""

    def test_keeps_nodes_where_evicting_frees_a_device(self) -> None:
        from exo.gpu.extender.preempt import preempt_nodes

        view = view_of(device("a", 0, total=40 * GIB), device("b", 0, total=40 * GIB),
                       device("c", 0, total=40 * GIB, used=35 * GIB))
        view.commit(Reservation("big-a", "ns/big-a", "a", ("a-nvidia-0",), 36 * GIB))
        view.commit(Reservation("big-b", "ns/big-b", "b", ("b-nvidia-0",), 36 * GIB))
        view.commit(Reservation("small-c", "ns/small-c", "c", ("c-nvidia-0",), 36 * GIB))
        offered = {"a": (["big-a"], 0),          # frees 36 GiB: the pod fits
                   "b": (["cpu-only-pod"], 0),   # holds no GPU memory: evicting it is useless
                   "c": (["small-c"], 1)}        # frees the reservation, but 35 GiB are in use
        kept = preempt_nodes(view, pod(min_memory=10 * GIB), offered, NOW)
        assert kept == {"a": (["big-a"], 0)}
        assert view.reserved_by_device["a-nvidia-0"] == 36 * GIB  # judged on a copy

    def test_whole_device_pod_needs_every_holder_evicted(self) -> None:
        from exo.gpu.extender.preempt import preempt_nodes

        view = view_of(device("a", 0))
        view.commit(Reservation("p1", "ns/p1", "a", ("a-nvidia-0",), 4 * GIB))
        view.commit(Reservation("p2", "ns/p2", "a", ("a-nvidia-0",), 4 * GIB))
        whole = pod(min_memory=None)
        assert preempt_nodes(view, whole, {"a": (["p1"], 0)}, NOW) == {}
        assert preempt_nodes(view, whole, {"a": (["p1", "p2"], 0)}, NOW) == {"a": (["p1", "p2"],
                                                                                    0)}


class TestViewIdentity:
    def test_cordon_keeps_the_device_and_its_history(self) -> None:
        view = view_of(device("n", 0, util=10))
        view.apply_device(device("n", 0, util=20, age=-1))
        view.apply_device(device("n", 0, util=30, age=-2, cordoned=True))
        assert len(view.manager.get_metrics_history("n-nvidia-0")) == 2  # not re-registered
        assert view.node_slots("n")["n-nvidia-0"].blocked == ("Cordoned",)

    def test_a_new_identity_starts_over(self) -> None:
        view = view_of(device("n", 0, total=80 * GIB))
        view.apply_device(device("n", 0, total=40 * GIB, age=-1))
        info = view.manager.get_device("n-nvidia-0")
        assert info is not None and info.memory_total_bytes == 40 * GIB
        assert len(view.manager.get_metrics_history("n-nvidia-0")) == 1
