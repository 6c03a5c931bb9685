"""The ``GPUWorkload`` API model (namespaced, ``gpu.exo.dev/v1alpha1``), source of its CRD.

A user asks for tasks spread over the cluster's GPUs (DESIGN.md section 3); the controller answers
in ``status``: one placement per device with the tasks it holds and the score breakdown that put
them there, a phase, and conditions that say why. The schema rejects what it can on its own (no
tasks, caps below 1, an unknown strategy, ``capacities`` without the capacity strategy, a template
without containers) so bad input never reaches the controller; what only the live cluster can
judge (devices that do not exist, memory no device has, a selector matching nothing) is answered
with phase ``Unschedulable`` and a reason.

Two fields are not of one JSON type, which a structural schema expresses with dedicated markers:
``tasks`` (a count or a list of task ids; ``x-kubernetes-preserve-unknown-fields`` plus a CEL rule
on its shape) and ``minMemoryBytes`` (a Kubernetes quantity, ``x-kubernetes-int-or-string``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, WithJsonSchema, field_validator

from exo.gpu import quantity
from exo.gpu.quantity import QUANTITY_PATTERN

from .models import (
    CELRule,
    Condition,
    CRDInfo,
    KubeModel,
    ObjectMeta,
    PrinterColumn,
)

KIND = "GPUWorkload"
PLURAL = "gpuworkloads"

#: A task id: a short DNS-label-like token, so that ids can be joined with commas in annotations.
TASK_ID_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
MAX_TASKS = 1_000_000
MAX_TASK_IDS = 10_000

Phase = Literal["Pending", "Placed", "Running", "Succeeded", "Failed", "Unschedulable", "Invalid"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]


class WorkloadPhase(StrEnum):
    """``status.phase`` of a GPUWorkload (the schema's enum is ``Phase``; a test keeps the two
    equal)."""

    PENDING = "Pending"
    PLACED = "Placed"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNSCHEDULABLE = "Unschedulable"
    INVALID = "Invalid"

    @property
    def terminal(self) -> bool:
        """Final for the spec generation: a new generation plans again."""
        return self in (WorkloadPhase.SUCCEEDED, WorkloadPhase.FAILED)

    @property
    def placed(self) -> bool:
        """Placements are in force (pods may run)."""
        return self in (WorkloadPhase.PLACED, WorkloadPhase.RUNNING, WorkloadPhase.SUCCEEDED)


def parse_quantity(value: int | str, field: str = "spec.minMemoryBytes") -> int:
    """Bytes of a Kubernetes quantity, rounded up; ``ValueError`` naming ``field`` otherwise."""
    return quantity.parse_quantity(value, field)


# --------------------------------------------------------------------------------------------
# spec
# --------------------------------------------------------------------------------------------


class LabelSelectorRequirement(KubeModel):
    """``metav1.LabelSelectorRequirement``."""

    key: Annotated[str, Field(min_length=1, max_length=317)] = Field(description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: Annotated[list[Annotated[str, Field(max_length=63)]], Field(max_length=256)] = Field(
        default_factory=list,
        description="Values for In and NotIn (non-empty); empty for Exists and DoesNotExist.",
    )


class LabelSelector(KubeModel):
    """``metav1.LabelSelector`` over GPUDevice labels (gpu.exo.dev/vendor, model, node, ...)."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels a device must carry with these values."
    )
    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=64)] = Field(
        default_factory=list, description="Requirements a device's labels must all meet."
    )

    @field_validator("match_expressions")
    @classmethod
    def _values_fit_operator(
        cls, value: list[LabelSelectorRequirement]
    ) -> list[LabelSelectorRequirement]:
        for i, req in enumerate(value):
            if req.operator in ("In", "NotIn") and not req.values:
                raise ValueError(f"matchExpressions[{i}]: operator {req.operator} needs values")
            if req.operator in ("Exists", "DoesNotExist") and req.values:
                raise ValueError(f"matchExpressions[{i}]: operator {req.operator} takes no values")
        return value

    def matches(self, labels: dict[str, str]) -> bool:
        """True when ``labels`` satisfy every term (an empty selector matches everything)."""
        for key, wanted in self.match_labels.items():
            if labels.get(key) != wanted:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
        return True

    def describe(self) -> str:
        """The selector as ``kubectl`` writes one (``a=b,c in (x,y)``)."""
        terms = [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
        for req in self.match_expressions:
            if req.operator in ("In", "NotIn"):
                terms.append(f"{req.key} {req.operator.lower()} ({','.join(req.values)})")
            else:
                terms.append(req.key if req.operator == "Exists" else f"!{req.key}")
        return ",".join(terms) or "<everything>"


_PRESERVE: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}


