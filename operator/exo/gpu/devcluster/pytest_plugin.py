"""pytest fixtures backed by the local control plane (registered by the root conftest.py).

- ``kube_cluster`` (session): one real cluster for the whole run, with every CRD of ``crds/``
  applied and Established. Built binaries are reused from the cache, or built first.
- ``namespace``: a fresh namespace per test, deleted afterwards.
- ``gpu_nodes``: a factory of fake GPU nodes with names unique to the test, deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster import LocalCluster, apply_crds, wait_for
from .nodes import create_gpu_node


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory,
                 pytestconfig: pytest.Config) -> Iterator[LocalCluster]:
    cluster = LocalCluster(workdir=tmp_path_factory.mktemp("cluster"))
    with cluster:
        apply_crds(cluster, Path(pytestconfig.rootpath) / "crds")
        yield cluster


@pytest.fixture
def namespace(kube_cluster: LocalCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube_cluster.kubectl("create", "namespace", name)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def gpu_nodes(kube_cluster: LocalCluster) -> Iterator[Callable[..., Any]]:
    created: list[str] = []
    api = kube_cluster.api_client()
    suffix = uuid.uuid4().hex[:6]

    def make(name: str, **options: Any) -> Any:
        full = f"{name}-{suffix}"
        node = create_gpu_node(api, full, **options)
        created.append(full)
        return node

    yield make
    for name in created:
        kube_cluster.kubectl("delete", "node", name, "--wait=false", check=False)


__all__ = ["apply_crds", "gpu_nodes", "kube_cluster", "namespace", "wait_for"]
