"""Pydantic models of the ``gpu.exo.dev/v1alpha1`` objects, the single source of their schema.

Python code uses snake_case attributes; the wire form (what the API server stores, what
``model_dump(by_alias=True)`` writes) is Kubernetes camelCase. Bounds declared here (no negative
bytes, utilization 0..100, the vendor enum, required fields) become the structural schema of the
CRD, so the API server refuses what these models refuse; rules that span fields are CEL rules
declared next to the model (``CRD_INFO``) and generated into ``x-kubernetes-validations``.

Reading is lenient (unknown fields from a newer schema are ignored, so an old client never breaks
on a new server), writing is exact. Conversions to and from the core types (``GPUDeviceInfo``,
``GPUMetrics``) live here so that the exporter and the controller agree on one mapping.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from exo.gpu.telemetry_protocol import (
    MAX_TEMPERATURE_CELSIUS,
    MIN_TEMPERATURE_CELSIUS,
    GPUDeviceInfo,
    GPUMetrics,
    Vendor,
)

GROUP = "gpu.exo.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

LABEL_NODE = f"{GROUP}/node"
LABEL_VENDOR = f"{GROUP}/vendor"
LABEL_MODEL = f"{GROUP}/model"

GIB = 1024**3

# metav1.Condition validation, as upstream declares it.
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


# --------------------------------------------------------------------------------------------
# CRD metadata attached to root models (read by crdgen)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry (what ``kubectl get`` shows)."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str = ""
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True)
class CELRule:
    """One ``x-kubernetes-validations`` entry."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def to_crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class CRDInfo:
    """Names, scope and presentation of a custom resource; the schema comes from the model."""

    kind: str
    plural: str
    singular: str
    scope: Literal["Cluster", "Namespaced"]
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    printer_columns: tuple[PrinterColumn, ...] = ()
    validations: tuple[CELRule, ...] = ()
    description: str = ""
    status_subresource: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _cel(rule: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"x-kubernetes-validations": [CELRule(rule, message, **extra).to_crd()]}


def _immutable(what: str) -> dict[str, Any]:
    return _cel("self == oldSelf", f"{what} is immutable: it is part of the device's name")


# --------------------------------------------------------------------------------------------
# Base and shared pieces
# --------------------------------------------------------------------------------------------


class KubeModel(BaseModel):
    """Base of every API model: camelCase on the wire, lenient on read, no NaN/inf."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        allow_inf_nan=False,
        validate_assignment=True,
    )

    def to_api(self) -> dict[str, Any]:
        """The wire form: camelCase keys, unset optionals left out, JSON-ready values."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectMeta(KubeModel):
    """The parts of ``metav1.ObjectMeta`` exo-gpu reads and writes; the rest is kept verbatim."""

    model_config = ConfigDict(extra="allow")

    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    resource_version: str | None = None
    uid: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(KubeModel):
    """``metav1.Condition``: the latest observation of one aspect of the object's state."""

    type: Annotated[str, Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)] = Field(
        description="Type of condition in CamelCase (Ready, Healthy, Stale, ...)."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: Annotated[
        str, Field(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)
    ] = Field(description="Machine-readable CamelCase reason for the last transition.")
    message: Annotated[str, Field(max_length=32768)] = Field(
        default="", description="Human-readable details about the last transition."
    )
    last_transition_time: datetime = Field(
        description="When the condition last changed from one status to another."
    )
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation the condition was set for."
    )


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_time(epoch_seconds: float, *, whole_seconds: bool = False) -> datetime:
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.replace(microsecond=0) if whole_seconds else moment


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
) -> list[Condition]:
    """Conditions with ``type_`` set; ``lastTransitionTime`` moves only when the status changes.

    Pure: returns a new list (sorted by type, so that two equal sets compare equal) and leaves
    the input alone. Conditions of other types (those another component owns) are kept.
    """
    previous = next((c for c in conditions if c.type == type_), None)
    transition = (
        previous.last_transition_time
        if previous is not None and previous.status == status
        else now.replace(microsecond=0)
    )
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=observed_generation,
    )
    others = [c for c in conditions if c.type != type_]
    return sorted([*others, updated], key=lambda c: c.type)


def find_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


# --------------------------------------------------------------------------------------------
# GPUDevice
# --------------------------------------------------------------------------------------------


class DeviceTopology(KubeModel):
    """Where the device sits in its node (for locality-aware placement)."""

    pci_bus_id: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="PCI bus id, e.g. 00000000:3B:00.0."
    )
    numa_node: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="NUMA node of the device's PCI root, when the platform has one."
    )


