"""The programs of the local cluster's real node, built from Go modules and cached.

- kubelet and kube-proxy, from ``k8s.io/kubernetes`` through the same tool module as the
  control plane (``e2e/tools/k8s``), with the same version flags;
- ``pause``, the sandbox process of every pod (``e2e/tools/pause``: there is no registry to pull
  the upstream image from);
- CoreDNS with the plugins the cluster DNS needs (``e2e/tools/coredns``), so pods resolve
  Services by name as in any cluster.

Like the control plane, each lands in ``<cache>/<name>/<version>/`` and is built only when
missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .binaries import (
    KUBERNETES_VERSION,
    Progress,
    _go_build,
    _stderr_progress,
    _version_ldflags,
    cache_root,
    tools_dir,
)

NODE_COMMANDS = ("kubelet", "kube-proxy")
COREDNS_VERSION = "v1.15.0"  # the version e2e/tools/coredns/go.mod requires
PAUSE_VERSION = "1"  # bump when e2e/tools/pause/main.go changes


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    kube_proxy: Path
    pause: Path
    coredns: Path


def ensure_node_binaries(version: str = KUBERNETES_VERSION, progress: Progress | None = None
                         ) -> NodeBinaries:
    """kubelet, kube-proxy, pause and CoreDNS, each built first where missing."""
    progress = progress or _stderr_progress
    k8s = cache_root() / "k8s-node" / version
    if not all((k8s / name).is_file() for name in NODE_COMMANDS):
        _go_build(tools_dir() / "k8s", k8s,
                  [f"k8s.io/kubernetes/cmd/{name}" for name in NODE_COMMANDS],
                  _version_ldflags(version), progress)
    pause = cache_root() / "pause" / PAUSE_VERSION
    if not (pause / "pause").is_file():
        _go_build(tools_dir() / "pause", pause, ["exo.dev/e2e/tools/pause"], "-s -w", progress)
    coredns = cache_root() / "coredns" / COREDNS_VERSION
    if not (coredns / "coredns").is_file():
        _go_build(tools_dir() / "coredns", coredns, ["exo.dev/e2e/tools/coredns"],
                  f"-s -w -X github.com/coredns/coredns/coremain.GitCommit={COREDNS_VERSION}",
                  progress)
    return NodeBinaries(kubelet=k8s / "kubelet", kube_proxy=k8s / "kube-proxy",
                        pause=pause / "pause", coredns=coredns / "coredns")
