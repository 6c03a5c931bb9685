"""Bind admission (``judged``), exact binds (``Binder.settle``) and the ledger of Terminating pods.

The API is faked at the client boundary here; tests/integration/test_bind_faults.py runs the same
paths against the real API server and kube-scheduler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from exo.gpu.devcluster.pki import ExtenderPki
from exo.gpu.extender.bind import READ_BACK_ATTEMPTS, Binder, BindError, maybe_applied
from exo.gpu.extender.judged import (
    JUDGED_TTL_S,
    MAX_PREEMPTION_NODES,
    SCHEDULER_NAME,
    Judged,
    bind_refusal,
)
from exo.gpu.extender.server import ExtenderServer
from exo.gpu.extender.wire import BindArgs, PodRequest, WireError, parse_pod
from exo.gpu.k8s.aioclient import ApiError
from test_extender_policy import GIB, NOW, device, pod, view_of
from test_extender_server import mutual_tls_client, pki, post

OURS = frozenset({SCHEDULER_NAME})
__all__ = ["pki"]  # the module's fixture: a CA and kube-scheduler's client certificate


def ours(uid: str = "u1", **changes: Any) -> PodRequest:
    return dataclasses.replace(pod(uid), **{"scheduler_name": SCHEDULER_NAME, **changes})


# ------------------------------------------------------------------------------ admission
@pytest.mark.parametrize(("request_", "judged", "refusal"), [
    (ours(), True, None),
    (ours(scheduler_name="default-scheduler"), True,
     "is scheduled by 'default-scheduler', not by exo-gpu-scheduler"),
    (ours(scheduler_name="other"), False, "is scheduled by 'other'"),
    (ours(gpus=0), True, "asks for no gpu.exo.dev/gpu"),
    (ours(node_name="n"), True, "is already bound to n"),
    (ours(), False, "was never filtered by this extender"),
])
def test_bind_refusal(request_: PodRequest, judged: bool, refusal: str | None) -> None:
    answer = bind_refusal(request_, OURS, judged)
    if refusal is None:
        assert answer is None
    else:
        assert answer is not None and refusal in answer
        assert request_.key in answer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestJudged:
    def test_a_judgement_expires(self) -> None:
        clock = Clock()
        judged = Judged(clock=clock)
        judged.remember(ours("a"), ["n"], [])
        assert judged.get("a") is not None
        clock.now += JUDGED_TTL_S + 1
        assert judged.get("a") is None

    def test_the_oldest_go_first_past_the_size(self) -> None:
        judged = Judged(size=2, clock=Clock())
        for uid in "abc":
            judged.remember(ours(uid), ["n"], [])
        assert (judged.get("a"), len(judged)) == (None, 2)
        assert judged.get("b") is not None and judged.get("c") is not None

    def test_only_pods_no_node_took_are_preemption_candidates(self) -> None:
        clock = Clock()
        judged = Judged(clock=clock)
        judged.remember(ours("placed"), ["n1"], ["n2"])
        judged.remember(ours("old"), [], ["n1"])
        clock.now += 1
        judged.remember(ours("stuck"), [], (f"n{i}" for i in range(500)))
        judged.remember(ours("hopeless"), [], [])
        found = judged.unschedulable()
        assert [j.pod.uid for j in found] == ["stuck", "old"]  # newest first
        assert len(found[0].resolvable) == MAX_PREEMPTION_NODES
        clock.now += JUDGED_TTL_S
        assert [j.pod.uid for j in judged.unschedulable()] == ["stuck"]
        assert judged.get("old") is None

    @pytest.mark.parametrize(("size", "ttl"), [(0, 1.0), (1, 0.0)])
    def test_bad_bounds_are_refused(self, size: int, ttl: float) -> None:
        with pytest.raises(ValueError, match="must be positive"):
            Judged(size=size, ttl_s=ttl)


# ----------------------------------------------------------------------------- wire fields
def pod_body(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [], **spec}}


@pytest.mark.parametrize(("spec", "expected"), [
    ({}, ("default-scheduler", 0, True)),
    ({"schedulerName": "exo-gpu-scheduler", "priority": 1000,
      "preemptionPolicy": "PreemptLowerPriority"}, ("exo-gpu-scheduler", 1000, True)),
    ({"priority": -5, "preemptionPolicy": "Never"}, ("default-scheduler", -5, False)),
])
def test_scheduler_priority_and_preemption_policy_are_read(spec: dict[str, Any],
                                                           expected: tuple[str, int, bool]) -> None:
    parsed = parse_pod(pod_body(**spec))
    assert (parsed.scheduler_name, parsed.priority, parsed.preempts) == expected


@pytest.mark.parametrize(("spec", "field", "reason"), [
    ({"schedulerName": 7}, "Pod.spec.schedulerName", "string"),
    ({"priority": "high"}, "Pod.spec.priority", "32-bit integer"),
    ({"priority": True}, "Pod.spec.priority", "32-bit integer"),
    ({"priority": 2**31}, "Pod.spec.priority", "32-bit integer"),
    ({"priority": 1.5}, "Pod.spec.priority", "32-bit integer"),
    ({"preemptionPolicy": "Always"}, "Pod.spec.preemptionPolicy", "PreemptLowerPriority, Never"),
])
def test_bad_scheduling_fields_name_the_field(spec: dict[str, Any], field: str,
                                              reason: str) -> None:
    with pytest.raises(WireError) as caught:
        parse_pod(pod_body(**spec))
    assert field in str(caught.value) and reason in str(caught.value)


# ------------------------------------------------------------------------------ exact binds
class FakeAPI:
    """The API server as ``Binder`` calls it: POST a Binding, GET a pod."""

    def __init__(self, post: Callable[[dict[str, Any]], None],
                 pods: list[dict[str, Any] | ApiError],
                 by_name: dict[str, dict[str, Any]] | None = None) -> None:
        self.post, self.pods, self.by_name = post, pods, by_name or {}
        self.calls: list[str] = []

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        self.calls.append(method)
        if method == "POST":
            self.post(body)
            return {}
        name = path.rsplit("/", 1)[-1]
        if name in self.by_name:
            return self.by_name[name]
        answer = self.pods.pop(0) if len(self.pods) > 1 else self.pods[0]
        if isinstance(answer, ApiError):
            raise answer
        return answer

    async def close(self) -> None:
        return None


ARGS = BindArgs(pod_name="pod-u1", pod_namespace="ns", pod_uid="u1", node="n")


def bound_pod(node: str | None, devices: str | None, uid: str = "u1") -> dict[str, Any]:
    annotations = {} if devices is None else {"gpu.exo.dev/device": devices,
                                              "gpu.exo.dev/reserved-memory": str(10 * GIB)}
    return {"metadata": {"name": "pod-u1", "namespace": "ns", "uid": uid,
                         "annotations": annotations},
            "spec": {"nodeName": node, "containers": []}, "status": {"phase": "Pending"}}


def failing(error: ApiError) -> Callable[[dict[str, Any]], None]:
    def post(body: dict[str, Any]) -> None:
        raise error
    return post


LOST = ApiError(0, "Timeout", "no answer")


def binder_for(api: FakeAPI) -> tuple[Binder, Any]:
    view = view_of(device("n", 0), device("n", 1), device("m", 0))
    return Binder(view, api), view  # type: ignore[arg-type]


class TestExactBind:
    @pytest.mark.parametrize("error", [LOST, ApiError(503, "ServiceUnavailable", "etcd"),
                                       ApiError(409, "Conflict", "already assigned")])
    async def test_an_applied_bind_whose_answer_was_lost_keeps_its_reservation(
            self, error: ApiError) -> None:
        api = FakeAPI(failing(error), [bound_pod("n", "n-nvidia-0")])
        binder, view = binder_for(api)
        decision = await binder.bind(ARGS, NOW, pod())
        assert decision.reservation.devices == ("n-nvidia-0",)
        assert view.reservations["u1"].devices == ("n-nvidia-0",)
        assert api.calls == ["POST", "GET"]

    async def test_a_lost_bind_the_server_did_not_apply_is_undone(self) -> None:
        api = FakeAPI(failing(LOST), [bound_pod(None, None)])
        binder, view = binder_for(api)
        with pytest.raises(BindError, match="the pod is not bound"):
            await binder.bind(ARGS, NOW, pod())
        assert "u1" not in view.reservations

    async def test_a_pod_bound_elsewhere_holds_what_its_annotations_say(self) -> None:
        api = FakeAPI(failing(ApiError(409, "Conflict", "already assigned")),
                      [bound_pod("m", "m-nvidia-0")])
        binder, view = binder_for(api)
        with pytest.raises(BindError, match="the pod is bound to m"):
            await binder.bind(ARGS, NOW, pod())
        assert view.reservations["u1"].devices == ("m-nvidia-0",)
        assert view.reserved_by_device == {"m-nvidia-0": 10 * GIB}

    async def test_when_the_pod_cannot_be_read_back_the_reservation_is_kept(self) -> None:
        api = FakeAPI(failing(LOST), [ApiError(0, "Unreachable", "refused")])
        binder, view = binder_for(api)
        with pytest.raises(BindError, match="reservation is kept"):
            await binder.bind(ARGS, NOW, pod())
        assert api.calls == ["POST"] + ["GET"] * READ_BACK_ATTEMPTS
        assert view.reservations["u1"].devices == ("n-nvidia-0",)
        # kube-scheduler binds it again: the kept reservation is the pod's own.
        api.post, api.pods = (lambda body: None), [bound_pod("n", "n-nvidia-0")]
        again = await binder.bind(ARGS, NOW, pod())
        assert again.reservation.devices == ("n-nvidia-0",)
        assert view.reserved_by_device == {"n-nvidia-0": 10 * GIB}

    async def test_a_pod_gone_meanwhile_is_undone(self) -> None:
        api = FakeAPI(failing(LOST), [ApiError(404, "NotFound", "pods not found")])
        binder, view = binder_for(api)
        with pytest.raises(BindError, match="the pod is gone"):
            await binder.bind(ARGS, NOW, pod())
        assert "u1" not in view.reservations

    async def test_a_recreated_pod_is_not_mistaken_for_the_bound_one(self) -> None:
        api = FakeAPI(failing(LOST), [bound_pod("n", "n-nvidia-0", uid="u2")])
        binder, view = binder_for(api)
        with pytest.raises(BindError, match="binding ns/pod-u1 to n"):
            await binder.bind(ARGS, NOW, pod())
        assert view.reservations == {}

    @pytest.mark.parametrize("status", [400, 403, 404, 422, 429])
    async def test_a_refused_binding_is_final_and_undone(self, status: int) -> None:
        error = ApiError(status, "Refused", "no")
        assert not maybe_applied(error)
        api = FakeAPI(failing(error), [bound_pod("n", "n-nvidia-0")])
        binder, view = binder_for(api)
        with pytest.raises(BindError, match=f"{status} Refused"):
            await binder.bind(ARGS, NOW, pod())
        assert api.calls == ["POST"] and "u1" not in view.reservations


# ------------------------------------------------------------------------ /bind over HTTP
def api_pod(uid: str, scheduler: str = SCHEDULER_NAME, node: str | None = None
            ) -> dict[str, Any]:
    return {"metadata": {"name": f"pod-{uid}", "namespace": "ns", "uid": uid,
                         "annotations": {"gpu.exo.dev/min-memory": "8Gi"}},
            "spec": {"schedulerName": scheduler, "nodeName": node, "containers": [{
                "name": "c", "resources": {"limits": {"gpu.exo.dev/gpu": "1"}}}]}}


def filter_body(uid: str, scheduler: str = SCHEDULER_NAME) -> dict[str, Any]:
    return {"Pod": api_pod(uid, scheduler), "NodeNames": ["n"]}


def bind_body(uid: str) -> dict[str, Any]:
    return {"PodName": f"pod-{uid}", "PodNamespace": "ns", "PodUID": uid, "Node": "n"}


class TestBindVerb:
    """kube-scheduler reads a bind's outcome from ``Error`` in a 200 answer."""

    @pytest.fixture
    def server(self) -> tuple[ExtenderServer, FakeAPI]:
        posted: list[dict[str, Any]] = []
        api = FakeAPI(posted.append, [ApiError(404, "NotFound", "no such pod")], by_name={
            "pod-never": api_pod("never"), "pod-ok": api_pod("ok", node="n"),
            "pod-batch": api_pod("batch", "batch")})
        view = view_of(device("n", 0))
        return ExtenderServer(view, Binder(view, api), clock=lambda: NOW), api  # type: ignore

    async def test_binds_what_it_filtered_and_refuses_the_rest(
            self, server: tuple[ExtenderServer, FakeAPI], pki: ExtenderPki) -> None:
        extender, api = server
        async with mutual_tls_client(extender, pki) as client:
            assert (await post(client, "filter", filter_body("ok")))[0] == 200
            status, reply = await post(client, "bind", bind_body("ok"))
            assert (status, reply) == (200, {"Error": ""})
            assert api.calls == ["POST"]
            # never filtered: read for the reason, then refused
            status, reply = await post(client, "bind", bind_body("never"))
            assert status == 200
            assert "pod ns/pod-never was never filtered by this extender" in reply["Error"]
            status, reply = await post(client, "bind", bind_body("batch"))
            assert status == 200 and "is scheduled by 'batch'" in reply["Error"]
            # bound: the judgement is spent, a second bind is refused
            status, reply = await post(client, "bind", bind_body("ok"))
            assert status == 200 and "pod ns/pod-ok is already bound to n" in reply["Error"]
            status, reply = await post(client, "bind", bind_body("gone"))
            assert status == 200 and "no such pod" in reply["Error"]
            # another scheduler's pod, filtered (kube-scheduler extended for several profiles)
            assert (await post(client, "filter", filter_body("other", "batch")))[0] == 200
            status, reply = await post(client, "bind", bind_body("other"))
            assert status == 200 and "is scheduled by 'batch'" in reply["Error"]
        assert len([c for c in api.calls if c == "POST"]) == 1
        assert set(extender.view.reservations) == {"ok"}

    @pytest.mark.parametrize("body", [{"PodName": "p"}, [], {"PodName": 1, "PodNamespace": "ns",
                                                             "PodUID": "u", "Node": "n"}])
    async def test_a_malformed_bind_names_the_field(
            self, server: tuple[ExtenderServer, FakeAPI], body: Any,
            pki: ExtenderPki) -> None:
        async with mutual_tls_client(server[0], pki) as client:
            status, reply = await post(client, "bind", orjson.dumps(body))
        assert status == 200 and "bad bind request" in reply["Error"]
        assert server[1].calls == []


# ------------------------------------------------------------------------ Terminating pods
def ledger_pod(node: str | None, *, deleting: bool, phase: str = "Running") -> dict[str, Any]:
    meta: dict[str, Any] = {"uid": "t", "name": "t", "namespace": "ns", "annotations": {
        "gpu.exo.dev/device": "n-nvidia-0", "gpu.exo.dev/reserved-memory": str(GIB)}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase}}


@pytest.mark.parametrize(("node", "deleting", "phase", "held"), [
    ("n", False, "Running", GIB),
    ("n", True, "Running", GIB),  # Terminating: its grace period may still use the device
    ("n", True, "Succeeded", 0),  # its containers stopped
    ("n", True, "Failed", 0),
])
def test_a_terminating_pod_holds_until_it_ends(node: str, deleting: bool, phase: str,
                                               held: int) -> None:
    view = view_of(device("n", 0))
    view.apply_pod(ledger_pod("n", deleting=False))
    view.apply_pod(ledger_pod(node, deleting=deleting, phase=phase))
    assert view.reserved_by_device.get("n-nvidia-0", 0) == held
