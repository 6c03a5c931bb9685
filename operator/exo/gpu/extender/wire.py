"""The kube-scheduler extender wire format, parsed strictly and answered exactly.

Source of truth: ``k8s.io/kube-scheduler/extender/v1/types.go``. The Go structs carry no json
tags, so every key arrives PascalCase (``Pod``, ``Nodes``, ``NodeNames``); Go decodes our replies
case-insensitively but we answer PascalCase too. Parsing turns a request into plain data
(``PodRequest``, ``FilterArgs``, ``BindArgs``) or raises ``WireError`` naming the field and the
reason; nothing else in the extender looks at raw JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from exo.gpu import quantity
from exo.gpu.errors import InvalidRequestError
from exo.gpu.k8s.view import (
    ANNOTATION_DEVICE,
    ANNOTATION_DEVICE_AFFINITY,
    ANNOTATION_DEVICE_UUID,
    ANNOTATION_MIN_MEMORY,
    ANNOTATION_PACK_WITHIN,
    ANNOTATION_RESERVED,
    ANNOTATION_VENDOR,
    ANNOTATION_WORKLOAD,
    GPU_RESOURCE,
)
from exo.gpu.k8s.workload import DeviceAffinity
from exo.gpu.telemetry_protocol import Vendor
from exo.gpu.topology import DomainLevel

__all__ = [
    "ANNOTATION_DEVICE",
    "ANNOTATION_DEVICE_UUID",
    "ANNOTATION_RESERVED",
    "DEFAULT_SCHEDULER",
    "GPU_RESOURCE",
    "BindArgs",
    "FilterArgs",
    "PodRequest",
    "PreemptArgs",
    "WireError",
    "parse_bind_args",
    "parse_filter_args",
    "parse_pod",
    "parse_preempt_args",
    "parse_quantity",
    "preemption_result",
]

#: Most node names one request may carry. kube-scheduler sends at most its
#: percentageOfNodesToScore share (>= 100 nodes, about 500 at 5,000 nodes); a list 100x larger
#: is a broken or hostile client, refused before any work is done.
MAX_NODES_PER_REQUEST = 50_000
_VENDORS = tuple(v.value for v in Vendor)
#: What the API server puts in ``spec.schedulerName`` when a pod names none.
DEFAULT_SCHEDULER = "default-scheduler"
_PREEMPTION_POLICIES = ("PreemptLowerPriority", "Never")


class WireError(ValueError):
    """A request the extender cannot use: ``field`` names where, the message says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def parse_quantity(text: object, field: str) -> int:
    """A Kubernetes quantity ('8Gi', '500M', '1e9', '1073741824') as whole bytes."""
    try:
        return quantity.parse_quantity(text, field)
    except InvalidRequestError as error:
        raise WireError(field, error.reason) from None


@dataclass(frozen=True, slots=True)
class PodRequest:
    """What a pod asks of the extender, read from its spec and annotations."""

    namespace: str
    name: str
    uid: str
    gpus: int
    min_memory_bytes: int | None
    vendor: str | None
    planned_device: str | None
    workload: str | None
    node_name: str | None = None
    #: ``gpu.exo.dev/device-affinity``: required and preferred devices.
    affinity: DeviceAffinity | None = None
    #: ``gpu.exo.dev/pack-within``: the level whose domain the pod's workload uses.
    pack_within: DomainLevel | None = None
    #: ``spec.schedulerName`` (the API server's default when absent).
    scheduler_name: str = DEFAULT_SCHEDULER
    #: ``spec.priority``, resolved by the API server from the pod's PriorityClass (0 without).
    priority: int = 0
    #: ``spec.preemptionPolicy``: False for ``Never`` (the pod never evicts others).
    preempts: bool = True

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class FilterArgs:
    pod: PodRequest
    node_names: list[str]
    #: Whether the scheduler sent full Node objects (``nodeCacheCapable: false``); the reply
    #: must then carry ``Nodes`` too.
    nodes: list[Mapping[str, Any]] | None


@dataclass(frozen=True, slots=True)
class BindArgs:
    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise WireError(field, f"must be an object, got {type(value).__name__}")
    return value


