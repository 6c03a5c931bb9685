"""The controller's score and allocation on GPUDevice status, accepted by the real API server."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kubernetes import client

from exo.gpu.controller.api import ControllerAPI
from exo.gpu.controller.controller import Controller
from exo.gpu.devcluster import LocalCluster
from exo.gpu.k8s.view import ClusterView, Reservation

pytestmark = pytest.mark.cluster

GIB = 2**30


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def test_score_and_allocation_are_written_and_read_back(kube_cluster: LocalCluster) -> None:
    api_client = kube_cluster.api_client()
    custom = client.CustomObjectsApi(api_client)
    node = f"summary-{uuid.uuid4().hex[:6]}"
    name = f"{node}-nvidia-0"
    custom.create_cluster_custom_object("gpu.exo.dev", "v1alpha1", "gpudevices", {
        "apiVersion": "gpu.exo.dev/v1alpha1", "kind": "GPUDevice",
        "metadata": {"name": name, "labels": {"gpu.exo.dev/node": node}},
        "spec": {"node": node, "vendor": "nvidia", "index": 0, "model": "H100",
                 "memoryTotalBytes": 80 * GIB, "computeCapacity": 990.0}})
    now = time.time()
    written: dict[str, Any] = custom.patch_cluster_custom_object_status(
        "gpu.exo.dev", "v1alpha1", "gpudevices", name, {"status": {
            "metrics": {"timestamp": _iso(now), "memoryUsedBytes": 8 * GIB,
                        "computeUtilizationPercent": 25.0, "temperatureCelsius": 50.0,
                        "powerWatts": 300.0, "clockRateMHz": 1700}}})
    try:
        view = ClusterView()
        view.apply_device(written)
        view.commit(Reservation("uid-a", "team/train", node, (name,), 24 * GIB))
        controller = Controller(view=view, api=ControllerAPI(api_client))
        assert controller.publish_summaries_once() == 1

        status = custom.get_cluster_custom_object("gpu.exo.dev", "v1alpha1", "gpudevices",
                                                  name)["status"]
        assert status["allocation"] == {"podCount": 1, "memoryReservedBytes": 24 * GIB,
                                        "pods": ["team/train"]}
        expected = view.node_slots(node)[name].score
        assert status["score"] == pytest.approx(expected, abs=0.001)
        assert status["metrics"]["memoryUsedBytes"] == 8 * GIB  # the exporter's part is kept
        wide = kube_cluster.kubectl("get", "gpudevice", name, "-o", "wide").stdout
        assert f"{expected:.3f}".rstrip("0") in wide
    finally:
        custom.delete_cluster_custom_object("gpu.exo.dev", "v1alpha1", "gpudevices", name)
