"""The GPUWorkload model and its generated CRD (crds/gpu.exo.dev_gpuworkloads.yaml).

The API server's answers to bad GPUWorkloads are tested against the real server in
tests/integration/test_controller_integration.py; here: drift, shape and the model's own parsing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from exo.gpu.k8s import crdgen
from exo.gpu.k8s.workload import (
    MAX_TASKS,
    GPUWorkload,
    GPUWorkloadSpec,
    LabelSelector,
    parse_quantity,
)
from test_crds import walk_schema

ROOT = Path(__file__).resolve().parents[1]
FILE = "gpu.exo.dev_gpuworkloads.yaml"


def _crd() -> dict[str, Any]:
    return crdgen.crd_for(GPUWorkload)


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crd_matches_the_model() -> None:
    committed = (ROOT / "crds" / FILE).read_text(encoding="utf-8")
    assert committed == crdgen.generate()[FILE], "run: exo-gpu crds --output crds"


def test_names_scope_columns() -> None:
    crd = _crd()
    assert crd["metadata"]["name"] == "gpuworkloads.gpu.exo.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert names["kind"] == "GPUWorkload" and names["categories"] == ["gpu"]
    assert {"gpuwl", "gw"} <= set(names["shortNames"])
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c]
    assert columns == ["Strategy", "Tasks", "Phase", "Devices", "Age"]


def test_schema_is_structural_except_the_two_marked_fields() -> None:
    untyped = {}
    for path, node in walk_schema(_schema()):
        if "type" not in node:
            untyped[path] = node
        for forbidden in ("$ref", "oneOf", "allOf", "title", "$defs"):
            assert forbidden not in node, f"{path}: {forbidden}"
    assert set(untyped) == {".spec.tasks", ".spec.minMemoryBytes"}
    assert untyped[".spec.tasks"]["x-kubernetes-preserve-unknown-fields"] is True
    quantity = untyped[".spec.minMemoryBytes"]
    assert quantity["x-kubernetes-int-or-string"] is True
    assert quantity["anyOf"] == [{"type": "integer"}, {"type": "string"}]


def test_bounds_that_the_api_server_enforces() -> None:
    spec = _schema()["properties"]["spec"]
    assert spec["required"] == ["tasks"]
    props = spec["properties"]
    assert props["strategy"]["enum"] == ["uniform", "capacity"]
    assert props["strategy"]["default"] == "uniform"
    assert props["maxTasksPerDevice"]["minimum"] == 1
    assert props["capacities"]["additionalProperties"]["minimum"] == 0
    tasks = props["tasks"]
    assert (tasks["minimum"], tasks["maximum"], tasks["minItems"]) == (1, MAX_TASKS, 1)
    assert tasks["minLength"] > tasks["maxLength"]  # no string passes
    assert tasks["minProperties"] > tasks["maxProperties"]  # no object passes
    containers = props["template"]["properties"]["spec"]["properties"]["containers"]
    assert containers["minItems"] == 1
    assert props["template"]["properties"]["spec"]["required"] == ["containers"]
    assert props["template"]["x-kubernetes-preserve-unknown-fields"] is True


def test_cross_field_rules() -> None:
    rules = {r["message"]: r for r in _schema()["x-kubernetes-validations"]}
    forbidden = rules["spec.capacities may only be set with strategy capacity"]
    assert forbidden["rule"] == "!has(self.spec.capacities) || self.spec.strategy == 'capacity'"
    assert forbidden["reason"] == "FieldValueForbidden"
    assert any("exists" in r["rule"] for r in rules.values())


def test_yaml_parses_back() -> None:
    assert yaml.safe_load(crdgen.render(GPUWorkload)) == _crd()


@pytest.mark.parametrize(("value", "expected"), [
    (0, 0), (1024, 1024), ("1024", 1024), ("8Gi", 8 * 2**30), ("500M", 500 * 10**6),
    ("1.5Gi", 3 * 2**29), ("1e3", 1000), ("1k", 1000), ("100m", 1), ("2Ki", 2048),
])
def test_quantities(value: int | str, expected: int) -> None:
    assert parse_quantity(value) == expected


@pytest.mark.parametrize("value", ["lots", "-1Gi", -5, "8 Gi", "", True, "1Xi"])
def test_bad_quantities_name_the_field(value: Any) -> None:
    with pytest.raises(ValueError, match=r"spec\.minMemoryBytes"):
        parse_quantity(value)


def test_spec_helpers() -> None:
    spec = GPUWorkloadSpec.model_validate({"tasks": 3, "minMemoryBytes": "1Gi"})
    assert spec.task_ids() == ["0", "1", "2"] and spec.task_count == 3
    assert spec.min_memory() == 2**30
    named = GPUWorkloadSpec.model_validate({"tasks": ["b", "a"]})
    assert named.task_ids() == ["b", "a"] and named.min_memory() is None


@pytest.mark.parametrize(("spec", "message"), [
    ({"tasks": 3, "strategy": "capacity", "capacities": {"a": 0, "b": 0}}, "positive"),
    ({"tasks": ["x", "y", "x"]}, "repeated: x"),
    ({"tasks": 1.5}, "tasks"),
    ({"tasks": MAX_TASKS + 1}, r"1\.\.1000000"),
])
def test_model_refuses_what_the_schema_cannot_say(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GPUWorkloadSpec.model_validate(spec)


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ({}, {"a": "1"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
     {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
])
def test_label_selector(selector: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is expected


def test_template_keeps_unknown_pod_fields() -> None:
    workload = GPUWorkload.model_validate({
        "metadata": {"name": "w", "namespace": "n"},
        "spec": {"tasks": 1, "template": {"spec": {
            "containers": [{"name": "m", "image": "i", "args": ["x"]}],
            "tolerations": [{"operator": "Exists"}]}}}})
    assert workload.spec.template is not None
    dumped = workload.spec.template.spec.to_api()
    assert dumped["tolerations"] == [{"operator": "Exists"}]
    assert dumped["containers"][0]["args"] == ["x"]
