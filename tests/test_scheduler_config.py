"""The shipped KubeSchedulerConfiguration says what the extender needs, exactly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from exo.gpu.devcluster import LocalCluster

CONFIG = Path(__file__).resolve().parent.parent / "manifests" / "scheduler-config.yaml"


def test_extender_entry() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    (extender,) = config["extenders"]
    assert extender["nodeCacheCapable"] is True
    assert extender["managedResources"] == [{"name": "gpu.exo.dev/gpu",
                                             "ignoredByScheduler": True}]
    assert (extender["filterVerb"], extender["prioritizeVerb"], extender["preemptVerb"],
            extender["bindVerb"]) == ("filter", "prioritize", "preempt", "bind")
    assert extender["ignorable"] is False
    assert extender["httpTimeout"] == "5s"
    # Mutual TLS by default: the scheduler verifies the extender and presents its certificate.
    assert extender["urlPrefix"].startswith("https://")
    assert extender["enableHTTPS"] is True
    assert set(extender["tlsConfig"]) == {"serverName", "caFile", "certFile", "keyFile"}
    known = {"urlPrefix", "filterVerb", "prioritizeVerb", "preemptVerb", "bindVerb", "weight",
             "enableHTTPS", "tlsConfig", "httpTimeout", "nodeCacheCapable", "managedResources",
             "ignorable"}
    assert set(extender) <= known


@pytest.mark.cluster
def test_real_kube_scheduler_accepts_it(kube_cluster: LocalCluster, tmp_path: Path) -> None:
    from exo.gpu.devcluster.pki import make_extender_pki

    config = yaml.safe_load(CONFIG.read_text())
    config["clientConnection"] = {"kubeconfig": kube_cluster.kubeconfig}
    # kube-scheduler reads the extender's TLS files at start: put files where the pod has them.
    pki = make_extender_pki(tmp_path / "pki")
    tls = config["extenders"][0]["tlsConfig"]
    tls.update(caFile=str(pki.ca_cert), certFile=str(pki.client_cert),
               keyFile=str(pki.client_key))
    source, written = tmp_path / "in.yaml", tmp_path / "out.yaml"
    source.write_text(yaml.safe_dump(config))
    assert kube_cluster.binaries is not None
    result = subprocess.run([str(kube_cluster.binaries.kube_scheduler), f"--config={source}",
                             f"--write-config-to={written}"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    (extender,) = yaml.safe_load(written.read_text())["extenders"]
    assert extender["bindVerb"] == "bind"
    assert extender["enableHTTPS"] is True
    assert extender["tlsConfig"]["certFile"] == str(pki.client_cert)
    assert extender["managedResources"][0]["ignoredByScheduler"] is True


def test_the_local_cluster_configures_the_scheduler_as_users_do() -> None:
    from exo.gpu.devcluster.cluster import extender_entry

    (extender,) = yaml.safe_load(CONFIG.read_text())["extenders"]
    assert extender_entry(extender["urlPrefix"], extender["tlsConfig"]) == extender
