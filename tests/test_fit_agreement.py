"""The planner and the extender's filter never disagree about a device.

Over random fleets (vendors, sizes, measured use, temperatures, sample ages, cordons, readiness,
devices without metrics), random ledgers (bound pods with and without a workload, planned pods
not bound yet, plan holds of several workloads, the planning workload's own among them) and
random requests (a size or the whole device, a selector), the planner's participants for a
workload (``manager.plan_workload`` with the workload's request, what ``planning.plan`` calls)
are exactly the devices on which the extender's filter admits that workload's pod planned there,
and both give the same reason for the others. The same holds for a pod of no workload against the
seed selection path with the same request, which exercises the filter's fast path.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from exo.gpu.controller import planning
from exo.gpu.errors import DistributionError
from exo.gpu.extender.filter import filter_nodes, fit_request
from exo.gpu.extender.wire import PodRequest
from exo.gpu.fit import FitRequest
from exo.gpu.k8s.view import ClusterView, Reservation
from test_extender_policy import NOW, device

GIB = 1024**3
WORKLOADS = [None, "ns/a", "ns/b", "ns/w"]
TEMPLATE = {"spec": {"containers": [{"name": "main", "image": "x"}]}}

devices_st = st.lists(st.tuples(
    st.sampled_from(["nvidia", "amd"]),       # vendor
    st.sampled_from([16, 24, 40, 80]),        # total GiB
    st.integers(0, 100),                      # used, % of total
    st.sampled_from([40, 70, 85, 89, 90, 95]),  # temperature
    st.one_of(st.none(), st.sampled_from([0, 30, 89, 90, 91, 200])),  # sample age, None: none
    st.booleans(),                            # cordoned
    st.booleans(),                            # ready
), min_size=1, max_size=6)

holds_st = st.lists(st.tuples(
    st.sampled_from(["bound", "pending", "plan"]),
    st.sampled_from(WORKLOADS),
    st.integers(0, 5),                        # which device
    st.one_of(st.none(), st.integers(1, 80)),  # GiB, None: the whole device
), max_size=8)


def build(specs: list[tuple[Any, ...]], holds: list[tuple[Any, ...]]
          ) -> tuple[ClusterView, list[str]]:
    view = ClusterView(clock=lambda: NOW)
    names = []
    for i, (vendor, total, used, temp, age, cordoned, ready) in enumerate(specs):
        node = f"n{i % 3}"
        obj = device(node, i, vendor=vendor, total=total * GIB, used=total * GIB * used // 100,
                     temp=temp, age=age or 0.0, metrics=age is not None, cordoned=cordoned,
                     ready=ready)
        assert view.apply_device(obj) is not None
        names.append(obj["metadata"]["name"])
    plans: dict[str, dict[str, int]] = {}
    for n, (kind, workload, which, gib) in enumerate(holds):
        name = names[which % len(names)]
        state = view.state.device(name)
        assert state is not None
        amount = state.total if gib is None else gib * GIB
        if kind == "plan":
            if workload is not None:
                plans.setdefault(workload, {})[name] = amount
        else:
            view.commit(Reservation(f"pod-{n}", f"ns/pod-{n}", state.node if kind == "bound"
                                    else "", (name,), amount, workload, kind == "bound"))
    for workload, held in plans.items():
        view.set_plan_holds(workload, held)
    return view, names


def planner_participants(view: ClusterView, request: FitRequest) -> set[str]:
    try:
        plan = view.manager.plan_workload(["t"], request=request)
    except DistributionError:
        return set()
    return set(plan.assignments)


@settings(max_examples=400, deadline=None)
@given(devices_st, holds_st, st.one_of(st.none(), st.integers(1, 80)),
       st.sampled_from([None, "nvidia", "amd"]))
def test_planner_and_filter_agree_on_every_device(
        specs: list[tuple[Any, ...]], holds: list[tuple[Any, ...]], need_gib: int | None,
        selected: str | None) -> None:
    view, names = build(specs, holds)
    spec: dict[str, Any] = {"tasks": 1, "template": TEMPLATE}
    if need_gib is not None:
        spec["minMemoryBytes"] = need_gib * GIB
    if selected is not None:
        spec["deviceSelector"] = {"matchLabels": {"gpu.exo.dev/vendor": selected}}
    workload, invalid = planning.parse_workload({
        "metadata": {"name": "w", "namespace": "ns", "uid": "u"}, "spec": spec})
    assert workload is not None, invalid
    request = planning.fit_request(workload)
    with view.lock:
        planned = planner_participants(view, request)
        for name in names:
            state = view.state.device(name)
            assert state is not None
            if selected is not None and state.vendor != selected:
                assert name not in planned
                continue  # the planner never plans a pod here, so the filter never sees one
            pod = PodRequest("ns", "w-pod", "uid-p", 1, None if need_gib is None
                             else need_gib * GIB, state.vendor, name, "w")
            outcome = filter_nodes(view, pod, [state.node], NOW)
            admitted = outcome.passed == [state.node]
            assert admitted == (name in planned), (name, outcome)
            planner_reason = view.manager.explain_device(name, request=request).reason
            filter_reasons = [r.reason for r in outcome.verdicts[state.node].rejections
                              if r.device == name]
            assert filter_reasons == ([] if admitted else [planner_reason])


@settings(max_examples=300, deadline=None)
@given(devices_st, holds_st, st.integers(0, 80), st.sampled_from([None, "nvidia", "amd"]))
def test_a_pod_of_no_workload_is_judged_as_the_seed_selects(
        specs: list[tuple[Any, ...]], holds: list[tuple[Any, ...]], need_gib: int,
        vendor: str | None) -> None:
    view, names = build(specs, holds)
    pod = PodRequest("ns", "p", "uid-p", 1, need_gib * GIB, vendor, None, None)
    request = fit_request(pod)
    with view.lock:
        eligible = set(view.manager.selector.eligible_in_order(request, NOW))
        for node in {view.state.device(n).node for n in names}:  # type: ignore[union-attr]
            outcome = filter_nodes(view, pod, [node], NOW)
            on_node = {d.device_id for d in view.state.node_devices(node)}
            assert (outcome.passed == [node]) == bool(on_node & eligible)
            if outcome.passed:
                (chosen,) = outcome.verdicts[node].devices
                best = max(on_node & eligible,
                           key=lambda n: (view.state.device(n).score, -ord(n[-1])))  # type: ignore[union-attr]
                assert chosen.score == view.state.device(best).score  # type: ignore[union-attr]
