"""The extender with links, device affinity and domains: filter, prioritize, bind, wire."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from exo.gpu.extender.bind import reserve
from exo.gpu.extender.filter import filter_nodes
from exo.gpu.extender.prioritize import prioritize_nodes
from exo.gpu.extender.wire import PodRequest, WireError, parse_pod
from exo.gpu.k8s.view import ClusterView, Reservation
from exo.gpu.k8s.workload import DeviceAffinity
from exo.gpu.topology import DomainLevel
from test_extender_policy import NOW, device, pod

GIB = 1024**3
RACK = "topology.exo.dev/rack"


def node(name: str, count: int, *, nvlink: set[tuple[int, int]] = frozenset(),  # type: ignore[assignment]
         util: dict[int, float] | None = None, model: str = "Test GPU") -> list[dict[str, Any]]:
    objs = []
    for i in range(count):
        obj = device(name, i, util=(util or {}).get(i, 0.0))
        obj["spec"]["model"] = model
        obj["metadata"]["labels"]["gpu.exo.dev/model"] = model.replace(" ", "-")
        peers = []
        for j in range(count):
            if j == i:
                continue
            pair = (min(i, j), max(i, j))
            if pair in nvlink:
                peers.append({"device": f"{name}-nvidia-{j}", "link": "NVLink", "links": 2,
                              "level": "SingleSwitch"})
            else:
                peers.append({"device": f"{name}-nvidia-{j}", "link": "PCIe", "level": "System"})
        obj["status"]["topology"] = {"numaNode": 0, "peers": peers}
        objs.append(obj)
    return objs


def view_of(*groups: list[dict[str, Any]], labels: dict[str, dict[str, str]] | None = None
            ) -> ClusterView:
    view = ClusterView(clock=lambda: NOW)
    for objs in groups:
        for obj in objs:
            assert view.apply_device(obj) is not None
    for name, node_labels in (labels or {}).items():
        view.apply_node({"metadata": {"name": name, "labels": node_labels}})
    return view


class TestSets:
    def test_a_two_gpu_pod_gets_the_free_nvlink_pair_and_the_binding_says_why(self) -> None:
        # 0 and 1 are idle (best scores) but meet over PCIe only; 2-3 is the NVLink pair.
        view = view_of(node("n", 4, nvlink={(2, 3)}, util={2: 30, 3: 30}))
        request = pod("p", gpus=2, min_memory=None)
        outcome = filter_nodes(view, request, ["n"], NOW)
        assert [d.device_id for d in outcome.verdicts["n"].devices] == ["n-nvidia-2",
                                                                         "n-nvidia-3"]
        decision = reserve(view, request, "n", NOW)
        assert decision.reservation.devices == ("n-nvidia-2", "n-nvidia-3")
        annotations = decision.annotations()
        assert annotations["gpu.exo.dev/device"] == "n-nvidia-2,n-nvidia-3"
        assert annotations["gpu.exo.dev/device-links"] == (
            "score 250 (weakest 250): n-nvidia-2-n-nvidia-3: NVLink x2 (SingleSwitch) = 250")

    def test_the_node_with_an_nvlink_pair_scores_higher(self) -> None:
        view = view_of(node("linked", 2, nvlink={(0, 1)}, util={0: 30, 1: 30}),
                       node("plain", 2))
        scores = prioritize_nodes(view, pod("p", gpus=2), ["linked", "plain"], NOW)
        assert scores["linked"] > scores["plain"]
        # A one-GPU pod does not care: the idle node wins on score.
        single = prioritize_nodes(view, pod("q"), ["linked", "plain"], NOW)
        assert single["plain"] > single["linked"]

    def test_one_gpu_pods_in_turn_keep_the_pair_whole(self) -> None:
        view = view_of(node("n", 4, nvlink={(0, 1)}, util={0: 0, 1: 0, 2: 20, 3: 20}))
        taken = [reserve(view, pod(f"u{k}", min_memory=None), "n", NOW).reservation.devices[0]
                 for k in range(2)]
        assert sorted(taken) == ["n-nvidia-2", "n-nvidia-3"]
        pair = filter_nodes(view, pod("p", gpus=2, min_memory=None), ["n"], NOW)
        assert pair.passed == ["n"]


class TestAffinity:
    def test_required_affinity_nothing_satisfies_is_unresolvable_with_the_reason(self) -> None:
        view = view_of(node("n", 2, model="NVIDIA H100"))
        request = dataclasses.replace(pod("p"), affinity=DeviceAffinity.model_validate(
            {"required": {"models": ["NVIDIA B200"]}}))
        outcome = filter_nodes(view, request, ["n"], NOW)
        assert outcome.passed == [] and "n" in outcome.unresolvable
        assert "SelectorMismatch (device labels do not match the selector model in " \
               "(NVIDIA B200))" in outcome.unresolvable["n"]

    def test_preferred_affinity_ranks_nodes_and_picks_the_device(self) -> None:
        view = view_of(node("h", 1, model="NVIDIA H100"),
                       node("a", 2, model="NVIDIA A100", util={0: 50, 1: 0}))
        request = dataclasses.replace(pod("p"), affinity=DeviceAffinity.model_validate(
            {"preferred": [{"weight": 20, "models": ["NVIDIA A100"]}]}))
        scores = prioritize_nodes(view, request, ["h", "a"], NOW)
        assert scores["a"] > scores["h"]
        assert reserve(view, request, "a", NOW).reservation.devices == ("a-nvidia-1",)


class TestDomains:
    def test_a_workload_pod_prefers_the_rack_its_workload_already_uses(self) -> None:
        view = view_of(node("a1", 1), node("b1", 1, util={0: 30}), node("b2", 1, util={0: 30}),
                       labels={"a1": {RACK: "a"}, "b1": {RACK: "b"}, "b2": {RACK: "b"}})
        view.commit(Reservation("uid-0", "ns/w-0", "b1", ("b1-nvidia-0",), 10 * GIB, "ns/w"))
        member = dataclasses.replace(pod("p"), workload="w", pack_within=DomainLevel.RACK)
        scores = prioritize_nodes(view, member, ["a1", "b2"], NOW)
        assert scores["b2"] > scores["a1"]
        stranger = prioritize_nodes(view, pod("q"), ["a1", "b2"], NOW)
        assert stranger["a1"] > stranger["b2"]  # without the group, the idle node wins


def pod_json(annotations: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u", "annotations": annotations},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {
                "gpu.exo.dev/gpu": "2"}}}]}}


class TestWire:
    def test_affinity_and_pack_within_are_read(self) -> None:
        parsed = parse_pod(pod_json({
            "gpu.exo.dev/device-affinity": json.dumps({
                "required": {"vendors": ["nvidia"]},
                "preferred": [{"weight": 5, "models": ["NVIDIA H100"]}]}),
            "gpu.exo.dev/pack-within": "rack", "gpu.exo.dev/workload": "w"}))
        assert isinstance(parsed, PodRequest)
        assert parsed.affinity is not None and parsed.affinity.total == 5
        assert parsed.pack_within is DomainLevel.RACK

    @pytest.mark.parametrize(("annotations", "field", "reason"), [
        ({"gpu.exo.dev/device-affinity": "{not json"},
         "Pod.metadata.annotations[gpu.exo.dev/device-affinity]", "not JSON"),
        ({"gpu.exo.dev/device-affinity": json.dumps({"preferred": [{"weight": 500}]})},
         "Pod.metadata.annotations[gpu.exo.dev/device-affinity].preferred[0].weight", "100"),
        ({"gpu.exo.dev/device-affinity": json.dumps({"required": {"vendors": ["nvidai"]}})},
         "Pod.metadata.annotations[gpu.exo.dev/device-affinity].required.vendors[0]",
         "should be 'nvidia'"),
        ({"gpu.exo.dev/device-affinity": json.dumps({"required": {
            "vendors": ["amd"], "labels": {"matchLabels": {"gpu.exo.dev/vendor": "nvidia"}}}})},
         "Pod.metadata.annotations[gpu.exo.dev/device-affinity].required", "conflicts"),
        ({"gpu.exo.dev/pack-within": "shelf"},
         "Pod.metadata.annotations[gpu.exo.dev/pack-within]", "unknown topology level"),
    ])
    def test_bad_annotations_name_the_field(self, annotations: dict[str, str], field: str,
                                            reason: str) -> None:
        with pytest.raises(WireError) as error:
            parse_pod(pod_json(annotations))
        assert error.value.field == field
        assert reason in error.value.reason
