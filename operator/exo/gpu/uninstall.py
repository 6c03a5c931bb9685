"""``exo-gpu cleanup``: remove what a release's components wrote, once the release is gone.

``helm uninstall`` deletes the chart's objects, but not what the running components created in
the API: the GPUDevices the exporters wrote (which would otherwise stay as devices nobody reports,
turning Stale) and the Leases of the controller and of the second scheduler. The chart runs this
command as a ``post-delete`` hook Job with its own short-lived ServiceAccount:

1. wait until no exporter, controller or scheduler pod of the release is left (an exporter still
   shutting down could otherwise write a device again after it was removed);
2. delete every GPUDevice whose identity an exporter wrote (field manager ``exo-gpu-exporter``),
   with a UID precondition; devices registered by hand (another field manager) stay;
3. delete the release's Leases by name.

Each step is idempotent: a run after a partial one (the Job restarted mid-way) removes what is
left; two copies running at once delete each object once between them (a gone object, 404, or
one re-created since, a UID precondition failing with 409, is skipped). When the API server is
unreachable the Job fails and Kubernetes retries it (``backoffLimit``) until its deadline; nothing
is removed while a release pod still runs.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

EXPORTER_FIELD_MANAGER = "exo-gpu-exporter"  # exo.gpu.exporter.kubeapi.FIELD_MANAGER
COMPONENTS = ("exporter", "controller", "scheduler")


def written_by_exporter(device: dict[str, Any]) -> bool:
    """Whether an exporter wrote this GPUDevice's identity (its spec)."""
    for entry in device.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == EXPORTER_FIELD_MANAGER and \
                "f:spec" in (entry.get("fieldsV1") or {}):
            return True
    return False


def _client() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client


def _release_pods(core: Any, namespace: str, instance: str) -> list[str]:
    selector = (f"app.kubernetes.io/instance={instance},"
                f"app.kubernetes.io/component in ({','.join(COMPONENTS)})")
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    return sorted(pod.metadata.name for pod in pods)


@click.command("cleanup")
@click.option("--namespace", required=True, help="The release's namespace.")
@click.option("--instance", required=True,
              help="The release's app.kubernetes.io/instance label (its name).")
@click.option("--lease", "leases", multiple=True, help="A Lease of the release to delete.")
@click.option("--wait", "wait_s", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the release's pods to end.")
def command(namespace: str, instance: str, leases: tuple[str, ...], wait_s: float) -> None:
    """Remove the GPUDevices and Leases a release's components created (helm post-delete)."""
    from kubernetes.client.rest import ApiException

    client = _client()
    core = client.CoreV1Api()
    deadline = time.monotonic() + wait_s
    while pods := _release_pods(core, namespace, instance):
        if time.monotonic() > deadline:
            click.echo(f"release pods still running after {wait_s:.0f} s: {', '.join(pods)}; "
                       "nothing removed", err=True)
            sys.exit(1)
        time.sleep(1.0)

    custom = client.CustomObjectsApi()
    devices = custom.list_cluster_custom_object("gpu.exo.dev", "v1alpha1", "gpudevices")
    removed = 0
    for device in devices.get("items", []):
        if not written_by_exporter(device):
            continue
        name = device["metadata"]["name"]
        try:
            custom.delete_cluster_custom_object(
                "gpu.exo.dev", "v1alpha1", "gpudevices", name,
                body=client.V1DeleteOptions(
                    preconditions=client.V1Preconditions(uid=device["metadata"]["uid"])))
            removed += 1
        except ApiException as error:
            if error.status not in (404, 409):  # gone already, or re-created since
                raise
    click.echo(f"removed {removed} GPUDevices written by exporters")

    coordination = client.CoordinationV1Api()
    for lease in leases:
        try:
            coordination.delete_namespaced_lease(lease, namespace)
            click.echo(f"removed Lease {namespace}/{lease}")
        except ApiException as error:
            if error.status != 404:
                raise
