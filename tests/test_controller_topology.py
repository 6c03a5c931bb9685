"""Plans of device sets, affinity and network topology (controller.grouped on exo.gpu.placement)."""

from __future__ import annotations

from typing import Any

import pytest

from exo.gpu.controller import planning
from exo.gpu.controller.pods import build_pod
from exo.gpu.k8s.view import ClusterView
from exo.gpu.selector import SelectionPolicy
from test_controller_planning import Clock, device

GIB = 1024**3
RACK = "topology.exo.dev/rack"
TEMPLATE = {"spec": {"containers": [{"name": "main", "image": "x"}]}}


def linked(node: str, count: int, *, pairs: bool = True, util: dict[int, float] | None = None,
           vendor: str = "nvidia", model: str = "H100", memory_gib: int = 80
           ) -> list[dict[str, Any]]:
    """``count`` devices of ``node``; with ``pairs`` NVLink pairs (0,1), (2,3)..., PCIe
    NUMANode otherwise."""
    objs = []
    for i in range(count):
        obj = device(node, vendor, i, memory_gib, util=(util or {}).get(i, 0), model=model)
        peers = []
        for j in range(count):
            if j == i:
                continue
            if pairs and i // 2 == j // 2:
                peers.append({"device": f"{node}-{vendor}-{j}", "link": "NVLink", "links": 4,
                              "level": "SingleSwitch"})
            else:
                peers.append({"device": f"{node}-{vendor}-{j}", "link": "PCIe",
                              "level": "NUMANode"})
        obj["status"]["topology"] = {"numaNode": 0, "peers": peers}
        objs.append(obj)
    return objs


def view_of(*nodes: tuple[str, list[dict[str, Any]], dict[str, str]]) -> ClusterView:
    view = ClusterView(policy=SelectionPolicy(), clock=Clock())
    for node, objs, labels in nodes:
        view.apply_node({"metadata": {"name": node, "labels": labels}})
        for obj in objs:
            assert view.apply_device(obj) is not None
    return view


def plan(view: ClusterView, spec: dict[str, Any], name: str = "w") -> planning.Plan:
    workload, invalid = planning.parse_workload({
        "metadata": {"name": name, "namespace": "ns", "uid": "u"}, "spec": spec})
    if workload is None:
        assert invalid is not None
        return invalid
    return planning.plan(workload, view)