class PodSpecTemplate(KubeModel):
    """The pod spec of a template: ``containers`` is required, everything else is kept as given."""

    model_config = ConfigDict(extra="allow", json_schema_extra={**_PRESERVE})

    containers: Annotated[
        list[Annotated[dict[str, Any], WithJsonSchema({"type": "object", **_PRESERVE})]],
        Field(min_length=1, max_length=64),
    ] = Field(description="The pod's containers (at least one).")


class PodTemplate(KubeModel):
    """A pod template (``v1.PodTemplateSpec``): one pod per placement is made from it."""

    model_config = ConfigDict(extra="allow", json_schema_extra={**_PRESERVE})

    metadata: Annotated[
        dict[str, Any], WithJsonSchema({"type": "object", **_PRESERVE})
    ] | None = Field(default=None, description="Labels and annotations of the pods.")
    spec: PodSpecTemplate = Field(description="The pod spec; the controller adds the GPU limit, "
                                              "the device environment and the placement.")


TasksField = Annotated[
    int | list[Annotated[str, Field(min_length=1, max_length=63, pattern=TASK_ID_PATTERN)]],
    WithJsonSchema({
        "description": (
            "How many tasks (an integer, ids 0..N-1) or the explicit task ids in order (a list of "
            "short names, each a DNS-label-like token). Order matters: each device gets a "
            "contiguous run."
        ),
        # CEL cannot see a field without a type, so the shape is held by value validations that
        # apply per JSON type: numbers must be whole and within 1..MAX_TASKS, arrays non-empty
        # lists of task ids, and strings and objects fail contradictory bounds. Only a boolean
        # gets through; the controller answers it (and repeated ids) with phase Invalid.
        "x-kubernetes-preserve-unknown-fields": True,
        "minimum": 1,
        "maximum": MAX_TASKS,
        "multipleOf": 1,
        "minItems": 1,
        "maxItems": MAX_TASK_IDS,
        "items": {"type": "string", "maxLength": 63, "pattern": TASK_ID_PATTERN},
        "minLength": 1,
        "maxLength": 0,
        "minProperties": 1,
        "maxProperties": 0,
    }),
]

QuantityField = Annotated[
    int | str,
    WithJsonSchema({
        "description": (
            "Free device memory each task's device must have, a Kubernetes quantity (8Gi, "
            "500M) or a number of bytes."
        ),
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-validations": [
            CELRule(
                rule="type(self) == int ? self >= 0 : !self.startsWith('-')",
                message="minMemoryBytes must not be negative",
                reason="FieldValueInvalid",
            ).to_crd()
        ],
    }),
]


class GPUWorkloadSpec(KubeModel):
    """What to spread, how, and over which devices."""

    tasks: TasksField
    strategy: Literal["uniform", "capacity"] = Field(
        default="uniform",
        description=(
            "uniform: task counts per device differ by at most one; capacity: shares proportional "
            "to capacities (default: each device's compute capacity)."
        ),
    )
    capacities: dict[str, Annotated[float, Field(ge=0)]] | None = Field(
        default=None,
        description=(
            "Weight per GPUDevice name for the capacity strategy; only the named devices take "
            "part. Zero takes nothing."
        ),
        json_schema_extra={"maxProperties": 10_000},
    )
    max_tasks_per_device: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="No device holds more tasks than this (at least 1)."
    )
    min_memory_bytes: QuantityField | None = None
    device_selector: LabelSelector | None = Field(
        default=None, description="Only GPUDevices whose labels match take part."
    )
    template: PodTemplate | None = Field(
        default=None,
        description="Pod template: when given, the controller runs one pod per placement.",
    )

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks_type(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | list):
            raise ValueError(
                f"must be a count or a list of task ids, got {type(value).__name__} {value!r}")
        return value

    @field_validator("tasks")
    @classmethod
    def _tasks_shape(cls, value: int | list[str]) -> int | list[str]:
        if isinstance(value, int):
            if not 1 <= value <= MAX_TASKS:
                raise ValueError(f"a task count must lie within 1..{MAX_TASKS}, got {value}")
        else:
            if not value:
                raise ValueError("the task list is empty")
            if len(value) > MAX_TASK_IDS:
                raise ValueError(f"at most {MAX_TASK_IDS} task ids, got {len(value)}")
            seen: set[str] = set()
            duplicates = sorted({t for t in value if t in seen or seen.add(t)})  # type: ignore[func-returns-value]
            if duplicates:
                raise ValueError(f"task ids must be unique; repeated: {', '.join(duplicates[:5])}")
        return value

    @field_validator("min_memory_bytes")
    @classmethod
    def _quantity(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            parse_quantity(value)
        return value

    @field_validator("capacities")
    @classmethod
    def _some_capacity(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None and not any(weight > 0 for weight in value.values()):
            raise ValueError("at least one capacity must be positive")
        return value

    def task_ids(self) -> list[str]:
        """The tasks as ids, in order (``0..N-1`` for a count)."""
        if isinstance(self.tasks, int):
            return [str(i) for i in range(self.tasks)]
        return list(self.tasks)

    @property
    def task_count(self) -> int:
        return self.tasks if isinstance(self.tasks, int) else len(self.tasks)

    def min_memory(self) -> int | None:
        return None if self.min_memory_bytes is None else parse_quantity(self.min_memory_bytes)


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------


class PlacementBreakdown(KubeModel):
    """The weighted terms of the device's score when it was chosen (DESIGN.md section 4)."""

    memory: Annotated[float, Field(ge=0, le=1)] = Field(description="Free-memory term.")
    compute: Annotated[float, Field(ge=0, le=1)] = Field(description="Compute-headroom term.")
    thermal: Annotated[float, Field(ge=0, le=1)] = Field(description="Thermal penalty.")


class Placement(KubeModel):
    """The tasks one device holds."""

    device: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        description="GPUDevice name."
    )
    node: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        description="Node holding the device."
    )
    tasks: Annotated[str, Field(max_length=1_000_000)] = Field(
        description="The task ids, as in the pod annotation gpu.exo.dev/tasks: a range "
                    "'first-last' for a count, else the ids joined with commas."
    )
    task_count: Annotated[int, Field(ge=0)] = Field(description="How many tasks.")
    score: Annotated[float, Field(ge=0, le=1)] = Field(description="Device score 0..1.")
    breakdown: PlacementBreakdown
    weight: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="Capacity weight used (capacity strategy)."
    )
    pod: Annotated[str, Field(max_length=253)] | None = Field(
        default=None, description="Name of the pod running these tasks (with a template)."
    )