class GPUDeviceSpec(KubeModel):
    """Identity of one GPU, written by its node's exporter (or by hand where none runs)."""

    node: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        description="Name of the Kubernetes node holding the device.",
        json_schema_extra=_immutable("spec.node"),
    )
    vendor: Vendor = Field(description="GPU vendor.", json_schema_extra=_immutable("spec.vendor"))
    index: Annotated[int, Field(ge=0)] = Field(
        description="Index of the device among the node's devices of this vendor.",
        json_schema_extra=_immutable("spec.index"),
    )
    uuid: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None,
        description="Vendor device UUID (stable across reboots where the vendor has one).",
    )
    model: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        description="Marketing name of the device, e.g. NVIDIA H100 80GB HBM3."
    )
    memory_total_bytes: Annotated[int, Field(gt=0)] = Field(
        description="Total device memory in bytes."
    )
    compute_capacity: Annotated[float, Field(gt=0)] = Field(
        description="Relative compute figure (TFLOPS-like) used for capacity-weighted distribution."
    )
    unschedulable: bool = Field(
        default=False, description="Cordon this single device: nothing new is placed on it."
    )
    topology: DeviceTopology | None = Field(default=None, description="PCI and NUMA placement.")


class DeviceMetrics(KubeModel):
    """The latest telemetry sample the exporter wrote (at most every 5 s, at least every 30 s)."""

    timestamp: datetime = Field(description="When the sample was taken.")
    memory_used_bytes: Annotated[int, Field(ge=0)] = Field(
        description="Device memory in use, bytes."
    )
    compute_utilization_percent: Annotated[float, Field(ge=0, le=100)] = Field(
        description="Compute utilization, percent 0..100."
    )
    temperature_celsius: (
        Annotated[float, Field(ge=MIN_TEMPERATURE_CELSIUS, le=MAX_TEMPERATURE_CELSIUS)] | None
    ) = Field(
        default=None,
        description="Core temperature, degrees Celsius; absent when the driver does not expose it.",
    )
    power_watts: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="Power draw, watts; absent when the driver does not expose it."
    )
    clock_rate_mhz: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        alias="clockRateMHz",
        validation_alias=AliasChoices("clockRateMHz", "clock_rate_mhz"),
        description="Core clock, MHz; absent when the driver does not expose it.",
    )

    @classmethod
    def from_sample(cls, sample: GPUMetrics) -> DeviceMetrics:
        """Status form of a core sample (utilization and temperature rounded to 0.1).

        A field the sample does not carry stays absent on the wire, never 0.
        """
        return cls(
            timestamp=to_time(sample.timestamp),
            memory_used_bytes=sample.memory_used_bytes,
            compute_utilization_percent=round(sample.compute_utilization_percent, 1),
            temperature_celsius=_rounded(sample.temperature_celsius, 1),
            power_watts=_rounded(sample.power_watts, 1),
            clock_rate_mhz=_rounded(sample.clock_rate_mhz, 0),
        )

    def to_sample(self, device_id: str, memory_total_bytes: int) -> GPUMetrics:
        """Core sample of this status (raises ValidationError if used exceeds the total)."""
        return GPUMetrics(
            device_id=device_id,
            timestamp=self.timestamp.timestamp(),
            memory_used_bytes=self.memory_used_bytes,
            memory_total_bytes=memory_total_bytes,
            compute_utilization_percent=self.compute_utilization_percent,
            power_watts=self.power_watts,
            temperature_celsius=self.temperature_celsius,
            clock_rate_mhz=self.clock_rate_mhz,
        )


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class DeviceDisplay(KubeModel):
    """Pre-formatted values for ``kubectl get`` (printer columns cannot compute)."""

    memory: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="Memory used/total in GiB, e.g. 7.5/24.0 GiB."
    )


class DeviceAllocation(KubeModel):
    """What the controller has placed on the device (written by the controller)."""

    pod_count: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Pods bound to the device."
    )
    memory_reserved_bytes: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Memory reserved by the pods bound to the device, bytes."
    )
    pods: Annotated[list[Annotated[str, Field(max_length=317)]], Field(max_length=1024)] = Field(
        default_factory=list, description="namespace/name of the pods bound to the device."
    )


class GPUDeviceStatus(KubeModel):
    """Live state: metrics, heartbeat (exporter); conditions; score, allocation (controller)."""

    metrics: DeviceMetrics | None = None
    display: DeviceDisplay | None = None
    last_heartbeat_time: datetime | None = Field(
        default=None, description="When the exporter last wrote this status."
    )
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list,
        description="Ready and Healthy (exporter), Stale (controller).",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation of the spec the exporter last reconciled."
    )
    score: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="Selection score 0..1 (controller)."
    )
    allocation: DeviceAllocation | None = None


def device_name(node: str, vendor: Vendor | str, index: int) -> str:
    """Object name of a node's device: ``<node>-<vendor>-<index>``."""
    return f"{node}-{Vendor(vendor).value}-{index}".lower()


_LABEL_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def label_value(text: str) -> str:
    """A valid label value derived from free text (model names carry spaces and slashes)."""
    value = _LABEL_BAD.sub("-", text.strip())[:63]
    return value.strip("._-")


def display_memory(used_bytes: int, total_bytes: int) -> str:
    return f"{used_bytes / GIB:.1f}/{total_bytes / GIB:.1f} GiB"


