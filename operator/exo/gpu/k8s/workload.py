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

from pydantic import ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from exo.gpu import quantity
from exo.gpu.quantity import QUANTITY_PATTERN
from exo.gpu.telemetry_protocol import Vendor
from exo.gpu.topology import LinkType, PCIeLevel, SetScore

from .models import (
    LABEL_MODEL,
    LABEL_VENDOR,
    CELRule,
    Condition,
    CRDInfo,
    KubeModel,
    ObjectMeta,
    PrinterColumn,
    label_value,
)
from .rebalance import RebalanceSpec

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


# --------------------------------------------------------------------------------------------
# spec: device sets, affinity and network topology (decided by exo.gpu.placement)
# --------------------------------------------------------------------------------------------

#: Most devices one task may take together (one node's worth of the largest machines).
MAX_DEVICES_PER_TASK = 64
#: The network topology levels, smallest first (``exo.gpu.topology.DomainLevel``).
TopologyLevel = Literal["node", "rack", "block", "zone"]
LEVEL_RANK: dict[str, int] = {"node": 0, "rack": 1, "block": 2, "zone": 3}


_LEVELS_CEL = "{'node': 0, 'rack': 1, 'block': 2, 'zone': 3}"


class DeviceTerm(KubeModel):
    """Devices by vendor, model and labels; a device matches when it meets every part given."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [CELRule(
        rule="!has(self.vendors) || !has(self.labels) || !has(self.labels.matchLabels) || "
             "!('gpu.exo.dev/vendor' in self.labels.matchLabels) || "
             "self.labels.matchLabels['gpu.exo.dev/vendor'] in self.vendors",
        message="labels.matchLabels gpu.exo.dev/vendor conflicts with vendors: no device can "
                "match both",
        reason="FieldValueInvalid").to_crd()]})

    vendors: Annotated[list[Vendor], Field(min_length=1, max_length=5)] | None = Field(
        default=None, description="One of these vendors.")
    models: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]],
        Field(min_length=1, max_length=64),
    ] | None = Field(default=None, description=(
        "One of these models: the GPUDevice's spec.model (NVIDIA H100 80GB HBM3) or its "
        "gpu.exo.dev/model label (NVIDIA-H100-80GB-HBM3)."))
    labels: LabelSelector | None = Field(default=None, description="A selector over the "
                                                                   "GPUDevice's labels.")

    @model_validator(mode="after")
    def _consistent(self) -> DeviceTerm:
        wanted = (self.labels.match_labels.get(LABEL_VENDOR) if self.labels is not None
                  else None)
        if wanted is not None and self.vendors is not None and \
                wanted not in {v.value for v in self.vendors}:
            raise ValueError(f"labels.matchLabels[{LABEL_VENDOR}]={wanted} conflicts with "
                             f"vendors {[v.value for v in self.vendors]}: no device can match")
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        if self.vendors is not None and labels.get(LABEL_VENDOR) not in \
                {v.value for v in self.vendors}:
            return False
        if self.models is not None and labels.get(LABEL_MODEL) not in \
                {label_value(m) for m in self.models}:
            return False
        return self.labels is None or self.labels.matches(labels)

    def describe(self) -> str:
        parts = []
        if self.vendors is not None:
            parts.append("vendor in (" + ",".join(v.value for v in self.vendors) + ")")
        if self.models is not None:
            parts.append("model in (" + ",".join(self.models) + ")")
        if self.labels is not None:
            parts.append(self.labels.describe())
        return " and ".join(parts) or "<any device>"


class WeightedDeviceTerm(DeviceTerm):
    """A preferred term: devices it matches come first, by weight."""

    weight: Annotated[int, Field(ge=1, le=100)] = Field(description="1..100.")


class DeviceAffinity(KubeModel):
    """Which devices a workload's tasks (or a pod, by its ``gpu.exo.dev/device-affinity``
    annotation) must or would rather have. It is the core's preference
    (``exo.gpu.fit.Preference``)."""

    required: DeviceTerm | None = Field(default=None, description="Only devices matching "
                                                                  "this take part.")
    preferred: Annotated[list[WeightedDeviceTerm], Field(max_length=16)] = Field(
        default_factory=list, description="Devices matching these come first (weights add up).")

    def weight(self, labels: dict[str, str]) -> int:
        return sum(term.weight for term in self.preferred if term.matches(labels))

    @property
    def total(self) -> int:
        return sum(term.weight for term in self.preferred)

    def describe(self) -> str:
        return "; ".join(f"{t.weight}: {t.describe()}" for t in self.preferred)


class TaskAffinity(KubeModel):
    """Where the tasks go relative to each other."""

    keep: Literal["Together", "Apart"] = Field(description=(
        "Together: every task in one domain of the level given by 'by' (one node by default); "
        "Apart: no two tasks in one domain of that level."))
    by: TopologyLevel = Field(default="node", description="node, rack, block or zone.")
    required: bool = Field(default=True, description=(
        "true: wait (Unschedulable) rather than break it; false: as far as the cluster "
        "allows."))


class WorkloadAffinity(DeviceAffinity):
    """Device affinity, and affinity between the workload's tasks."""

    tasks: TaskAffinity | None = None


