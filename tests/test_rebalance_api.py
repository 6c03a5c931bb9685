"""Rebalancing on the API: ``GPUWorkload.spec.rebalance``, the pod annotation, the controller's
``--rebalance-*`` flags and the chart's ``controller.rebalance`` values, and bad input to each.

The API server's answers to bad ``spec.rebalance`` figures are tested against the real server in
tests/integration/test_rebalance_api_server.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from exo.gpu import app
from exo.gpu.controller import cli as controller_cli
from exo.gpu.errors import InvalidRequestError
from exo.gpu.k8s import crdgen
from exo.gpu.k8s.rebalance import (
    ANNOTATION_REBALANCE,
    RebalanceSpec,
    pod_settings,
    workload_settings,
)
from exo.gpu.k8s.workload import GPUWorkload, GPUWorkloadSpec
from exo.gpu.rebalance import BOUNDS, DEFAULT_CONFIG, RebalanceConfig
from test_chart import CHART, render, template_text


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# ------------------------------------------------------------------------ GPUWorkload model
def test_a_workload_opts_in_with_its_own_figures() -> None:
    spec = GPUWorkloadSpec.model_validate(
        {"tasks": 2, "rebalance": {"enabled": True, "cooldownSeconds": 900,
                                   "minRuntimeSeconds": 0}})
    assert spec.rebalance == RebalanceSpec(enabled=True, cooldown_seconds=900,
                                           min_runtime_seconds=0)
    settings = workload_settings(spec.rebalance, DEFAULT_CONFIG)
    assert (settings.enabled, settings.cooldown_seconds, settings.min_runtime_seconds) == (
        True, 900, 0)
    assert spec.to_api()["rebalance"] == {"enabled": True, "minRuntimeSeconds": 0,
                                          "cooldownSeconds": 900}


def test_without_spec_rebalance_a_workload_is_not_opted_in() -> None:
    config = RebalanceConfig(cooldown_seconds=600)
    plain = GPUWorkloadSpec.model_validate({"tasks": 2})
    assert plain.rebalance is None and not workload_settings(None, config).enabled
    named = workload_settings(RebalanceSpec(enabled=True), config)
    assert named.cooldown_seconds == 600
    assert named.min_runtime_seconds == DEFAULT_CONFIG.min_runtime_seconds


@pytest.mark.parametrize(("rebalance", "field"), [
    ({"enabled": True, "cooldownSeconds": 59}, "rebalance.cooldownSeconds"),
    ({"enabled": True, "cooldownSeconds": 86_401}, "rebalance.cooldownSeconds"),
    ({"enabled": True, "cooldownSeconds": "soon"}, "rebalance.cooldownSeconds"),
    ({"enabled": True, "minRuntimeSeconds": -1}, "rebalance.minRuntimeSeconds"),
    ({"enabled": True, "minRuntimeSeconds": 86_401}, "rebalance.minRuntimeSeconds"),
    ({"enabled": "sometimes"}, "rebalance.enabled"),
])
def test_the_model_refuses_figures_out_of_range_by_name(rebalance: dict[str, Any],
                                                        field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        GPUWorkloadSpec.model_validate({"tasks": 2, "rebalance": rebalance})
    assert field in str(caught.value)


def test_the_crd_holds_the_same_bounds() -> None:
    schema = crdgen.crd_for(GPUWorkload)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    node = schema["properties"]["spec"]["properties"]["rebalance"]
    assert node["type"] == "object"
    assert node["properties"]["enabled"] == {**node["properties"]["enabled"],
                                             "type": "boolean", "default": False}
    for name in ("cooldown_seconds", "min_runtime_seconds"):
        field = node["properties"][camel(name)]
        assert field["type"] == "integer"
        assert (field["minimum"], field["maximum"]) == BOUNDS[name]


# ---------------------------------------------------------------------------- pod annotation
@pytest.mark.parametrize(("annotations", "enabled"), [
    (None, False), ({}, False), ({ANNOTATION_REBALANCE: "false"}, False),
    ({ANNOTATION_REBALANCE: "true"}, True), ({"other": "true"}, False)])
def test_a_pod_opts_in_with_its_annotation(annotations: dict[str, str] | None,
                                           enabled: bool) -> None:
    settings = pod_settings(annotations, DEFAULT_CONFIG)
    assert settings.enabled is enabled
    assert settings.cooldown_seconds == DEFAULT_CONFIG.cooldown_seconds


@pytest.mark.parametrize("value", ["yes", "True", "1", ""])
def test_a_bad_annotation_value_is_refused_by_name(value: str) -> None:
    with pytest.raises(InvalidRequestError, match='"true" or "false"') as caught:
        pod_settings({ANNOTATION_REBALANCE: value}, DEFAULT_CONFIG)
    assert caught.value.field == "gpu.exo.dev/rebalance" == ANNOTATION_REBALANCE


# -------------------------------------------------------------------------- controller flags
def parsed(*args: str) -> RebalanceConfig:
    """The RebalanceConfig `exo-gpu controller ARGS` would run with (nothing runs)."""
    ctx = app.controller_command.make_context("controller", list(args))
    return controller_cli.rebalance_config(dict(ctx.params))


def test_flags_default_to_the_core_defaults_and_set_every_figure() -> None:
    assert parsed() == DEFAULT_CONFIG
    config = parsed("--no-rebalance", "--rebalance-enter-readings=8",
                    "--rebalance-recover-readings=4", "--rebalance-memory-floor-percent=5",
                    "--rebalance-utilization-excess-percent=60", "--rebalance-score-margin=0.3",
                    "--rebalance-cooldown=900", "--rebalance-min-runtime=0",
                    "--rebalance-max-moves-per-minute=20", "--rebalance-max-moves-per-node=1")
    assert config == RebalanceConfig(False, 8, 4, 5.0, 60.0, 0.3, 900, 0, 20, 1)


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_a_flag_out_of_range_is_refused_by_name(name: str) -> None:
    flag = controller_cli.rebalance_flag(name)
    low, high = BOUNDS[name]
    step = 1 if isinstance(low, int) else 0.001
    for bad in (low - step, high + step):
        result = CliRunner().invoke(app.controller_command, [f"{flag}={bad}"])
        assert result.exit_code == 2, result.output
        assert flag in result.output and "not in the range" in result.output


def test_the_flags_reach_the_controller_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[controller_cli.ControllerOptions] = []
    monkeypatch.setattr(controller_cli, "run", lambda options, *rest: seen.append(options))
    for command, extra in ((controller_cli.command, []),
                           (app.controller_command, ["--extender-port=0"])):
        result = CliRunner().invoke(command, ["--rebalance-cooldown=600", *extra])
        assert result.exit_code == 0, result.output
    assert [o.rebalance.cooldown_seconds for o in seen] == [600, 600]
    assert seen[0].rebalance == RebalanceConfig(cooldown_seconds=600)


# ------------------------------------------------------------------------------------ chart
VALUES = {camel(name): name for name in BOUNDS}


def controller_args(*sets: str) -> list[str]:
    docs = render(*sets)
    (args,) = [c["args"] for d in docs if d["kind"] == "Deployment"
               for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "controller"]
    assert args[0] == "controller"
    return list(args[1:])


def test_chart_defaults_equal_the_core_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["controller"]["rebalance"]
    assert values == {"enabled": True, **{key: getattr(DEFAULT_CONFIG, name)
                                          for key, name in VALUES.items()}}
    assert parsed(*controller_args()) == DEFAULT_CONFIG


def test_chart_values_reach_the_flags() -> None:
    sets = ("controller.rebalance.enabled=false", "controller.rebalance.cooldownSeconds=86400",
            "json:controller.rebalance.scoreMargin=0.25",
            "controller.rebalance.maxMovesPerMinute=1000",
            "json:controller.rebalance.memoryFloorPercent=2.5")
    config = parsed(*controller_args(*sets))
    assert config == RebalanceConfig(enabled=False, cooldown_seconds=86_400, score_margin=0.25,
                                     max_moves_per_minute=1000, memory_floor_percent=2.5)


def test_chart_schema_holds_the_same_bounds_and_is_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    node = schema["properties"]["controller"]["properties"]["rebalance"]
    assert node["additionalProperties"] is False
    assert set(node["properties"]) == {"enabled", *VALUES}
    for key, name in VALUES.items():
        low, high = BOUNDS[name]
        prop = node["properties"][key]
        assert (prop["minimum"], prop["maximum"]) == (low, high), key
        assert prop["type"] == ("integer" if isinstance(low, int) else "number"), key


@pytest.mark.parametrize("key", sorted(VALUES))
def test_chart_refuses_a_value_out_of_range_by_name(key: str) -> None:
    low, high = BOUNDS[VALUES[key]]
    step = 1 if isinstance(low, int) else 0.001
    for bad in (low - step, high + step):
        result = template_text(f"json:controller.rebalance.{key}={bad}", check=False)
        assert result.returncode != 0
        assert f"at '/controller/rebalance/{key}'" in result.stderr, result.stderr
        assert "imum: got" in result.stderr, result.stderr  # minimum or maximum, not the type


@pytest.mark.parametrize("setting", ["controller.rebalance.cooldown=300",
                                     "json:controller.rebalance.enabled=\"yes\"",
                                     "controller.rebalance.enterReadings=4.5"])
def test_chart_refuses_typos_and_wrong_types(setting: str) -> None:
    result = template_text(setting, check=False)
    assert result.returncode != 0
    assert "/controller/rebalance" in result.stderr or "'cooldown'" in result.stderr, \
        result.stderr
