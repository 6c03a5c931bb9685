"""crds/ holds exactly what the models generate, and the generated schema is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from exo.gpu.k8s import crdgen
from exo.gpu.k8s.cli import command as crds_command
from exo.gpu.k8s.models import GPUDevice
from exo.gpu.telemetry_protocol import Vendor

CRDS = Path(__file__).resolve().parent.parent / "crds"


def _schema() -> dict[str, Any]:
    crd = crdgen.crd_for(GPUDevice)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crds_match_the_models() -> None:
    generated = crdgen.generate()
    assert "gpu.exo.dev_gpudevices.yaml" in generated
    for name, text in generated.items():
        path = CRDS / name
        assert path.is_file(), f"{path} missing: run `exo-gpu crds --output crds`"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} is out of date with the models: run `exo-gpu crds --output crds`"
        )


def test_every_committed_crd_file_is_generated() -> None:
    committed = {p.name for p in CRDS.glob("gpu.exo.dev_*.yaml")}
    assert committed <= set(crdgen.generate()), "crds/ holds a file no model generates"


def test_cli_writes_and_checks(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(crds_command, ["--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = tmp_path / "gpu.exo.dev_gpudevices.yaml"
    assert written.read_text() == crdgen.render(GPUDevice)
    assert runner.invoke(crds_command, ["--output", str(tmp_path), "--check"]).exit_code == 0
    written.write_text(written.read_text().replace("gpudev", "gpux"))
    stale = runner.invoke(crds_command, ["--output", str(tmp_path), "--check"])
    assert stale.exit_code == 1
    assert "gpu.exo.dev_gpudevices.yaml" in stale.output


def walk_schema(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (``.spec.vendor``, ``.status.conditions[]``)."""
    out = [(path, node)]
    for name, sub in (node.get("properties") or {}).items():
        out += walk_schema(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += walk_schema(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += walk_schema(node["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural() -> None:
    for path, node in walk_schema(_schema()):
        assert "type" in node, f"{path or '<root>'} has no type"
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            assert forbidden not in node, f"{path}: {forbidden} is not structural"
        assert not ("properties" in node and "additionalProperties" in node), path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(key, True), bool), f"{path}: {key} must be boolean"
        assert node.get("default", 0) is not None, f"{path}: null default"


def test_bounds_and_enums() -> None:
    schema = _schema()
    spec = schema["properties"]["spec"]
    metrics = schema["properties"]["status"]["properties"]["metrics"]
    assert set(spec["required"]) >= {"node", "vendor", "index", "model", "memoryTotalBytes"}
    assert spec["properties"]["vendor"]["enum"] == [v.value for v in Vendor]
    total = spec["properties"]["memoryTotalBytes"]
    assert total["minimum"] == 0 and total["exclusiveMinimum"] is True
    util = metrics["properties"]["computeUtilizationPercent"]
    assert (util["minimum"], util["maximum"]) == (0, 100)
    assert metrics["properties"]["memoryUsedBytes"]["minimum"] == 0
    assert "clockRateMHz" in metrics["properties"]
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def test_cross_field_rules_are_cel() -> None:
    rules = [r["rule"] for r in _schema()["x-kubernetes-validations"]]
    assert any("memoryUsedBytes <= self.spec.memoryTotalBytes" in r for r in rules)
    node_rules = _schema()["properties"]["spec"]["properties"]["node"]["x-kubernetes-validations"]
    assert node_rules[0]["rule"] == "self == oldSelf"


def test_names_columns_and_subresource() -> None:
    crd = crdgen.crd_for(GPUDevice)
    assert crd["metadata"]["name"] == "gpudevices.gpu.exo.dev"
    assert crd["spec"]["scope"] == "Cluster"
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["gpudev", "gd"] and names["categories"] == ["gpu"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = version["additionalPrinterColumns"]
    default_columns = [c["name"] for c in columns if "priority" not in c]
    assert default_columns == ["Node", "Vendor", "Model", "Memory", "Util%", "Temp(C)", "Ready",
                               "Age"]
    ready = next(c for c in version["additionalPrinterColumns"] if c["name"] == "Ready")
    assert ready["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'


def test_generated_yaml_parses_back() -> None:
    assert yaml.safe_load(crdgen.render(GPUDevice)) == crdgen.crd_for(GPUDevice)


def test_unions_are_refused() -> None:
    class Bad(BaseModel):
        value: int | str

    raw = Bad.model_json_schema()
    with pytest.raises(crdgen.SchemaError, match="value: unions"):
        crdgen.structural_schema(raw, raw.get("$defs", {}))
