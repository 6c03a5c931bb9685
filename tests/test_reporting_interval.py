"""One reporting interval: the exporter's heartbeat (--report-interval) and the controller's
staleness limit (--reporting-interval, 3 intervals) come from the same setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from exo.gpu.controller import cli as controller_cli
from exo.gpu.exporter import cli as exporter_cli
from test_exporter_backends import demo_fleet_path


def exporter_args(*extra: str) -> list[str]:
    return ["--node", "gpu-node-b", "--backend", "simulated", "--fleet",
            str(demo_fleet_path()), *extra]


def test_the_exporter_heartbeats_at_the_report_interval(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def serve(config: Any, *_: Any, **__: Any) -> None:
        seen["config"] = config

    monkeypatch.setattr(exporter_cli, "_serve", serve)
    monkeypatch.setattr(exporter_cli.KubeConfig, "load", staticmethod(lambda _: object()))
    result = CliRunner().invoke(exporter_cli.command, exporter_args("--report-interval", "45"))
    assert result.exit_code == 0, result.output
    assert seen["config"].policy.heartbeat_s == 45.0
    result = CliRunner().invoke(exporter_cli.command, exporter_args())
    assert seen["config"].policy.heartbeat_s == 30.0


@pytest.mark.parametrize("value", ["4", "0", "3601", "soon"])
def test_bad_report_intervals_name_the_flag(value: str) -> None:
    result = CliRunner().invoke(exporter_cli.command, exporter_args("--report-interval", value))
    assert result.exit_code == 2
    assert "--report-interval" in result.output


@pytest.mark.parametrize("value", ["4", "-1", "soon"])
def test_bad_reporting_intervals_name_the_flag(value: str) -> None:
    result = CliRunner().invoke(controller_cli.command, ["--reporting-interval", value])
    assert result.exit_code == 2
    assert "--reporting-interval" in result.output


def test_the_controller_derives_staleness_from_the_reporting_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[controller_cli.ControllerOptions] = []
    monkeypatch.setattr(controller_cli, "run", seen.append)
    result = CliRunner().invoke(controller_cli.command, ["--reporting-interval", "45"])
    assert result.exit_code == 0, result.output
    policy = seen[0].policy()
    assert policy.reporting_interval_seconds == 45.0
    assert policy.stale_after_seconds == 135.0


def test_the_extender_on_its_own_takes_the_same_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from exo.gpu.extender import cli as extender_cli

    seen: dict[str, Any] = {}

    async def serve(*args: Any, reporting_interval: float, **_: Any) -> None:
        seen["interval"] = reporting_interval

    monkeypatch.setattr(extender_cli, "serve", serve)
    result = CliRunner().invoke(extender_cli.command,
                                 ["--plain-http", "--reporting-interval", "60"])
    assert result.exit_code == 0, result.output
    assert seen["interval"] == 60.0
    bad = CliRunner().invoke(extender_cli.command,
                             ["--plain-http", "--reporting-interval", "1"])
    assert bad.exit_code == 2 and "--reporting-interval" in bad.output
