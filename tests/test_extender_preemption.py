"""exo-gpu's preemption: the decision (``preemption.decide``, table tests on a memory model) and
the loop that acts on it (``preemptor.Preemptor``, on the real ledger, the API faked at the
client). tests/integration/test_preemption.py runs it against the real control plane."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from exo.gpu.extender.filter import filter_nodes
from exo.gpu.extender.judged import Judged, Judgement
from exo.gpu.extender.preemption import MAX_EVALUATIONS, PodFacts, Verdict, decide
from exo.gpu.extender.preemptor import HOLD_TTL_S, Preemptor
from exo.gpu.k8s.aioclient import ApiError
from exo.gpu.k8s.view import ClusterView, Reservation
from test_extender_policy import GIB, NOW, device, pod, view_of


# ------------------------------------------------------------------------------ the decision
class Model:
    """Free GiB per node, GiB each pod holds: ``fits`` is enough free once ``without`` left."""

    def __init__(self, need: int, free: dict[str, int], held: dict[str, int]) -> None:
        self.need, self.free, self.held, self.calls = need, free, held, 0

    def fits(self, node: str, without: Sequence[str]) -> Sequence[str] | None:
        self.calls += 1
        room = self.free[node] + sum(self.held[uid] for uid in set(without))
        return [f"{node}-gpu"] if room >= self.need else None


def facts(*pods: tuple[str, int, bool]) -> list[PodFacts]:
    return [PodFacts(uid, f"ns/{uid}", priority, leaving) for uid, priority, leaving in pods]


@pytest.mark.parametrize(("name", "priority", "nodes", "free", "held", "verdict", "expected"), [
    ("nothing to judge", 10, {}, {}, {}, Verdict.NOT_HELPFUL, None),
    ("only equal or higher priorities", 10,
     {"n": facts(("a", 10, False), ("b", 20, False))}, {"n": 0}, {"a": 40, "b": 40},
     Verdict.NOT_HELPFUL, None),
    ("every lower-priority pod gone is not enough", 10,
     {"n": facts(("a", 1, False), ("b", 20, False))}, {"n": 0}, {"a": 10, "b": 40},
     Verdict.NOT_HELPFUL, None),
    ("fewest victims before lowest priority", 10,
     {"n": facts(("a", 1, False), ("b", 2, False), ("c", 3, False))}, {"n": 0},
     {"a": 10, "b": 10, "c": 20}, Verdict.PREEMPT, ("n", ("c",), ())),
    ("among as few, the lowest priority", 10,
     {"n": facts(("hi", 5, False), ("lo", 1, False))}, {"n": 0}, {"hi": 20, "lo": 20},
     Verdict.PREEMPT, ("n", ("lo",), ())),
    ("among as few and as low, the lowest sum", 10,
     {"n": facts(("a", 4, False), ("b", 4, False), ("c", 1, False), ("d", 2, False))},
     {"n": 0}, {"a": 10, "b": 10, "c": 5, "d": 10}, Verdict.PREEMPT, ("n", ("d", "a"), ())),
    ("the node with the fewest victims", 10,
     {"one": facts(("a", 1, False), ("b", 1, False)), "two": facts(("c", 5, False))},
     {"one": 0, "two": 0}, {"a": 10, "b": 10, "c": 20}, Verdict.PREEMPT, ("two", ("c",), ())),
    ("then the lowest highest-victim priority", 10,
     {"m": facts(("a", 5, False)), "n": facts(("b", 3, False))},
     {"m": 0, "n": 0}, {"a": 20, "b": 20}, Verdict.PREEMPT, ("n", ("b",), ())),
    ("a lower-priority pod already leaving: wait, evict no one", 10,
     {"n": facts(("gone", 1, True), ("a", 1, False))}, {"n": 0}, {"gone": 20, "a": 20},
     Verdict.WAIT, ("n", (), ("gone",))),
    ("a higher-priority pod leaving makes room: kube-scheduler places it", 10,
     {"n": facts(("gone", 50, True), ("a", 1, False))}, {"n": 0}, {"gone": 20, "a": 20},
     Verdict.NOT_HELPFUL, None),
    ("leaving pods count as gone, victims make up the rest", 10,
     {"n": facts(("gone", 50, True), ("a", 1, False))}, {"n": 0}, {"gone": 10, "a": 10},
     Verdict.PREEMPT, ("n", ("a",), ("gone",))),
])
def test_decide(name: str, priority: int, nodes: dict[str, list[PodFacts]], free: dict[str, int],
                held: dict[str, int], verdict: Verdict,
                expected: tuple[str, tuple[str, ...], tuple[str, ...]] | None) -> None:
    decision = decide(priority, True, nodes, Model(20, free, held).fits)
    assert decision.verdict is verdict, name
    if expected is None:
        assert decision.candidates == () and decision.message
        return
    best = decision.candidates[0]
    assert (best.node, tuple(v.uid for v in best.victims),
            tuple(p.uid for p in best.leaving)) == expected, name


def test_preemption_policy_never_evicts_nobody() -> None:
    model = Model(20, {"n": 0}, {"a": 40})
    decision = decide(10, False, {"n": facts(("a", 1, False))}, model.fits)
    assert decision.verdict is Verdict.POLICY_NEVER and model.calls == 0
    assert "preemptionPolicy is Never" in decision.message


def test_past_the_budget_victims_are_chosen_by_reprieve() -> None:
    """12 pods of 1 GiB, 3 GiB needed: 12 + 66 subsets fit the budget, the 220 of size 3 do
    not, so every pod is evicted and each given back, highest priority first, while it fits:
    the three lowest priorities stay victims."""
    pods = facts(*((f"p{i:02d}", i, False) for i in range(12)))
    model = Model(3, {"n": 0}, {p.uid: 1 for p in pods})
    decision = decide(100, True, {"n": pods}, model.fits)
    assert [v.uid for v in decision.candidates[0].victims] == ["p00", "p01", "p02"]
    assert model.calls <= 12 + 66 + 12 + 4  # budget spent, then one call per pod given back
    assert MAX_EVALUATIONS < 12 + 66 + 220


# ------------------------------------------------------------------------------- the loop
class FakeAPI:
    """The API server as the preemptor calls it. ``evict`` answers an eviction (dry run or not)
    of a victim by name; pods are listed by node."""

    def __init__(self, pods: dict[str, dict[str, Any]],
                 evict: Callable[[str, bool], ApiError | None] = lambda name, dry: None) -> None:
        self.pods, self.evict = pods, evict
        self.calls: list[tuple[str, str, Any]] = []
        self.down = False

    async def request(self, method: str, path: str, body: Any = None,
                      params: dict[str, str] | None = None, **_: Any) -> Any:
        self.calls.append((method, path, body))
        if self.down:
            raise ApiError(0, "Unreachable", "connection refused")
        if method == "GET" and path == "/api/v1/pods":
            node = (params or {})["fieldSelector"].split("=", 1)[1]
            return {"items": [p for p in self.pods.values() if p["spec"].get("nodeName") == node]}
        name = path.split("/pods/", 1)[-1].split("/", 1)[0]
        if method == "GET":
            if name not in self.pods:
                raise ApiError(404, "NotFound", f"pods {name!r} not found")
            return self.pods[name]
        if path.endswith("/eviction"):
            error = self.evict(name, bool(body["deleteOptions"].get("dryRun")))
            if error is not None:
                raise error
            if not body["deleteOptions"].get("dryRun"):
                self.pods[name]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {}

    def evictions(self) -> list[tuple[str, bool]]:
        return [(p.split("/pods/")[1].split("/")[0], bool(b["deleteOptions"].get("dryRun")))
                for m, p, b in self.calls if p.endswith("/eviction")]

    def events(self) -> list[tuple[str, str, str]]:
        return [(b["involvedObject"]["name"], b["reason"], b["message"])
                for m, p, b in self.calls if p.endswith("/events")]


def api_pod(name: str, priority: int, node: str | None = None, uid: str | None = None,
            **annotations: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid or name,
                         "annotations": annotations},
            "spec": {"nodeName": node, "priority": priority}, "status": {"phase": "Running"}}


def holding(view: ClusterView, uid: str, node: str, gib: int, index: int = 0) -> None:
    view.commit(Reservation(uid, f"ns/{uid}", node, (f"{node}-nvidia-{index}",), gib * GIB))


Setup = tuple[Preemptor, FakeAPI, ClusterView, list[float]]


def setup(*nodes: str, victims: dict[str, tuple[str, int, int]], preemptor_priority: int = 100,
          evict: Callable[[str, bool], ApiError | None] = lambda name, dry: None,
          **changes: Any) -> Setup:
    """One 80 GiB device per node; ``victims``: name -> (node, priority, GiB held); the pod
    "p" asks 40 GiB and no node could take it."""
    view = view_of(*(device(n, 0) for n in nodes))
    pods = {"pod-p": api_pod("pod-p", preemptor_priority, uid="p")}
    for name, (node, priority, gib) in victims.items():
        holding(view, name, node, gib)
        pods[name] = api_pod(name, priority, node)
    api = FakeAPI(pods, evict)
    judged = Judged()
    wanted = dataclasses.replace(pod("p", min_memory=40 * GIB), priority=preemptor_priority,
                                 **changes)
    outcome = filter_nodes(view, wanted, list(nodes), NOW)
    assert not outcome.passed
    judged.remember(wanted, outcome.passed, outcome.failed)
    clock = [1000.0]
    preemptor = Preemptor(view, judged, api, clock=lambda: NOW,  # type: ignore[arg-type]
                          monotonic=lambda: clock[0])
    return preemptor, api, view, clock


class TestPreemptor:
    async def test_evicts_the_victim_holds_the_room_and_nominates(self) -> None:
        preemptor, api, view, clock = setup("n", victims={"v": ("n", 0, 70)})
        await preemptor.round()
        assert api.evictions() == [("v", True), ("v", False)]  # dry run first
        eviction = next(b for m, p, b in api.calls if p.endswith("/eviction"))
        assert eviction["deleteOptions"]["preconditions"] == {"uid": "v"}
        assert not [c for c in api.calls if c[0] == "DELETE"]
        hold = view.reservations["p"]
        assert (hold.devices, hold.bytes_per_device, hold.bound) == (("n-nvidia-0",), 40 * GIB,
                                                                      False)
        assert ("PATCH", "/api/v1/namespaces/ns/pods/pod-p/status",
                {"status": {"nominatedNodeName": "n"}}) in api.calls
        assert [(who, why) for who, why, _ in api.events()] == [("v", "Preempted"),
                                                                 ("pod-p", "Preempting")]
        # The same judgement is acted on once.
        calls = len(api.calls)
        await preemptor.round()
        assert len(api.calls) == calls

        # Another pod is refused the held memory, even once the victim is gone.
        view.release("v")
        other = filter_nodes(view, pod("q", min_memory=50 * GIB), ["n"], NOW)
        assert other.passed == [] and "n" in other.failed
        mine = filter_nodes(view, dataclasses.replace(pod("p", min_memory=40 * GIB)), ["n"], NOW)
        assert mine.passed == ["n"]
        # Victims gone: nominated again (kube-scheduler retries the pod now).
        await preemptor.round()
        nominations = [c for c in api.calls if c[0] == "PATCH"]
        assert len(nominations) == 2
        # Still pending past the hold's time: released.
        clock[0] += HOLD_TTL_S + 1
        await preemptor.round()
        assert "p" not in view.reservations and preemptor.holds == {}

    async def test_a_disruption_budget_blocks_a_candidate_and_the_next_is_tried(self) -> None:
        def evict(name: str, dry: bool) -> ApiError | None:
            return ApiError(429, "TooManyRequests", "Cannot evict pod as it would violate the "
                                                    "pod's disruption budget.") \
                if name == "guarded" else None

        preemptor, api, view, _ = setup("a", "b", victims={
            "guarded": ("a", 0, 70), "free": ("b", 5, 70)}, evict=evict)
        await preemptor.round()
        assert api.evictions() == [("guarded", True), ("free", True), ("free", False)]
        blocked = [m for who, why, m in api.events() if why == "PreemptionBlocked"]
        assert blocked == ["not preempting on a: evicting ns/guarded would be refused: "
                           "Cannot evict pod as it would violate the pod's disruption budget."]
        assert view.reservations["p"].node == "b"

    async def test_a_refusal_after_the_dry_run_is_an_event_not_a_delete(self) -> None:
        def evict(name: str, dry: bool) -> ApiError | None:
            return None if dry else ApiError(429, "TooManyRequests", "budget now exhausted")

        preemptor, api, _view, _ = setup("n", victims={"v": ("n", 0, 70)}, evict=evict)
        await preemptor.round()
        assert api.evictions() == [("v", True), ("v", False)]
        assert [c for c in api.calls if c[0] == "DELETE"] == []
        assert any(why == "PreemptionBlocked" and "budget now exhausted" in m
                   for _, why, m in api.events())
        assert api.pods["v"]["metadata"].get("deletionTimestamp") is None

    @pytest.mark.parametrize(("victims", "changes", "reason"), [
        ({"v": ("n", 100, 70)}, {}, "PreemptionNotHelpful"),  # equal priority
        ({"v": ("n", 0, 20), "w": ("n", 500, 50)}, {}, "PreemptionNotHelpful"),
        ({"v": ("n", 0, 70)}, {"preempts": False}, "PreemptionPolicyNever"),
    ])
    async def test_no_victims_no_eviction_and_an_event(
            self, victims: dict[str, tuple[str, int, int]], changes: dict[str, Any],
            reason: str) -> None:
        preemptor, api, view, _ = setup("n", victims=victims, **changes)
        await preemptor.round()
        assert api.evictions() == [] and "p" not in view.reservations
        assert [why for _, why, _ in api.events()] == [reason]

    async def test_victims_already_leaving_are_waited_for(self) -> None:
        preemptor, api, view, _ = setup("n", victims={"v": ("n", 0, 70)})
        api.pods["v"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        await preemptor.round()  # a restart after the eviction, or a second copy
        assert api.evictions() == []
        assert view.reservations["p"].bound is False
        assert [why for _, why, _ in api.events()] == ["WaitForVictims"]

    async def test_a_pod_no_longer_pending_is_left_alone(self) -> None:
        preemptor, api, _view, _ = setup("n", victims={"v": ("n", 0, 70)})
        api.pods["pod-p"]["spec"]["nodeName"] = "elsewhere"
        await preemptor.round()
        assert api.evictions() == [] and api.events() == []

    async def test_an_api_outage_acts_on_nothing_and_tries_again(self) -> None:
        preemptor, api, view, _ = setup("n", victims={"v": ("n", 0, 70)})
        api.down = True
        await preemptor.round()
        assert "p" not in view.reservations
        api.down = False
        await preemptor.round()
        assert api.evictions() == [("v", True), ("v", False)]

    async def test_a_workload_pod_is_the_controllers_to_place(self) -> None:
        preemptor, api, _view, _ = setup("n", victims={"v": ("n", 0, 70)}, workload="w")
        await preemptor.round()
        assert api.calls == []

    async def test_two_copies_do_not_evict_twice(self) -> None:
        first, api, _view, _ = setup("n", victims={"v": ("n", 0, 70), "w": ("n", 1, 10)})
        await first.round()
        second = Preemptor(view_of(device("n", 0)), Judged(), api,  # type: ignore[arg-type]
                           clock=lambda: NOW)
        holding(second.view, "v", "n", 70)
        holding(second.view, "w", "n", 10)
        second.judged = first.judged
        second._acted.clear()
        await second.round()
        assert api.evictions() == [("v", True), ("v", False)]  # the second waits
        assert "WaitForVictims" in [why for _, why, _ in api.events()]


def test_judgement_lists_only_resolvable_nodes() -> None:
    view = view_of(device("full", 0), device("small", 0, total=16 * GIB))
    holding(view, "v", "full", 70)
    wanted = pod("p", min_memory=40 * GIB)
    outcome = filter_nodes(view, wanted, ["full", "small", "none"], NOW)
    judged = Judged()
    judged.remember(wanted, outcome.passed, outcome.failed)
    assert judged.unschedulable() == [Judgement(wanted, judged.get("p").at, ("full",))]  # type: ignore[union-attr]