class TopologySpec(KubeModel):
    """Pack the tasks into one network domain (nodes share a domain by their labels)."""

    pack_within: TopologyLevel = Field(description=(
        "node, rack, block or zone: every task in the smallest domain of that level that "
        "holds them all (zone: topology.kubernetes.io/zone; rack and block: the labels the "
        "controller is configured with)."))
    required: bool = Field(default=False, description=(
        "true: wait (Unschedulable) until one domain can hold every task; false: when none "
        "can, use the fewest domains."))


class AllOf:
    """Several label matchers, all of which must match (a core ``LabelMatcher``)."""

    def __init__(self, parts: tuple[LabelSelector | DeviceTerm, ...]) -> None:
        self.parts = parts

    def matches(self, labels: dict[str, str]) -> bool:
        return all(part.matches(labels) for part in self.parts)

    def describe(self) -> str:
        return " and ".join(part.describe() for part in self.parts)


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
    rebalance: RebalanceSpec | None = Field(
        default=None,
        description="Opt-in to moves off devices that stay overloaded (default: never moved).",
    )
    # -- device sets, affinity and network topology ----------------------------------------
    devices_per_task: Annotated[int, Field(ge=1, le=MAX_DEVICES_PER_TASK)] | None = Field(
        default=None, description=(
            "Devices each task takes together, all on one node (the best-linked set that "
            "fits). Above 1 every task gets its own set, so strategy stays uniform and "
            "neither capacities nor maxTasksPerDevice apply."))
    affinity: WorkloadAffinity | None = Field(
        default=None, description="Required and preferred devices; tasks together or apart.")
    topology: TopologySpec | None = Field(
        default=None, description="Pack the tasks into one network domain (rack, block, ...).")

    @model_validator(mode="after")
    def _placement_consistent(self) -> GPUWorkloadSpec:
        """Conflicting placement rules, each named (the CRD's CEL rules say the same)."""
        if (self.devices_per_task or 1) > 1:
            if self.capacities is not None:
                raise ValueError("capacities: not with devicesPerTask above 1 (each task "
                                 "takes a whole set)")
            if self.strategy != "uniform":
                raise ValueError("strategy: only uniform with devicesPerTask above 1")
            if (self.max_tasks_per_device or 1) > 1:
                raise ValueError("maxTasksPerDevice: at most 1 with devicesPerTask above 1")
        affinity = self.affinity
        tasks = affinity.tasks if affinity is not None else None
        if tasks is not None and self.topology is not None:
            if tasks.keep == "Together":
                raise ValueError("affinity.tasks: keep Together and topology.packWithin both "
                                 "place the tasks together; keep one (topology)")
            if LEVEL_RANK[tasks.by] >= LEVEL_RANK[self.topology.pack_within]:
                raise ValueError(
                    f"affinity.tasks: Apart by {tasks.by} conflicts with topology.packWithin "
                    f"{self.topology.pack_within}: the tasks cannot share one "
                    f"{self.topology.pack_within} and each have their own {tasks.by}")
        selected = (self.device_selector.match_labels.get(LABEL_VENDOR)
                    if self.device_selector is not None else None)
        required = affinity.required if affinity is not None else None
        if selected is not None and required is not None and required.vendors is not None \
                and selected not in {v.value for v in required.vendors}:
            raise ValueError(f"affinity.required.vendors: {[v.value for v in required.vendors]}"
                             f" conflicts with deviceSelector {LABEL_VENDOR}={selected}")
        return self

    @property
    def set_size(self) -> int:
        """Devices per task (1 unless devicesPerTask says otherwise)."""
        return self.devices_per_task or 1

    def device_matcher(self) -> LabelSelector | DeviceTerm | AllOf | None:
        """What a device's labels must meet: ``deviceSelector`` and ``affinity.required``."""
        parts = [m for m in (self.device_selector,
                             self.affinity.required if self.affinity is not None else None)
                 if m is not None]
        if len(parts) < 2:
            return parts[0] if parts else None
        return AllOf(tuple(parts))

    def preference(self) -> WorkloadAffinity | None:
        """The preferred device affinity (None without preferred terms)."""
        return self.affinity if self.affinity is not None and self.affinity.preferred else None

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