class TestDeviceSets:
    def test_each_task_gets_an_nvlink_pair_and_status_explains_the_pairs(self) -> None:
        # Partners are busier: by score alone the sets would mix pairs.
        view = view_of(("n1", linked("n1", 8, util={1: 30, 3: 30, 5: 30, 7: 30}), {}))
        result = plan(view, {"tasks": 2, "devicesPerTask": 2, "template": TEMPLATE})
        assert result.placed, result.message
        sets = [p.device_set for p in result.placements]
        assert sets == [("n1-nvidia-0", "n1-nvidia-1"), ("n1-nvidia-2", "n1-nvidia-3")]
        status = result.placements[0].to_status("pod").to_api()
        assert status["devices"] == ["n1-nvidia-0", "n1-nvidia-1"]
        assert status["links"] == {"score": 450, "weakest": 450, "pairs": [
            {"devices": ["n1-nvidia-0", "n1-nvidia-1"], "link": "NVLink",
             "level": "SingleSwitch", "links": 4, "score": 450}]}
        assert "weakest pair scores 450" in result.message

    def test_exo_gpu_plan_shows_sets_links_and_domains(self) -> None:
        from exo.gpu.controller.cli import PLAN_HEADERS, link_lines, plan_rows

        view = view_of(("n1", linked("n1", 4), {RACK: "r1"}))
        result = plan(view, {"tasks": 1, "devicesPerTask": 2, "template": TEMPLATE,
                             "topology": {"packWithin": "rack"}})
        (row,) = [dict(zip(PLAN_HEADERS, r, strict=True)) for r in plan_rows(result)]
        assert (row["SET"], row["LINKS"], row["DOMAIN"]) == (
            "n1-nvidia-0,n1-nvidia-1", "450 (weakest 450)", "rack=r1")
        assert link_lines(result) == [
            "  links of n1-nvidia-0,n1-nvidia-1: n1-nvidia-0-n1-nvidia-1 NVLink x4 "
            "SingleSwitch = 450"]

    def test_a_kept_plan_keeps_its_sets_and_their_links(self) -> None:
        view = view_of(("n1", linked("n1", 4), {}))
        workload, _ = planning.parse_workload({
            "metadata": {"name": "w", "namespace": "ns"},
            "spec": {"tasks": 2, "devicesPerTask": 2, "template": TEMPLATE}})
        assert workload is not None
        first = planning.plan(workload, view)
        again = planning.plan(workload, view, [p.to_status() for p in first.placements])
        assert again.mode == "kept"
        assert [p.to_status() for p in again.placements] == \
            [p.to_status() for p in first.placements]

    def test_the_pods_ask_for_their_whole_set(self) -> None:
        view = view_of(("n1", linked("n1", 2), {}))
        body = {"metadata": {"name": "w", "namespace": "ns", "uid": "u"},
                "spec": {"tasks": 1, "devicesPerTask": 2, "template": TEMPLATE}}
        workload, _ = planning.parse_workload(body)
        assert workload is not None
        (placement,) = planning.plan(workload, view).placements
        pod = build_pod(body, workload, placement, "w-pod")
        assert pod["metadata"]["annotations"]["gpu.exo.dev/device"] == "n1-nvidia-0,n1-nvidia-1"
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["gpu.exo.dev/gpu"] == "2"
        holds = planning.plan_holds(workload, view, [placement])
        assert holds == {"n1-nvidia-0": 80 * GIB, "n1-nvidia-1": 80 * GIB}

    def test_a_set_larger_than_any_node_is_refused_naming_the_field(self) -> None:
        view = view_of(("n1", linked("n1", 8), {}), ("n2", linked("n2", 4), {}))
        result = plan(view, {"tasks": 1, "devicesPerTask": 16})
        assert (result.phase, result.reason) == ("Unschedulable", "SetTooLarge")
        assert "spec.devicesPerTask 16" in result.message and "n1, has 8" in result.message

    def test_too_few_sets_says_how_many_fit(self) -> None:
        view = view_of(("n1", linked("n1", 4), {}))
        result = plan(view, {"tasks": 3, "devicesPerTask": 2, "template": TEMPLATE})
        assert (result.phase, result.reason) == ("Unschedulable", "NoDeviceSet")
        assert "only 2 set(s) fit" in result.message

    def test_a_failed_device_moves_only_its_set(self) -> None:
        clock = Clock()
        view = ClusterView(policy=SelectionPolicy(), clock=clock)
        for obj in linked("n1", 6):
            view.apply_device(obj)
        workload, _ = planning.parse_workload({
            "metadata": {"name": "w", "namespace": "ns"},
            "spec": {"tasks": 2, "devicesPerTask": 2, "template": TEMPLATE}})
        assert workload is not None
        first = planning.plan(workload, view)
        assert [p.device_set for p in first.placements] == [
            ("n1-nvidia-0", "n1-nvidia-1"), ("n1-nvidia-2", "n1-nvidia-3")]
        broken = linked("n1", 6)[3]
        broken["status"]["conditions"][0].update(status="False", reason="XidError")
        view.apply_device(broken)
        again = planning.plan(workload, view, [p.to_status() for p in first.placements])
        assert (again.mode, again.reason) == ("partial", "Replanned")
        assert [p.device_set for p in again.placements] == [
            ("n1-nvidia-0", "n1-nvidia-1"), ("n1-nvidia-4", "n1-nvidia-5")]