class GPUDevice(KubeModel):
    """One GPU of one node (cluster-scoped; name ``<node>-<vendor>-<index>``)."""

    KIND: ClassVar[str] = "GPUDevice"
    CRD_INFO: ClassVar[CRDInfo] = CRDInfo(
        kind="GPUDevice",
        plural="gpudevices",
        singular="gpudevice",
        scope="Cluster",
        short_names=("gpudev", "gd"),
        categories=("gpu",),
        description=(
            "GPUDevice is one GPU of one node with its live telemetry. The node's exporter writes "
            "spec and status.metrics; the controller reads them to score and place work."
        ),
        printer_columns=(
            PrinterColumn("Node", "string", ".spec.node", "Node holding the device"),
            PrinterColumn("Vendor", "string", ".spec.vendor", "GPU vendor"),
            PrinterColumn("Model", "string", ".spec.model", "Device model"),
            PrinterColumn("Memory", "string", ".status.display.memory", "Memory used/total"),
            PrinterColumn(
                "Util%",
                "number",
                ".status.metrics.computeUtilizationPercent",
                "Compute utilization, percent",
            ),
            PrinterColumn(
                "Temp(C)", "number", ".status.metrics.temperatureCelsius", "Temperature, Celsius"
            ),
            PrinterColumn(
                "Ready",
                "string",
                '.status.conditions[?(@.type=="Ready")].status',
                "Ready condition",
            ),
            PrinterColumn(
                "Healthy",
                "string",
                '.status.conditions[?(@.type=="Healthy")].status',
                "Healthy condition",
                priority=1,
            ),
            PrinterColumn("Power(W)", "number", ".status.metrics.powerWatts", "Power draw", 1),
            PrinterColumn("Score", "number", ".status.score", "Selection score", 1),
            PrinterColumn("Cordoned", "boolean", ".spec.unschedulable", "Device cordoned", 1),
            PrinterColumn("UUID", "string", ".spec.uuid", "Vendor device UUID", 1),
            PrinterColumn("Age", "date", ".metadata.creationTimestamp"),
        ),
        validations=(
            CELRule(
                rule=(
                    "!has(self.status) || !has(self.status.metrics) || "
                    "self.status.metrics.memoryUsedBytes <= self.spec.memoryTotalBytes"
                ),
                message="status.metrics.memoryUsedBytes must not exceed spec.memoryTotalBytes",
                field_path=".status.metrics.memoryUsedBytes",
                reason="FieldValueInvalid",
            ),
            CELRule(
                rule=(
                    "!has(self.status) || !has(self.status.allocation) || "
                    "self.status.allocation.memoryReservedBytes <= self.spec.memoryTotalBytes"
                ),
                message=(
                    "status.allocation.memoryReservedBytes must not exceed spec.memoryTotalBytes"
                ),
                field_path=".status.allocation.memoryReservedBytes",
                reason="FieldValueInvalid",
            ),
        ),
    )

    api_version: Literal["gpu.exo.dev/v1alpha1"] = "gpu.exo.dev/v1alpha1"
    kind: Literal["GPUDevice"] = "GPUDevice"
    metadata: ObjectMeta
    spec: GPUDeviceSpec
    status: GPUDeviceStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @classmethod
    def from_info(
        cls, info: GPUDeviceInfo, node: str, index: int, compute_capacity: float
    ) -> GPUDevice:
        """The object an exporter on ``node`` registers for a discovered device."""
        topology = None
        if info.pci_bus_id is not None or info.numa_node is not None:
            topology = DeviceTopology(pci_bus_id=info.pci_bus_id, numa_node=info.numa_node)
        labels = {LABEL_NODE: node, LABEL_VENDOR: info.vendor.value}
        model_label = label_value(info.name)
        if model_label:
            labels[LABEL_MODEL] = model_label
        return cls(
            metadata=ObjectMeta(name=device_name(node, info.vendor, index), labels=labels),
            spec=GPUDeviceSpec(
                node=node,
                vendor=info.vendor,
                index=index,
                uuid=info.uuid,
                model=info.name,
                memory_total_bytes=info.memory_total_bytes,
                compute_capacity=compute_capacity,
                topology=topology,
            ),
        )

    def to_device_info(self) -> GPUDeviceInfo:
        """Core identity of this object (``device_id`` is the object name)."""
        topology = self.spec.topology or DeviceTopology()
        return GPUDeviceInfo(
            device_id=self.metadata.name,
            vendor=self.spec.vendor,
            name=self.spec.model,
            memory_total_bytes=self.spec.memory_total_bytes,
            node=self.spec.node,
            uuid=self.spec.uuid,
            index=self.spec.index,
            compute_capacity=self.spec.compute_capacity,
            pci_bus_id=topology.pci_bus_id,
            numa_node=topology.numa_node,
        )

    def latest_sample(self) -> GPUMetrics | None:
        """Core sample of ``status.metrics`` (None when no metrics were written yet)."""
        if self.status is None or self.status.metrics is None:
            return None
        return self.status.metrics.to_sample(self.metadata.name, self.spec.memory_total_bytes)