class GPUWorkloadStatus(KubeModel):
    """What the controller decided, and why."""

    phase: Phase | None = Field(
        default=None,
        description="Pending, Placed, Running, Succeeded, Failed, Unschedulable or Invalid.",
    )
    placements: Annotated[list[Placement], Field(max_length=10_000)] = Field(
        default_factory=list, description="One entry per device holding tasks."
    )
    task_count: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Tasks placed."
    )
    device_count: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Devices holding tasks."
    )
    message: Annotated[str, Field(max_length=32768)] | None = Field(
        default=None, description="Why the workload is in its phase."
    )
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list,
        description="Placed and PodsReady.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation the placements were made for."
    )
    plan_revision: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Bumped on every new plan (spec change, failed device, lost pod)."
    )


class GPUWorkload(KubeModel):
    """Tasks to spread over the cluster's GPUs (namespaced)."""

    KIND: ClassVar[str] = KIND
    CRD_INFO: ClassVar[CRDInfo] = CRDInfo(
        kind=KIND,
        plural=PLURAL,
        singular="gpuworkload",
        scope="Namespaced",
        short_names=("gpuwl", "gw"),
        categories=("gpu",),
        description=(
            "GPUWorkload is a set of tasks the controller spreads over the best eligible GPUs of "
            "the cluster (uniformly or by capacity), optionally running one pod per device; "
            "status shows each placement with its score breakdown."
        ),
        printer_columns=(
            PrinterColumn("Strategy", "string", ".spec.strategy", "uniform or capacity"),
            PrinterColumn("Tasks", "integer", ".status.taskCount", "Tasks placed"),
            PrinterColumn("Phase", "string", ".status.phase", "Workload phase"),
            PrinterColumn("Devices", "integer", ".status.deviceCount", "Devices holding tasks"),
            PrinterColumn("Message", "string", ".status.message", "Why", priority=1),
            PrinterColumn("Age", "date", ".metadata.creationTimestamp"),
        ),
        validations=(
            CELRule(
                rule="!has(self.spec.capacities) || self.spec.strategy == 'capacity'",
                message="spec.capacities may only be set with strategy capacity",
                field_path=".spec.capacities",
                reason="FieldValueForbidden",
            ),
            CELRule(
                rule=(
                    "!has(self.spec.capacities) || "
                    "self.spec.capacities.exists(k, self.spec.capacities[k] > 0.0)"
                ),
                message="spec.capacities needs at least one positive weight",
                field_path=".spec.capacities",
                reason="FieldValueInvalid",
            ),
        ),
    )

    api_version: Literal["gpu.exo.dev/v1alpha1"] = "gpu.exo.dev/v1alpha1"
    kind: Literal["GPUWorkload"] = "GPUWorkload"
    metadata: ObjectMeta
    spec: GPUWorkloadSpec
    status: GPUWorkloadStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
