"""The real API server holds ``GPUWorkload.spec.rebalance`` to its bounds, naming the field, and
stores good figures as given (the CRD in crds/, generated from the model)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from exo.gpu.devcluster import LocalCluster
from exo.gpu.rebalance import BOUNDS

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "gpu.exo.dev", "v1alpha1", "gpuworkloads"


def body(name: str, rebalance: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload",
            "metadata": {"name": name}, "spec": {"tasks": 2, "rebalance": rebalance}}


@pytest.mark.parametrize(("rebalance", "field"), [
    ({"enabled": True, "cooldownSeconds": BOUNDS["cooldown_seconds"][0] - 1},
     "spec.rebalance.cooldownSeconds"),
    ({"enabled": True, "cooldownSeconds": BOUNDS["cooldown_seconds"][1] + 1},
     "spec.rebalance.cooldownSeconds"),
    ({"enabled": True, "cooldownSeconds": "5m"}, "spec.rebalance.cooldownSeconds"),
    ({"enabled": True, "minRuntimeSeconds": -1}, "spec.rebalance.minRuntimeSeconds"),
    ({"enabled": True, "minRuntimeSeconds": 90_000}, "spec.rebalance.minRuntimeSeconds"),
    ({"enabled": "yes"}, "spec.rebalance.enabled"),
])
def test_the_api_server_refuses_rebalance_figures_out_of_range(
        kube_cluster: LocalCluster, namespace: str, rebalance: dict[str, Any],
        field: str) -> None:
    api = client.CustomObjectsApi(kube_cluster.api_client())
    with pytest.raises(ApiException) as caught:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                            body("bad", rebalance))
    assert caught.value.status == 422
    assert field in caught.value.body, caught.value.body
    with pytest.raises(ApiException, match="Not Found"):
        api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bad")


def test_the_api_server_stores_good_figures_and_the_default(kube_cluster: LocalCluster,
                                                            namespace: str) -> None:
    api = client.CustomObjectsApi(kube_cluster.api_client())
    low, high = BOUNDS["cooldown_seconds"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body(
        "edges", {"enabled": True, "cooldownSeconds": low, "minRuntimeSeconds": 0}))
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body(
        "defaults", {"cooldownSeconds": high}))
    edges = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "edges")
    assert edges["spec"]["rebalance"] == {"enabled": True, "cooldownSeconds": low,
                                          "minRuntimeSeconds": 0}
    defaults = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "defaults")
    assert defaults["spec"]["rebalance"] == {"enabled": False, "cooldownSeconds": high}