def racks() -> ClusterView:
    """rack-a: two idle 8-GPU nodes (16 devices, the emptiest); rack-b: a busier 8-GPU node and
    a 2-GPU node (10 devices); one node without a rack label."""
    busy = dict.fromkeys(range(8), 40.0)
    return view_of(
        ("a1", linked("a1", 8), {RACK: "rack-a"}),
        ("a2", linked("a2", 8), {RACK: "rack-a"}),
        ("b1", linked("b1", 8, util=busy), {RACK: "rack-b"}),
        ("b2", linked("b2", 2, util=busy), {RACK: "rack-b"}),
        ("lone", linked("lone", 1), {}),
    )


class TestTopologyDomains:
    def test_eight_tasks_pack_into_the_smallest_rack_that_holds_them(self) -> None:
        result = plan(racks(), {"tasks": 8, "maxTasksPerDevice": 1,
                                "topology": {"packWithin": "rack", "required": True}})
        assert result.placed, result.message
        assert {p.node for p in result.placements} <= {"b1", "b2"}
        assert {p.domain for p in result.placements} == {"rack=rack-b"}
        assert "in rack rack-b, the smallest" in result.message
        # By score alone they would go to the idle rack.
        alone = plan(racks(), {"tasks": 8, "maxTasksPerDevice": 1})
        assert {p.node for p in alone.placements} <= {"a1", "a2"}

    def test_required_waits_when_no_rack_holds_every_task(self) -> None:
        result = plan(racks(), {"tasks": 17, "maxTasksPerDevice": 1,
                                "topology": {"packWithin": "rack", "required": True}})
        assert (result.phase, result.reason) == ("Unschedulable", "NoDomainFits")
        assert "spec.topology.packWithin rack (required)" in result.message
        assert "the largest, rack-a, holds 16" in result.message

    def test_preferred_uses_the_fewest_racks(self) -> None:
        result = plan(racks(), {"tasks": 20, "maxTasksPerDevice": 1,
                                "topology": {"packWithin": "rack"}})
        assert result.placed, result.message
        assert {p.domain for p in result.placements} == {"rack=rack-a", "rack=rack-b"}
        assert "lone" not in {p.node for p in result.placements}

    def test_sets_pack_into_a_rack_too(self) -> None:
        result = plan(racks(), {"tasks": 4, "devicesPerTask": 2, "template": TEMPLATE,
                                "topology": {"packWithin": "rack", "required": True}})
        assert result.placed, result.message
        assert {p.node for p in result.placements} <= {"b1", "b2"}

    def test_a_level_no_node_carries_is_reported(self) -> None:
        view = view_of(("n1", linked("n1", 2), {}))
        required = plan(view, {"tasks": 2, "topology": {"packWithin": "block",
                                                        "required": True}})
        assert (required.phase, required.reason) == ("Unschedulable", "TopologyLabelMissing")
        assert "spec.topology.packWithin: block: no node carries the block label " \
               "topology.exo.dev/block" in required.message
        preferred = plan(view, {"tasks": 2, "topology": {"packWithin": "block"}})
        assert preferred.placed and "placed without it" in preferred.message

    def test_tasks_together_on_one_node(self) -> None:
        result = plan(racks(), {"tasks": 4, "maxTasksPerDevice": 1,
                                "affinity": {"tasks": {"keep": "Together"}}})
        assert result.placed, result.message
        # One node: the smallest that holds four tasks (ties by name); b2 and lone are too small.
        assert [p.node for p in result.placements] == ["a1"] * 4

    def test_tasks_apart_one_per_node(self) -> None:
        result = plan(racks(), {"tasks": 5, "affinity": {"tasks": {"keep": "Apart"}}})
        assert result.placed, result.message
        nodes = [p.node for p in result.placements]
        assert len(nodes) == len(set(nodes)) == 5

    def test_tasks_apart_by_rack_need_enough_racks(self) -> None:
        result = plan(racks(), {"tasks": 4, "affinity": {"tasks": {"keep": "Apart",
                                                                    "by": "rack"}}})
        assert (result.phase, result.reason) == ("Unschedulable", "TooFewDomains")
        assert "Apart by rack needs 4 rack domain(s)" in result.message
        soft = plan(racks(), {"tasks": 4, "affinity": {"tasks": {"keep": "Apart", "by": "rack",
                                                                  "required": False}}})
        assert soft.placed and "so some tasks share one" in soft.message

    def test_sets_apart_one_per_node(self) -> None:
        result = plan(racks(), {"tasks": 3, "devicesPerTask": 2, "template": TEMPLATE,
                                "affinity": {"tasks": {"keep": "Apart"}}})
        assert result.placed, result.message
        assert len({p.node for p in result.placements}) == 3


