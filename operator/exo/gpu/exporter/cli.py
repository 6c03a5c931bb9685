"""``exo-gpu exporter``: run the node agent and its metrics server until SIGTERM.

Configuration errors (an unreadable or invalid fleet file, a node missing from it, an unknown
backend, a backend that cannot run on this node, ``auto`` finding no GPU, an unusable kubeconfig)
stop the command at start with the reason; everything that can go wrong later (backend errors,
API outages) is handled by the agent without exiting. On SIGTERM or SIGINT the current cycle
finishes, the HTTP server and API session close and the backend is shut down, within the pod's
termination grace period.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from .agent import DEFAULT_POLICY, AgentConfig, DeviceAgent
from .backends import (
    BACKEND_NAMES,
    Backend,
    BackendError,
    BackendUnavailable,
    GuardedBackend,
    auto_factories,
    load_backend,
)
from .backends.auto import choose_backend
from .backends.simulated import SimulatedBackend
from .fleet import FleetError
from .kubeapi import GPUDeviceAPI, KubeConfig
from .metrics import ExporterMetrics
from .server import start_server


@click.command(name="exporter")
@click.option(
    "--node",
    envvar="NODE_NAME",
    required=True,
    help="Kubernetes node this exporter reports for (env NODE_NAME).",
)
@click.option(
    "--backend",
    type=click.Choice(("auto", *BACKEND_NAMES)),
    default="auto",
    show_default=True,
    envvar="EXO_GPU_BACKEND",
    help="Where device data comes from; auto: the first of nvml, amd, intel, drm, apple that "
    "finds a GPU on this node.",
)
@click.option(
    "--sysfs-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/sys"),
    show_default=True,
    envvar="EXO_GPU_SYSFS_ROOT",
    help="Root of the sysfs tree the drm backend reads (the host's /sys mounted elsewhere, or a "
    "recorded tree).",
)
@click.option(
    "--procfs-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/proc"),
    show_default=True,
    envvar="EXO_GPU_PROCFS_ROOT",
    help="Root of the procfs tree the drm backend reads meminfo from (shared-memory GPUs).",
)
@click.option(
    "--fleet",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="EXO_GPU_FLEET",
    help="Fleet file for --backend simulated.",
)
@click.option(
    "--fleet-start",
    type=float,
    default=None,
    help="Epoch second the simulation started (share it between exporters).",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.1, 60),
    default=2.0,
    show_default=True,
    help="Seconds between backend polls.",
)
@click.option(
    "--report-interval",
    type=click.FloatRange(5, 3600),
    default=DEFAULT_POLICY.heartbeat_s,
    show_default=True,
    envvar="EXO_GPU_REPORT_INTERVAL",
    help="Seconds between status writes of an unchanged device (the heartbeat). The controller's "
    "--reporting-interval must be the same: a device is stale after 3 of them without a write.",
)
@click.option(
    "--call-timeout",
    type=click.FloatRange(0.05, 60),
    default=2.0,
    show_default=True,
    help="Deadline of every backend call, seconds.",
)
@click.option(
    "--vanish-grace",
    type=click.FloatRange(0),
    default=300.0,
    show_default=True,
    help="Seconds a vanished device's object is kept (Ready=False) before deletion.",
)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config).",
)
@click.option("--metrics-host", default="0.0.0.0", show_default=True)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=9400, show_default=True)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--probe",
    is_flag=True,
    help="Discover, read and health-check every device once, print JSON and exit (no API).",
)
def command(
    node: str,
    backend: str,
    sysfs_root: Path,
    procfs_root: Path,
    fleet: Path | None,
    fleet_start: float | None,
    poll_interval: float,
    report_interval: float,
    call_timeout: float,
    vanish_grace: float,
    kubeconfig: Path | None,
    metrics_host: str,
    metrics_port: int,
    log_level: str,
    probe: bool,
) -> None:
    """Report this node's GPUs as GPUDevice objects and Prometheus metrics."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log = logging.getLogger("exo.gpu.exporter")
    candidates: tuple[tuple[str, str], ...] = ()
    try:
        if backend == "auto":
            choice = choose_backend(auto_factories(node, sysfs_root, procfs_root), call_timeout)
            guarded, candidates = choice.backend, choice.candidates
            log.info("backend auto chose %s (%s)", guarded.name, choice.summary)
        else:
            raw = load_backend(
                backend, node=node, fleet=fleet, sysfs_root=sysfs_root, procfs_root=procfs_root
            )
            if fleet_start is not None and isinstance(raw, SimulatedBackend):
                raw.start = fleet_start
            guarded = GuardedBackend(raw, call_timeout)
    except (FleetError, BackendUnavailable, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if probe:
        try:
            report = probe_backend(guarded)
        except BackendError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            guarded.close()
        report["requested"] = backend
        if candidates:
            report["candidates"] = [{"backend": n, "outcome": o} for n, o in candidates]
        click.echo(json.dumps(report, indent=2))
        return
    try:
        kube = KubeConfig.load(kubeconfig)
    except (ValueError, OSError, KeyError) as exc:
        guarded.close()
        raise click.ClickException(f"kubeconfig: {exc}") from exc
    config = AgentConfig(
        node=node,
        poll_interval_s=poll_interval,
        vanish_grace_s=vanish_grace,
        policy=replace(DEFAULT_POLICY, heartbeat_s=report_interval),
    )
    asyncio.run(_serve(config, guarded, kube, metrics_host, metrics_port, requested=backend))


def probe_backend(backend: Backend) -> dict[str, Any]:
    """One discovery, read and health check of every device, as JSON-ready data.

    What a person runs on a new node to see what the exporter would report (and how long each
    call takes) before deploying it. Devices a backend saw and does not report (the drm
    backend's ``skipped``) are listed with the reason.
    """
    started = time.perf_counter()
    devices = backend.discover()
    report: dict[str, Any] = {
        "backend": backend.name,
        "discover_ms": round((time.perf_counter() - started) * 1000, 3),
        "devices": [],
    }
    inner = backend.backend if isinstance(backend, GuardedBackend) else backend
    skipped = getattr(inner, "skipped", None)
    if skipped:
        report["skipped"] = [{"where": s.where, "reason": s.reason} for s in skipped]
    for info in devices:
        entry: dict[str, Any] = {"identity": info.model_dump(mode="json", exclude_none=True)}
        started = time.perf_counter()
        try:
            entry["sample"] = backend.read(info).model_dump(mode="json")
        except BackendError as exc:
            entry["read_error"] = {"reason": exc.reason, "message": str(exc)}
        except ValidationError as exc:
            entry["read_error"] = {"reason": "InvalidReading", "message": str(exc)}
        entry["read_ms"] = round((time.perf_counter() - started) * 1000, 3)
        try:
            health = backend.health(info)
            entry["health"] = {
                "healthy": health.healthy,
                "reason": health.reason,
                "message": health.message,
            }
        except BackendError as exc:
            entry["health"] = {"healthy": False, "reason": exc.reason, "message": str(exc)}
        report["devices"].append(entry)
    return report


async def _serve(
    config: AgentConfig,
    backend: GuardedBackend,
    kube: KubeConfig,
    host: str,
    port: int,
    requested: str,
) -> None:
    api = GPUDeviceAPI(kube)
    metrics = ExporterMetrics(hostname=config.node)
    metrics.backend_info.labels(backend.name, requested).set(1)
    agent = DeviceAgent(config, backend, api, metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    runner = await start_server(agent, host, port)
    log = logging.getLogger("exo.gpu.exporter")
    log.info(
        "exporter for node %s: backend %s, metrics on %s:%d", config.node, backend.name, host, port
    )
    try:
        await agent.run()
    finally:
        log.info("shutting down")
        await runner.cleanup()
        await api.close()
        await agent.aclose()
