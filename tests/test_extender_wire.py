"""The extender wire format: PascalCase requests in, PascalCase results out, bad input named."""

from __future__ import annotations

from typing import Any

import pytest

from exo.gpu.extender.wire import (
    MAX_NODES_PER_REQUEST,
    WireError,
    filter_result,
    parse_bind_args,
    parse_filter_args,
    parse_pod,
    parse_preempt_args,
    parse_quantity,
    preemption_result,
    priority_list,
)

GIB = 1024**3


def pod(gpus: Any = 1, annotations: dict[str, str] | None = None, init_gpus: Any = None,
        **meta: Any) -> dict[str, Any]:
    containers = [{"name": "main", "resources": {"limits": {"gpu.exo.dev/gpu": gpus}}}]
    spec: dict[str, Any] = {"containers": containers}
    if init_gpus is not None:
        spec["initContainers"] = [{"name": "init", "resources": {
            "requests": {"gpu.exo.dev/gpu": init_gpus}}}]
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u1",
                         "annotations": annotations or {}, **meta}, "spec": spec}


class TestQuantity:
    @pytest.mark.parametrize(("text", "expected"), [
        ("8Gi", 8 * GIB), ("16G", 16 * 10**9), ("1.5Gi", int(1.5 * GIB)), ("1e9", 10**9),
        ("1073741824", GIB), (1024, 1024), ("0", 0), ("500Mi", 500 * 2**20), ("1k", 1000),
    ])
    def test_valid(self, text: Any, expected: int) -> None:
        assert parse_quantity(text, "f") == expected

    @pytest.mark.parametrize("text", ["eight", "-1Gi", "", "Gi", "NaN", "inf", None, True, 1.5,
                                      [1]])
    def test_invalid_names_the_field(self, text: Any) -> None:
        with pytest.raises(WireError) as error:
            parse_quantity(text, "metadata.annotations[x]")
        assert error.value.field == "metadata.annotations[x]"


class TestPod:
    def test_reads_gpus_and_annotations(self) -> None:
        request = parse_pod(pod(2, {"gpu.exo.dev/min-memory": "16Gi",
                                    "gpu.exo.dev/vendor": "NVIDIA",
                                    "gpu.exo.dev/device": "n1-nvidia-0",
                                    "gpu.exo.dev/workload": "w"}))
        assert (request.gpus, request.min_memory_bytes, request.vendor) == (2, 16 * GIB, "nvidia")
        assert (request.planned_device, request.workload, request.key) == \
            ("n1-nvidia-0", "w", "ns/p")

    def test_no_min_memory_means_whole_device(self) -> None:
        assert parse_pod(pod()).min_memory_bytes is None

    def test_init_containers_count_as_the_larger_need(self) -> None:
        assert parse_pod(pod(1, init_gpus=3)).gpus == 3

    @pytest.mark.parametrize(("body", "field"), [
        (None, "Pod"),
        ("pod", "Pod"),
        ({"spec": {}}, "Pod.metadata"),
        ({"metadata": {"namespace": "ns"}}, "Pod.metadata.name"),
        ({"metadata": {"name": 5}}, "Pod.metadata.name"),
        ({"metadata": {"name": "p"}, "spec": {"containers": "x"}}, "Pod.spec.containers"),
        ({"metadata": {"name": "p"}, "spec": {"containers": [5]}}, "Pod.spec.containers[0]"),
        (pod("lots"), "Pod.spec.containers[0].resources.limits[gpu.exo.dev/gpu]"),
        (pod(1, {"gpu.exo.dev/min-memory": "much"}),
         "Pod.metadata.annotations[gpu.exo.dev/min-memory]"),
        (pod(1, {"gpu.exo.dev/min-memory": "-8Gi"}),
         "Pod.metadata.annotations[gpu.exo.dev/min-memory]"),
    ])
    def test_bad_pod_names_the_field(self, body: Any, field: str) -> None:
        with pytest.raises(WireError) as error:
            parse_pod(body)
        assert error.value.field == field


