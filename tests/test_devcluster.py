"""The local control-plane harness, without a cluster: manifests, decisions, configuration."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from exo.gpu.devcluster import LocalCluster, gpu_node, wait_for
from exo.gpu.devcluster.binaries import _version_ldflags, cache_root, tools_dir
from exo.gpu.devcluster.podrunner import COMPLETE_ANNOTATION, desired_action


def _pod(node: str | None, phase: str = "Pending", deleting: bool = False,
         annotations: dict[str, str] | None = None) -> Any:
    return SimpleNamespace(
        spec=SimpleNamespace(node_name=node),
        status=SimpleNamespace(phase=phase),
        metadata=SimpleNamespace(deletion_timestamp="now" if deleting else None,
                                 annotations=annotations))


class TestPodRunnerDecisions:
    @pytest.mark.parametrize(("pod", "expected"), [
        (_pod(None), None),                                   # not bound yet: scheduler's job
        (_pod("real-node"), None),                            # a node with a real kubelet
        (_pod("fake"), "run"),
        (_pod("fake", "Running"), None),
        (_pod("fake", "Running", deleting=True), "finalize"),
        (_pod("fake", "Running", annotations={COMPLETE_ANNOTATION: "Succeeded"}),
         "Succeeded"),
        (_pod("fake", "Running", annotations={COMPLETE_ANNOTATION: "Failed"}), "Failed"),
        (_pod("fake", "Running", annotations={COMPLETE_ANNOTATION: "Bogus"}), None),
        (_pod("fake", "Succeeded", annotations={COMPLETE_ANNOTATION: "Succeeded"}), None),
    ])
    def test_action(self, pod: Any, expected: str | None) -> None:
        assert desired_action(pod, {"fake"}) == expected


class TestFakeNodes:
    def test_gpu_node_advertises_gpus_pods_and_labels(self) -> None:
        node = gpu_node("n1", vendor="amd", model="Instinct MI300X", gpus=8, pods=50)
        allocatable = node["status"]["allocatable"]
        assert allocatable["gpu.exo.dev/gpu"] == "8"
        assert allocatable["pods"] == "50"
        assert node["status"]["capacity"] == allocatable
        labels = node["metadata"]["labels"]
        assert labels["gpu.exo.dev/vendor"] == "amd"
        assert labels["gpu.exo.dev/model"] == "Instinct-MI300X"  # label values have no spaces
        assert labels["devcluster.exo.dev/fake"] == "true"
        assert not node["spec"].get("taints")

    def test_cpu_node_has_no_gpu_resource(self) -> None:
        assert "gpu.exo.dev/gpu" not in gpu_node("cpu")["status"]["allocatable"]


class TestBinaries:
    def test_version_ldflags_set_both_version_packages(self) -> None:
        flags = _version_ldflags("v1.37.2")
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            assert f"-X {package}.gitVersion=v1.37.2" in flags
            assert f"-X {package}.gitMinor=37" in flags

    def test_cache_is_outside_the_repository(self, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
        monkeypatch.setenv("EXO_GPU_CACHE", str(tmp_path))
        assert cache_root() == tmp_path
        monkeypatch.delenv("EXO_GPU_CACHE")
        assert not cache_root().resolve().is_relative_to(tools_dir().parent.parent.resolve())

    def test_tool_module_pins_every_staging_module(self) -> None:
        go_mod = (tools_dir() / "k8s" / "go.mod").read_text()
        assert "require k8s.io/kubernetes v1.37.2" in go_mod or \
            "k8s.io/kubernetes v1.37.2" in go_mod
        replaced = [line for line in go_mod.splitlines() if "=> k8s.io/" in line]
        assert len(replaced) == 33
        assert all(line.strip().endswith("v0.37.2") for line in replaced)


class TestSchedulerConfig:
    def test_without_extenders(self, tmp_path: Path) -> None:
        config = LocalCluster(workdir=tmp_path).scheduler_config()
        assert config["kind"] == "KubeSchedulerConfiguration"
        assert config["leaderElection"] == {"leaderElect": False}
        assert "extenders" not in config

    def test_extenders_are_passed_through(self, tmp_path: Path) -> None:
        extender = {"urlPrefix": "http://127.0.0.1:1/x", "filterVerb": "filter"}
        config = LocalCluster(workdir=tmp_path, extenders=[extender]).scheduler_config()
        assert config["extenders"] == [extender]


class TestWaitFor:
    def test_returns_once_true(self) -> None:
        calls = iter([False, False, True])
        wait_for(lambda: next(calls), timeout=5, what="x", interval=0)

    def test_timeout_names_what_and_last_error(self) -> None:
        def broken() -> bool:
            raise ValueError("boom")

        with pytest.raises(TimeoutError, match=r"waiting for the thing.*boom"):
            wait_for(broken, timeout=0.05, what="the thing", interval=0.01)
