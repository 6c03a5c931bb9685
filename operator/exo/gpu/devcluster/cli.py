"""``exo-gpu cluster up|down|status|build``: the local control plane from the command line.

``up`` leaves the cluster running in the background (``make cluster``) and prints its kubeconfig;
``down`` stops it from the state file in the work folder (``make cluster-down``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .binaries import ensure_binaries, ensure_helm
from .cluster import STATE_FILE, LocalCluster, apply_crds, stop_detached

_WORKDIR = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
                        default=Path(".cluster"), show_default=True,
                        help="Folder holding the cluster's data, logs, certificates and state.")


@click.group("cluster")
def command() -> None:
    """Run a local Kubernetes control plane from real binaries (no container engine)."""


@command.command("build")
@click.option("--helm/--no-helm", default=False, help="Also build helm.")
def build(helm: bool) -> None:
    """Build (or find in the cache) every control-plane binary and print their paths."""
    binaries = ensure_binaries()
    for name, path in vars(binaries).items():
        click.echo(f"{name:24} {path}")
    if helm:
        click.echo(f"{'helm':24} {ensure_helm()}")


@command.command("image")
@click.option("--base", default=None,
              help="Base image for the Dockerfile (default: python:3.11-slim-bookworm when a "
                   "registry answers, else a Debian bookworm base built from Debian packages).")
@click.option("--extras", default=None, help="Build argument EXTRAS (default: the Dockerfile's).")
@click.option("--ca-bundle", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None,
              help="Extra CA bundle for a TLS-intercepting proxy, given to the build as a secret "
                   "(default: $EXO_GPU_CA_BUNDLE, else the bundle pip uses here, if any).")
@click.option("--force", is_flag=True, help="Build even when an image of the same inputs exists.")
def image(base: str | None, extras: str | None, ca_bundle: Path | None, force: bool) -> None:
    """Build the Dockerfile's image with podman (no Docker engine) and print its size."""
    from .images import build_image

    built = build_image(base=base, extras=extras, ca_bundle=ca_bundle, force=force)
    click.echo(f"{built.reference} ({'built' if built.built else 'unchanged, reused'}; "
               f"base {built.base})")
    click.echo(f"tags: {', '.join(built.tags)}")
    click.echo(f"image size: {built.size_bytes / 1e6:.0f} MB")


@command.command("up")
@_WORKDIR
@click.option("--crds", type=click.Path(file_okay=False, path_type=Path), default=Path("crds"),
              show_default=True, help="Apply every CRD YAML of this folder once ready.")
def up(workdir: Path, crds: Path) -> None:
    """Start the control plane in the background and print the kubeconfig path."""
    if (workdir / STATE_FILE).exists():
        state = json.loads((workdir / STATE_FILE).read_text())
        click.echo(f"already running; export KUBECONFIG={state['kubeconfig']}")
        return
    cluster = LocalCluster(workdir=workdir, detach=True).start()
    if crds.is_dir():
        apply_crds(cluster, crds)
    click.echo(f"export KUBECONFIG={cluster.kubeconfig}")
    click.echo(f"stop it with: exo-gpu cluster down --workdir {workdir}")


@command.command("down")
@_WORKDIR
def down(workdir: Path) -> None:
    """Stop a control plane started with ``up``."""
    pids = stop_detached(workdir)
    click.echo(f"stopped {len(pids)} processes" if pids else "no cluster running there")


@command.command("status")
@_WORKDIR
def status(workdir: Path) -> None:
    """Print the state of a control plane started with ``up``."""
    state_path = workdir / STATE_FILE
    if not state_path.exists():
        click.echo("no cluster running there")
        sys.exit(1)
    click.echo(state_path.read_text())


@click.command("up")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".demo"), show_default=True,
              help="Folder for the demo's cluster data and component logs.")
@click.option("--kubeconfig", default=None,
              help="Target this existing cluster instead of starting a local one "
                   "(no Nodes are created and its scheduler is left alone).")
@click.option("--timeout", default=180.0, show_default=True, type=float,
              help="Seconds to wait for devices and placements.")
def up_command(workdir: Path, kubeconfig: str | None, timeout: float) -> None:
    """Run the whole system on simulated GPUs and show where everything went and why."""
    from .demo import Demo

    sys.exit(Demo(workdir=workdir.resolve(), kubeconfig=kubeconfig, timeout=timeout).run())
