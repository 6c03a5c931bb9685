"""The kubelet's part that a cluster of fake nodes needs, and nothing more.

Fake GPU nodes have no kubelet, so without help a bound pod stays Pending forever and a deleted
pod stays Terminating forever (which also blocks namespace deletion and garbage collection). This
runner watches pods bound to nodes labelled ``devcluster.exo.dev/fake=true`` and

- moves a bound Pending pod to Running (with Ready conditions and container statuses);
- moves a Running pod whose annotation ``devcluster.exo.dev/complete`` is ``Succeeded`` or
  ``Failed`` to that phase (tests use it to finish work);
- finalises a pod that is being deleted (``gracePeriodSeconds=0``), as a kubelet would once its
  containers stopped.

Run as ``python -m exo.gpu.devcluster.podrunner --kubeconfig PATH``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import time
from typing import Any

FAKE_NODE_LABEL = "devcluster.exo.dev/fake"
COMPLETE_ANNOTATION = "devcluster.exo.dev/complete"

log = logging.getLogger("exo.gpu.devcluster.podrunner")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def desired_action(pod: Any, fake_nodes: set[str]) -> str | None:
    """What the runner does to ``pod``: 'finalize', 'run', 'Succeeded', 'Failed' or None."""
    node = pod.spec.node_name
    if not node or node not in fake_nodes:
        return None
    if pod.metadata.deletion_timestamp is not None:
        return "finalize"
    phase = pod.status.phase if pod.status else None
    if phase == "Pending":
        return "run"
    wanted = (pod.metadata.annotations or {}).get(COMPLETE_ANNOTATION)
    if phase == "Running" and wanted in ("Succeeded", "Failed"):
        return str(wanted)
    return None


def _status_body(pod: Any, phase: str) -> dict[str, Any]:
    now = _now()
    running = phase == "Running"
    ready = "True" if running else "False"
    containers = []
    for container in pod.spec.containers:
        state: dict[str, Any] = (
            {"running": {"startedAt": now}} if running else
            {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1,
                            "reason": "Completed" if phase == "Succeeded" else "Error",
                            "startedAt": now, "finishedAt": now}})
        containers.append({"name": container.name, "image": container.image or "none",
                           "imageID": "", "ready": running, "restartCount": 0,
                           "started": running, "state": state})
    return {"status": {
        "phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
        "startTime": now,
        "conditions": [{"type": t, "status": ready if t in ("Ready", "ContainersReady")
                        else "True", "lastTransitionTime": now}
                       for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
        "containerStatuses": containers}}


def run(kubeconfig: str) -> None:
    from kubernetes import client, config, watch
    from kubernetes.client.rest import ApiException

    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    fake_nodes: set[str] = set()
    nodes_checked = 0.0

    def refresh_nodes() -> None:
        nonlocal nodes_checked
        nodes = core.list_node(label_selector=f"{FAKE_NODE_LABEL}=true")
        fake_nodes.clear()
        fake_nodes.update(n.metadata.name for n in nodes.items)
        nodes_checked = time.monotonic()

    def handle(pod: Any) -> None:
        if pod.spec.node_name and pod.spec.node_name not in fake_nodes:
            refresh_nodes()  # a node created after our last look
        action = desired_action(pod, fake_nodes)
        if action is None:
            return
        name, namespace = pod.metadata.name, pod.metadata.namespace
        try:
            if action == "finalize":
                core.delete_namespaced_pod(name, namespace, grace_period_seconds=0,
                                           body=client.V1DeleteOptions(grace_period_seconds=0))
            else:
                phase = "Running" if action == "run" else action
                core.patch_namespaced_pod_status(name, namespace, _status_body(pod, phase))
        except ApiException as error:
            if error.status not in (404, 409):
                log.warning("pod %s/%s: %s failed: %s", namespace, name, action, error.reason)

    while True:
        try:
            refresh_nodes()
            listing = core.list_pod_for_all_namespaces()
            for pod in listing.items:
                handle(pod)
            stream = watch.Watch().stream(core.list_pod_for_all_namespaces,
                                          resource_version=listing.metadata.resource_version,
                                          timeout_seconds=300, allow_watch_bookmarks=True)
            for event in stream:
                if event["type"] in ("ADDED", "MODIFIED"):
                    handle(event["object"])
                if time.monotonic() - nodes_checked > 30:
                    refresh_nodes()
        except ApiException as error:  # 410 Gone and friends: list again
            log.info("watch restarted: %s", error.reason)
        except Exception as error:  # the API server restarting, a dropped connection
            log.warning("watch failed, retrying: %s", error)
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run(args.kubeconfig)


if __name__ == "__main__":
    main()