class TestDeviceAffinity:
    def test_required_models_only(self) -> None:
        view = view_of(("n1", linked("n1", 2, model="H100"), {}),
                       ("n2", linked("n2", 2, model="A100"), {}))
        result = plan(view, {"tasks": 4, "affinity": {"required": {"models": ["A100"]}}})
        assert {p.node for p in result.placements} == {"n2"}

    def test_required_affinity_nothing_satisfies(self) -> None:
        view = view_of(("n1", linked("n1", 2, model="H100"), {}))
        result = plan(view, {"tasks": 1, "affinity": {"required": {
            "models": ["NVIDIA B200"], "vendors": ["nvidia"]}}})
        assert (result.phase, result.reason) == ("Unschedulable", "AffinityUnsatisfied")
        assert "spec.affinity.required (vendor in (nvidia) and model in (NVIDIA B200))" in \
            result.message

    def test_preferred_devices_take_the_tasks_first(self) -> None:
        view = view_of(("n1", linked("n1", 2, model="H100"), {}),
                       ("n2", linked("n2", 2, model="A100", util={0: 50, 1: 50}), {}))
        result = plan(view, {"tasks": 2, "affinity": {"preferred": [
            {"weight": 10, "models": ["A100"]}]}})
        assert {p.node for p in result.placements} == {"n2"}
        assert {p.node for p in plan(view, {"tasks": 2}).placements} == {"n1"}


class TestBadInput:
    @pytest.mark.parametrize(("spec", "field"), [
        ({"devicesPerTask": 2, "strategy": "capacity"}, "strategy"),
        ({"devicesPerTask": 2, "maxTasksPerDevice": 3}, "maxTasksPerDevice"),
        ({"devicesPerTask": 0}, "spec.devicesPerTask"),
        ({"devicesPerTask": 65}, "spec.devicesPerTask"),
        ({"topology": {"packWithin": "shelf"}}, "spec.topology.packWithin"),
        ({"topology": {"packWithin": "rack"},
          "affinity": {"tasks": {"keep": "Apart", "by": "rack"}}}, "affinity.tasks"),
        ({"topology": {"packWithin": "rack"},
          "affinity": {"tasks": {"keep": "Apart", "by": "zone"}}}, "affinity.tasks"),
        ({"topology": {"packWithin": "zone"},
          "affinity": {"tasks": {"keep": "Together"}}}, "affinity.tasks"),
        ({"deviceSelector": {"matchLabels": {"gpu.exo.dev/vendor": "amd"}},
          "affinity": {"required": {"vendors": ["nvidia"]}}}, "affinity.required.vendors"),
        ({"affinity": {"required": {"vendors": ["nvidia"], "labels": {
            "matchLabels": {"gpu.exo.dev/vendor": "amd"}}}}}, "spec.affinity.required"),
        ({"affinity": {"preferred": [{"weight": 0, "models": ["x"]}]}},
         "spec.affinity.preferred.0.weight"),
    ])
    def test_refused_naming_the_field(self, spec: dict[str, Any], field: str) -> None:
        result = plan(view_of(), {"tasks": 2, **spec})
        assert (result.phase, result.reason) == ("Invalid", "InvalidSpec")
        assert field in result.message, result.message

    def test_apart_within_a_larger_packing_is_fine(self) -> None:
        result = plan(racks(), {"tasks": 2, "topology": {"packWithin": "rack"},
                                "affinity": {"tasks": {"keep": "Apart", "by": "node"}}})
        assert result.placed, result.message
        assert len({p.node for p in result.placements}) == 2
        assert len({p.domain for p in result.placements}) == 1