def _string(value: Any, field: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise WireError(field, f"must be a non-empty string, got {value!r}")
    return value


def _gpu_count(containers: Any, field: str) -> int:
    if containers is None:
        return 0
    if not isinstance(containers, list):
        raise WireError(field, "must be a list of containers")
    total = 0
    for index, container in enumerate(containers):
        resources = _object(container, f"{field}[{index}]").get("resources") or {}
        resources = _object(resources, f"{field}[{index}].resources")
        amounts = []
        for kind in ("limits", "requests"):
            section = _object(resources.get(kind) or {}, f"{field}[{index}].resources.{kind}")
            if GPU_RESOURCE in section:
                amount = parse_quantity(section[GPU_RESOURCE],
                                        f"{field}[{index}].resources.{kind}[{GPU_RESOURCE}]")
                amounts.append(amount)
        total += max(amounts, default=0)
    return total


def parse_pod(value: Any, field: str = "Pod") -> PodRequest:
    """Read the GPU request of a v1.Pod (JSON form)."""
    pod = _object(value, field)
    metadata = _object(pod.get("metadata"), f"{field}.metadata")
    spec = _object(pod.get("spec") or {}, f"{field}.spec")
    annotations = _object(metadata.get("annotations") or {}, f"{field}.metadata.annotations")
    containers = _gpu_count(spec.get("containers"), f"{field}.spec.containers")
    init = _gpu_count(spec.get("initContainers"), f"{field}.spec.initContainers")
    min_memory = annotations.get(ANNOTATION_MIN_MEMORY)
    vendor = annotations.get(ANNOTATION_VENDOR)
    if vendor is not None:
        where = f"{field}.metadata.annotations[{ANNOTATION_VENDOR}]"
        vendor = _string(vendor, where).lower()
        if vendor not in _VENDORS:
            raise WireError(where, f"unknown vendor {vendor!r} (known: {', '.join(_VENDORS)})")
    affinity = _affinity(annotations.get(ANNOTATION_DEVICE_AFFINITY),
                         f"{field}.metadata.annotations[{ANNOTATION_DEVICE_AFFINITY}]")
    pack_within = annotations.get(ANNOTATION_PACK_WITHIN)
    if pack_within is not None:
        where = f"{field}.metadata.annotations[{ANNOTATION_PACK_WITHIN}]"
        try:
            pack_within = DomainLevel(_string(pack_within, where))
        except ValueError:
            known = ", ".join(level.value for level in DomainLevel)
            raise WireError(where, f"unknown topology level {pack_within!r} (known: {known})"
                            ) from None
    return PodRequest(
        namespace=_string(metadata.get("namespace") or "default", f"{field}.metadata.namespace"),
        name=_string(metadata.get("name"), f"{field}.metadata.name"),
        uid=_string(metadata.get("uid"), f"{field}.metadata.uid", required=False),
        # Init containers run before the app containers, so the pod needs the larger of the two.
        gpus=max(containers, init),
        min_memory_bytes=None if min_memory is None else parse_quantity(
            min_memory, f"{field}.metadata.annotations[{ANNOTATION_MIN_MEMORY}]"),
        vendor=vendor,
        planned_device=annotations.get(ANNOTATION_DEVICE) or None,
        workload=annotations.get(ANNOTATION_WORKLOAD) or None,
        node_name=spec.get("nodeName") or None,
        affinity=affinity,
        pack_within=pack_within,
        scheduler_name=_string(spec.get("schedulerName") or DEFAULT_SCHEDULER,
                               f"{field}.spec.schedulerName"),
        priority=_priority(spec.get("priority"), f"{field}.spec.priority"),
        preempts=_preemption_policy(spec.get("preemptionPolicy"),
                                    f"{field}.spec.preemptionPolicy"),
    )


def _affinity(text: Any, field: str) -> DeviceAffinity | None:
    """The pod's device affinity annotation (JSON), or a WireError naming the part at fault."""
    if text is None:
        return None
    try:
        data = json.loads(_string(text, field))
    except json.JSONDecodeError as error:
        raise WireError(field, f"not JSON: {error}") from None
    try:
        return DeviceAffinity.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = "".join(f".{part}" if isinstance(part, str) else f"[{part}]"
                        for part in first.get("loc", ()))
        raise WireError(f"{field}{where}", str(first.get("msg", "invalid"))) from None


def _priority(value: Any, field: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not \
            -(2**31) <= value < 2**31:
        raise WireError(field, f"must be a 32-bit integer, got {value!r}")
    return value


def _preemption_policy(value: Any, field: str) -> bool:
    if value is None:
        return True
    if value not in _PREEMPTION_POLICIES:
        raise WireError(field, f"must be one of {', '.join(_PREEMPTION_POLICIES)}, got "
                               f"{value!r}")
    return bool(value == "PreemptLowerPriority")


def parse_filter_args(body: Any) -> FilterArgs:
    """``ExtenderArgs``: {"Pod": v1.Pod, "Nodes": v1.NodeList | null, "NodeNames": [..] | null}."""
    args = _object(body, "ExtenderArgs")
    pod = parse_pod(args.get("Pod"))
    names_raw, nodes_raw = args.get("NodeNames"), args.get("Nodes")
    nodes: list[Mapping[str, Any]] | None = None
    if names_raw is not None:
        if not isinstance(names_raw, list):
            raise WireError("NodeNames", "must be a list of node names")
        names = [_string(n, f"NodeNames[{i}]") for i, n in enumerate(names_raw)]
    elif nodes_raw is not None:
        items = _object(nodes_raw, "Nodes").get("items") or []
        if not isinstance(items, list):
            raise WireError("Nodes.items", "must be a list of nodes")
        nodes = [_object(node, f"Nodes.items[{i}]") for i, node in enumerate(items)]
        names = [_string(_object(node.get("metadata"), f"Nodes.items[{i}].metadata").get("name"),
                         f"Nodes.items[{i}].metadata.name") for i, node in enumerate(nodes)]
    else:
        raise WireError("NodeNames", "neither NodeNames nor Nodes was sent")
    if len(names) > MAX_NODES_PER_REQUEST:
        raise WireError("NodeNames", f"{len(names)} nodes is above the limit of "
                                     f"{MAX_NODES_PER_REQUEST}")
    return FilterArgs(pod=pod, node_names=names, nodes=nodes)


def parse_bind_args(body: Any) -> BindArgs:
    """``ExtenderBindingArgs``: {"PodName", "PodNamespace", "PodUID", "Node"}."""
    args = _object(body, "ExtenderBindingArgs")
    return BindArgs(pod_name=_string(args.get("PodName"), "PodName"),
                    pod_namespace=_string(args.get("PodNamespace"), "PodNamespace"),
                    pod_uid=_string(args.get("PodUID"), "PodUID"),
                    node=_string(args.get("Node"), "Node"))


@dataclass(frozen=True, slots=True)
class PreemptArgs:
    """``ExtenderPreemptionArgs``: the pod and, per candidate node, the pods to evict there."""

    pod: PodRequest
    #: node -> (victim pod UIDs, number of PodDisruptionBudget violations)
    victims: dict[str, tuple[list[str], int]]


def parse_preempt_args(body: Any) -> PreemptArgs:
    """``{"Pod", "NodeNameToMetaVictims": {node: {"Pods": [{"UID"}], "NumPDBViolations"}}}``,
    or, from a scheduler without ``nodeCacheCapable``, ``NodeNameToVictims`` with whole pods."""
    args = _object(body, "ExtenderPreemptionArgs")
    pod = parse_pod(args.get("Pod"))
    meta = args.get("NodeNameToMetaVictims")
    full = args.get("NodeNameToVictims")
    key = "NodeNameToMetaVictims" if meta is not None else "NodeNameToVictims"
    raw = _object(meta if meta is not None else full if full is not None else {}, key)
    if len(raw) > MAX_NODES_PER_REQUEST:
        raise WireError(key, f"{len(raw)} nodes is above the limit of {MAX_NODES_PER_REQUEST}")
    victims: dict[str, tuple[list[str], int]] = {}
    for node, entry in raw.items():
        where = f"{key}[{node}]"
        entry = _object(entry, where)
        pods = entry.get("Pods") or []
        if not isinstance(pods, list):
            raise WireError(f"{where}.Pods", "must be a list of pods")
        uids = []
        for i, victim in enumerate(pods):
            victim = _object(victim, f"{where}.Pods[{i}]")
            uid = victim.get("UID") if meta is not None else \
                _object(victim.get("metadata"), f"{where}.Pods[{i}].metadata").get("uid")
            uids.append(_string(uid, f"{where}.Pods[{i}].UID"))
        violations = entry.get("NumPDBViolations") or 0
        if isinstance(violations, bool) or not isinstance(violations, int) or violations < 0:
            raise WireError(f"{where}.NumPDBViolations", "must be a non-negative integer")
        victims[_string(node, key)] = (uids, violations)
    return PreemptArgs(pod=pod, victims=victims)


def preemption_result(victims: Mapping[str, tuple[list[str], int]]) -> dict[str, Any]:
    """``ExtenderPreemptionResult``: the nodes (and victims) the extender agrees with."""
    return {"NodeNameToMetaVictims": {
        node: {"Pods": [{"UID": uid} for uid in uids], "NumPDBViolations": violations}
        for node, (uids, violations) in victims.items()}}


def filter_result(args: FilterArgs, passed: list[str], failed: Mapping[str, str],
                  unresolvable: Mapping[str, str], error: str = "") -> dict[str, Any]:
    """``ExtenderFilterResult``; with full Nodes in the request, the kept Nodes are echoed."""
    result: dict[str, Any] = {
        "NodeNames": passed, "FailedNodes": dict(failed),
        "FailedAndUnresolvableNodes": dict(unresolvable), "Error": error,
        "Nodes": None,
    }
    if args.nodes is not None:
        keep = set(passed)
        result["Nodes"] = {"items": [n for n in args.nodes
                                     if n.get("metadata", {}).get("name") in keep]}
    return result


def error_filter_result(message: str) -> dict[str, Any]:
    return {"NodeNames": None, "Nodes": None, "FailedNodes": {},
            "FailedAndUnresolvableNodes": {}, "Error": message}


def priority_list(scores: Mapping[str, int]) -> list[dict[str, Any]]:
    """``HostPriorityList``: [{"Host": name, "Score": 0..10}]."""
    return [{"Host": host, "Score": int(score)} for host, score in scores.items()]


def binding_result(error: str = "") -> dict[str, str]:
    return {"Error": error}