class SetPair(KubeModel):
    """One pair of a placement's device set, its link and its score
    (``exo.gpu.topology.link_score``)."""

    devices: Annotated[list[Annotated[str, Field(max_length=253)]],
                       Field(min_length=2, max_length=2)] = Field(description="The two devices.")
    link: LinkType | None = Field(default=None, description="Fastest path (absent: unknown).")
    level: PCIeLevel | None = Field(default=None, description="PCIe path.")
    links: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Fabric links.")
    score: Annotated[int, Field(ge=0)] = Field(description="Pair score.")


class PlacementLinks(KubeModel):
    """How well a placement's devices are linked (``exo.gpu.topology.set_score``)."""

    score: Annotated[int, Field(ge=0)] = Field(description="Sum of the pair scores.")
    weakest: Annotated[int, Field(ge=0)] = Field(description="Lowest pair score.")
    pairs: Annotated[list[SetPair], Field(max_length=2016)] = Field(
        default_factory=list, description="Every pair of the set.")

    @classmethod
    def from_score(cls, score: SetScore) -> PlacementLinks:
        return cls(score=score.total, weakest=score.weakest, pairs=[
            SetPair(devices=[p.a, p.b], link=p.link.type if p.link else None,
                    level=p.link.level if p.link else None,
                    links=(p.link.links or None) if p.link else None, score=p.score)
            for p in score.pairs])


class Placement(KubeModel):
    """The tasks one device (or, with devicesPerTask, one set of devices) holds."""

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
    devices: Annotated[list[Annotated[str, Field(max_length=253)]],
                       Field(max_length=MAX_DEVICES_PER_TASK)] | None = Field(
        default=None, description="With devicesPerTask: every device of the set (device is "
                                  "the first).")
    links: PlacementLinks | None = Field(
        default=None, description="With devicesPerTask: how well the set is linked, pair by "
                                  "pair.")
    domain: Annotated[str, Field(max_length=317)] | None = Field(
        default=None, description="With topology: the network domain (rack=r1) holding it.")

    def device_set(self) -> list[str]:
        """Every device of the placement (one unless devicesPerTask)."""
        return list(self.devices) if self.devices else [self.device]


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
            CELRule(
                rule=(
                    "!has(self.spec.devicesPerTask) || self.spec.devicesPerTask == 1 || "
                    "((!has(self.spec.strategy) || self.spec.strategy == 'uniform') && "
                    "(!has(self.spec.maxTasksPerDevice) || self.spec.maxTasksPerDevice == 1))"
                ),
                message=(
                    "spec.devicesPerTask above 1 gives each task a whole set of devices: "
                    "strategy must be uniform and maxTasksPerDevice at most 1"
                ),
                field_path=".spec.devicesPerTask",
                reason="FieldValueForbidden",
            ),
            CELRule(
                rule=(
                    "!has(self.spec.topology) || !has(self.spec.affinity) || "
                    "!has(self.spec.affinity.tasks) || "
                    "(self.spec.affinity.tasks.keep == 'Apart' && "
                    f"{_LEVELS_CEL}[self.spec.affinity.tasks.by] < "
                    f"{_LEVELS_CEL}[self.spec.topology.packWithin])"
                ),
                message=(
                    "spec.affinity.tasks conflicts with spec.topology: keep Together is said "
                    "by topology.packWithin alone, and Apart must be by a smaller level than "
                    "packWithin"
                ),
                field_path=".spec.affinity.tasks",
                reason="FieldValueInvalid",
            ),
            CELRule(
                rule=(
                    "!has(self.spec.deviceSelector) || !has(self.spec.deviceSelector.matchLabels)"
                    " || !('gpu.exo.dev/vendor' in self.spec.deviceSelector.matchLabels) || "
                    "!has(self.spec.affinity) || !has(self.spec.affinity.required) || "
                    "!has(self.spec.affinity.required.vendors) || "
                    "self.spec.deviceSelector.matchLabels['gpu.exo.dev/vendor'] in "
                    "self.spec.affinity.required.vendors"
                ),
                message=(
                    "spec.affinity.required.vendors conflicts with spec.deviceSelector's "
                    "gpu.exo.dev/vendor: no device can match both"
                ),
                field_path=".spec.affinity.required.vendors",
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
