"""The pods of a GPUWorkload: what the controller creates for each placement (pure).

``build_pod`` turns the workload's template and one placement into the pod DESIGN.md section 7
describes; ``label_value`` keeps a workload name usable as a label value.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from typing import Any

from ..k8s.models import GROUP, VERSION
from ..k8s.view import (
    ANNOTATION_DEVICE,
    ANNOTATION_DEVICE_UUID,
    ANNOTATION_MIN_MEMORY,
    ANNOTATION_TASKS,
    ANNOTATION_VENDOR,
    ANNOTATION_WORKLOAD,
    GPU_RESOURCE,
)
from ..k8s.workload import KIND, GPUWorkload
from .planning import PlannedPlacement

#: Label on controller-made pods (the annotation of the same name carries the same value).
LABEL_WORKLOAD = ANNOTATION_WORKLOAD

#: Environment variables that make a vendor's runtime see exactly the bound device.
VISIBLE_DEVICE_ENV: dict[str, tuple[str, ...]] = {
    "nvidia": ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"),
    "amd": ("ROCR_VISIBLE_DEVICES",),
    "intel": ("ZE_AFFINITY_MASK",),
}


def build_pod(body: Mapping[str, Any], workload: GPUWorkload, placement: PlannedPlacement,
              name: str) -> dict[str, Any]:
    """The pod that runs ``placement`` (DESIGN.md section 7).

    From the workload's template: owner reference to the workload (garbage collection deletes
    the pod with it), the workload/device/tasks annotations, one ``gpu.exo.dev/gpu`` on the first
    container, the vendor's visible-device variables from the downward API (the extender writes
    ``gpu.exo.dev/device-uuid`` at bind), ``EXO_GPU_TASKS``, and a required node affinity to the
    planned device's node so kube-scheduler and the extender place it where the plan says.
    """
    raw = (body.get("spec") or {}).get("template") or {}
    template = copy.deepcopy(dict(raw))
    metadata = template.get("metadata") or {}
    spec = template.get("spec") or {}
    workload_name = workload.name
    labels = {**(metadata.get("labels") or {}), LABEL_WORKLOAD: label_value(workload_name)}
    annotations = {
        **(metadata.get("annotations") or {}),
        ANNOTATION_WORKLOAD: workload_name,
        ANNOTATION_DEVICE: placement.device,
        ANNOTATION_TASKS: placement.tasks_text,
    }
    if placement.vendor:
        annotations[ANNOTATION_VENDOR] = placement.vendor
    if workload.spec.min_memory_bytes is not None:
        annotations[ANNOTATION_MIN_MEMORY] = str(workload.spec.min_memory())
    env = [{"name": var, "valueFrom": {"fieldRef": {
        "fieldPath": f"metadata.annotations['{ANNOTATION_DEVICE_UUID}']"}}}
        for var in VISIBLE_DEVICE_ENV.get(placement.vendor, ())]
    env += [{"name": "EXO_GPU_TASKS", "value": ",".join(placement.tasks)},
            {"name": "EXO_GPU_WORKLOAD", "value": workload_name},
            {"name": "EXO_GPU_DEVICE", "value": placement.device}]
    names = {e["name"] for e in env}
    containers = spec.get("containers") or []
    for i, container in enumerate(containers):
        container["env"] = [e for e in container.get("env") or [] if e.get("name") not in names]
        container["env"] += copy.deepcopy(env)
        if i == 0:
            resources = container.setdefault("resources", {})
            resources.setdefault("limits", {})[GPU_RESOURCE] = "1"
            if GPU_RESOURCE in (resources.get("requests") or {}):
                resources["requests"][GPU_RESOURCE] = "1"
    spec.setdefault("restartPolicy", "Never")
    if placement.node:
        _pin_to_node(spec, placement.node)
    body_metadata = body.get("metadata") or {}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": body_metadata.get("namespace"),
            "labels": labels, "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                "name": body_metadata.get("name"), "uid": body_metadata.get("uid"),
                "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": spec,
    }


def label_value(name: str) -> str:
    """A valid label value for a workload name (names may be longer than labels allow)."""
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[:52].rstrip('-.')}-{digest}"


def _pin_to_node(spec: dict[str, Any], node: str) -> None:
    term_field = {"key": "metadata.name", "operator": "In", "values": [node]}
    affinity = spec.setdefault("affinity", {})
    node_affinity = affinity.setdefault("nodeAffinity", {})
    required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({})
    for term in terms:
        term.setdefault("matchFields", []).append(dict(term_field))