class TestFilterArgs:
    def test_node_names_when_node_cache_capable(self) -> None:
        args = parse_filter_args({"Pod": pod(), "Nodes": None, "NodeNames": ["a", "b"]})
        assert args.node_names == ["a", "b"]
        assert args.nodes is None

    def test_full_nodes_are_echoed_in_the_result(self) -> None:
        nodes = {"items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]}
        args = parse_filter_args({"Pod": pod(), "Nodes": nodes, "NodeNames": None})
        assert args.node_names == ["a", "b"]
        result = filter_result(args, ["b"], {"a": "why"}, {})
        assert result["Nodes"] == {"items": [{"metadata": {"name": "b"}}]}
        assert result["NodeNames"] == ["b"]
        assert result["FailedNodes"] == {"a": "why"}
        assert set(result) == {"Nodes", "NodeNames", "FailedNodes",
                               "FailedAndUnresolvableNodes", "Error"}

    def test_empty_node_list_is_valid(self) -> None:
        assert parse_filter_args({"Pod": pod(), "NodeNames": []}).node_names == []

    @pytest.mark.parametrize(("body", "field"), [
        ([], "ExtenderArgs"),
        ({"NodeNames": ["a"]}, "Pod"),
        ({"Pod": pod()}, "NodeNames"),
        ({"Pod": pod(), "NodeNames": "a"}, "NodeNames"),
        ({"Pod": pod(), "NodeNames": ["a", 3]}, "NodeNames[1]"),
        ({"Pod": pod(), "NodeNames": ["a", ""]}, "NodeNames[1]"),
        ({"Pod": pod(), "Nodes": {"items": "x"}}, "Nodes.items"),
        ({"Pod": pod(), "Nodes": {"items": [{"metadata": {}}]}}, "Nodes.items[0].metadata.name"),
        ({"Pod": pod(), "NodeNames": ["n"] * (MAX_NODES_PER_REQUEST + 1)}, "NodeNames"),
    ])
    def test_bad_request_names_the_field(self, body: Any, field: str) -> None:
        with pytest.raises(WireError) as error:
            parse_filter_args(body)
        assert error.value.field == field


class TestBindArgs:
    def test_valid(self) -> None:
        args = parse_bind_args({"PodName": "p", "PodNamespace": "ns", "PodUID": "u",
                                "Node": "n"})
        assert (args.pod_name, args.pod_namespace, args.pod_uid, args.node) == \
            ("p", "ns", "u", "n")

    @pytest.mark.parametrize("missing", ["PodName", "PodNamespace", "PodUID", "Node"])
    def test_missing_field_is_named(self, missing: str) -> None:
        body = {"PodName": "p", "PodNamespace": "ns", "PodUID": "u", "Node": "n"}
        del body[missing]
        with pytest.raises(WireError) as error:
            parse_bind_args(body)
        assert error.value.field == missing


def test_priority_list_shape() -> None:
    assert priority_list({"a": 7, "b": 0}) == [{"Host": "a", "Score": 7},
                                               {"Host": "b", "Score": 0}]


class TestPreemptArgs:
    def test_meta_victims(self) -> None:
        args = parse_preempt_args({"Pod": pod(), "NodeNameToMetaVictims": {
            "a": {"Pods": [{"UID": "v1"}, {"UID": "v2"}], "NumPDBViolations": 1}}})
        assert args.victims == {"a": (["v1", "v2"], 1)}
        assert preemption_result(args.victims) == {"NodeNameToMetaVictims": {
            "a": {"Pods": [{"UID": "v1"}, {"UID": "v2"}], "NumPDBViolations": 1}}}

    def test_full_victims_from_a_scheduler_without_node_cache(self) -> None:
        args = parse_preempt_args({"Pod": pod(), "NodeNameToVictims": {
            "a": {"Pods": [{"metadata": {"uid": "v1"}}]}}})
        assert args.victims == {"a": (["v1"], 0)}

    @pytest.mark.parametrize(("body", "field"), [
        ({"NodeNameToMetaVictims": {}}, "Pod"),
        ({"Pod": pod(), "NodeNameToMetaVictims": []}, "NodeNameToMetaVictims"),
        ({"Pod": pod(), "NodeNameToMetaVictims": {"a": {"Pods": "x"}}},
         "NodeNameToMetaVictims[a].Pods"),
        ({"Pod": pod(), "NodeNameToMetaVictims": {"a": {"Pods": [{"UID": 5}]}}},
         "NodeNameToMetaVictims[a].Pods[0].UID"),
        ({"Pod": pod(), "NodeNameToMetaVictims": {"a": {"Pods": [], "NumPDBViolations": -1}}},
         "NodeNameToMetaVictims[a].NumPDBViolations"),
        ({"Pod": pod(), "NodeNameToVictims": {"a": {"Pods": [{"metadata": None}]}}},
         "NodeNameToVictims[a].Pods[0].metadata"),
    ])
    def test_bad_request_names_the_field(self, body: Any, field: str) -> None:
        with pytest.raises(WireError) as error:
            parse_preempt_args(body)
        assert error.value.field == field
