"""Fleet files: simulated nodes and GPUs of every vendor, with metric behaviour over time.

Tests and the demo need many GPUs of several vendors that behave like real ones (load that
varies, memory that grows, devices that heat up, fail or vanish) and do so *reproducibly*. A fleet
file describes that in YAML; :class:`~exo.gpu.exporter.backends.simulated.SimulatedBackend` plays
it against a clock, so the same file and the same clock readings always give the same samples.

```yaml
nodes:
  - name: gpu-node-a
    labels: {topology.exo.dev/rack: rack-1}   # the fake Node's labels (local cluster, demo)
    devices:
      - vendor: nvidia                 # nvidia | amd | intel | apple | qualcomm
        model: NVIDIA H100 80GB HBM3
        memory: 80Gi                   # total; bytes or a quantity (Ki, Mi, Gi, Ti, K, M, G, T)
        index: 0                       # default: position among the node's devices of this vendor
        uuid: GPU-...                  # default: derived from node, vendor and index
        utilization: {pattern: sine, base: 50, amplitude: 30, periodSeconds: 120}
        memoryUsed: {base: 20Gi, growthPerMinute: 1Gi, max: 60Gi}
        temperature: {idle: 35, full: 78, heatingPerMinute: 0.5, max: 95}
        power: {idle: 70, full: 700}
        clock: {idle: 1100, full: 1980}
        pciBusId: "00000000:18:00.0"
        numaNode: 0
        pcieRoot: pci0000:17           # the PCIe root complex (pairs on one root: HostBridge)
        failures:
          - {kind: disappear, at: 300}              # no longer discovered from t=300 s
          - {kind: error, at: 100, until: 130}      # every read fails
          - {kind: invalid, at: 50, until: 60}      # impossible readings (used above total)
          - {kind: unhealthy, at: 200, reason: XidError}
          - {kind: hang, at: 400, until: 410, seconds: 5}   # reads block (real seconds)
          - {kind: linkdown, at: 500, until: 560}   # its fabric links are down (PCIe only)
    links:                             # every pair of the listed devices (positions in devices)
      - {devices: [0, 1], type: NVLink, count: 4, level: SingleSwitch}
      - {devices: [0, 1, 2, 3], type: NVSwitch, count: 18}
      - {devices: [2, 3], type: PCIe, level: SingleSwitch}
```
Utilization patterns: ``constant`` (``value``), ``sine`` (``base``, ``amplitude``,
``periodSeconds``, ``phaseSeconds``), ``step`` (``steps: [{at, value}, ...]``). Times are seconds
since the simulation started.

Links (``exo.gpu.topology``): each entry of a node's ``links`` joins every pair of its
``devices`` with a fabric (``NVLink``, ``NVSwitch``, ``XGMI``, ``XeLink``: ``count`` links, and
``hops``) or gives their PCIe path (``type: PCIe`` with a ``level``: SameBoard, SingleSwitch,
MultiSwitch, HostBridge, NUMANode, System); a fabric entry may give the level too. A pair with
no level given gets the one its devices' ``pcieRoot`` and ``numaNode`` imply (one root:
HostBridge, one NUMA node: NUMANode, two: System). The examples in ``data/fleet-topology.yaml``
describe an 8-GPU NVSwitch node, 4 GPUs in NVLink pairs behind PCIe switches and an 8-GPU XGMI
node.

A bad file is refused as a whole at load, with the file, the entry (``nodes[0].devices[1]``) and
the reason: unknown vendor, memory used above total, negative values, utilization that leaves
0..100, duplicate nodes or devices (same vendor and index on a node, or the same UUID twice),
links naming a device the node does not have, or two fabrics for one pair.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from exo.gpu import quantity
from exo.gpu.errors import InvalidRequestError
from exo.gpu.telemetry_protocol import Vendor
from exo.gpu.topology import MAX_LINKS, LinkType, PCIeLevel


def parse_quantity(value: Any) -> int:
    """Bytes from an int or a Kubernetes quantity string (``80Gi``, ``512Mi``, ``24G``)."""
    try:
        return quantity.parse_quantity(value, "memory")
    except InvalidRequestError as error:
        raise ValueError(error.reason) from None


class _FleetModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        allow_inf_nan=False,
        frozen=True,
    )


Percent = Annotated[float, Field(ge=0, le=100)]
NonNegative = Annotated[float, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0)]


class Step(_FleetModel):
    at: Seconds
    value: Percent


class LoadPattern(_FleetModel):
    """Utilization over time, percent."""

    pattern: Literal["constant", "sine", "step"] = "constant"
    value: Percent = 0.0
    base: Percent = 0.0
    amplitude: NonNegative = 0.0
    period_seconds: Annotated[float, Field(gt=0)] = 60.0
    phase_seconds: float = 0.0
    steps: list[Step] = Field(default_factory=list)

    @model_validator(mode="after")
    def _within_range(self) -> LoadPattern:
        if self.pattern == "sine" and not (
            self.base - self.amplitude >= 0 and self.base + self.amplitude <= 100
        ):
            raise ValueError(
                f"sine utilization base {self.base:g} +/- amplitude {self.amplitude:g} "
                "leaves 0..100"
            )
        if self.pattern == "step" and not self.steps:
            raise ValueError("step utilization needs at least one entry in steps")
        return self

    def at(self, t: float) -> float:
        if self.pattern == "constant":
            return self.value
        if self.pattern == "sine":
            angle = 2 * math.pi * (t + self.phase_seconds) / self.period_seconds
            return self.base + self.amplitude * math.sin(angle)
        current = self.steps[0].value
        for step in sorted(self.steps, key=lambda s: s.at):
            if step.at <= t:
                current = step.value
        return current


class MemoryBehaviour(_FleetModel):
    """Memory used over time: ``base`` plus linear growth, capped at ``max``."""

    base: int = 0
    growth_per_minute: int = 0
    max: int | None = None

    @field_validator("base", "growth_per_minute", "max", mode="before")
    @classmethod
    def _quantity(cls, value: Any) -> Any:
        return None if value is None else parse_quantity(value)

    def at(self, t: float, total: int) -> int:
        cap = total if self.max is None else min(self.max, total)
        return int(min(self.base + self.growth_per_minute * t / 60.0, cap))


class Thermal(_FleetModel):
    """Temperature: idle..full with utilization, plus slow heating, capped at ``max``."""

    idle: Annotated[float, Field(ge=-50, le=150)] = 35.0
    full: Annotated[float, Field(ge=-50, le=150)] = 75.0
    heating_per_minute: NonNegative = 0.0
    max: Annotated[float, Field(ge=-50, le=150)] = 95.0

    def at(self, t: float, utilization: float) -> float:
        value = self.idle + (self.full - self.idle) * utilization / 100.0
        return min(value + self.heating_per_minute * t / 60.0, self.max)


class Scaled(_FleetModel):
    """A value linear in utilization: ``idle`` at 0 %, ``full`` at 100 %."""

    idle: NonNegative
    full: NonNegative

    def at(self, utilization: float) -> float:
        return self.idle + (self.full - self.idle) * utilization / 100.0


class Failure(_FleetModel):
    """A scripted fault; active for ``at <= t < until`` (``until`` absent: forever)."""

    kind: Literal["disappear", "error", "invalid", "unhealthy", "hang", "linkdown"]
    at: Seconds
    until: Seconds | None = None
    reason: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$")] = "SimulatedFault"
    seconds: Annotated[float, Field(gt=0, le=600)] = 10.0

    @model_validator(mode="after")
    def _ordered(self) -> Failure:
        if self.until is not None and self.until <= self.at:
            raise ValueError(f"until ({self.until:g}) must be after at ({self.at:g})")
        return self

    def active(self, t: float) -> bool:
        return self.at <= t and (self.until is None or t < self.until)


class FleetDevice(_FleetModel):
    vendor: Vendor
    model: Annotated[str, Field(min_length=1, max_length=256)]
    memory: int
    index: Annotated[int, Field(ge=0)] | None = None
    uuid: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    compute_capacity: Annotated[float, Field(gt=0)] | None = None
    pci_bus_id: str | None = None
    numa_node: Annotated[int, Field(ge=0)] | None = None
    pcie_root: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    utilization: LoadPattern = LoadPattern()
    memory_used: MemoryBehaviour = MemoryBehaviour()
    temperature: Thermal = Thermal()
    power: Scaled = Scaled(idle=50.0, full=300.0)
    clock: Scaled = Scaled(idle=1000.0, full=1800.0)
    failures: list[Failure] = Field(default_factory=list)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory_quantity(cls, value: Any) -> int:
        total = parse_quantity(value)
        if total <= 0:
            raise ValueError("total memory must be positive")
        return total

    @model_validator(mode="after")
    def _used_within_total(self) -> FleetDevice:
        used = self.memory_used
        if used.base > self.memory:
            raise ValueError(
                f"memoryUsed.base ({used.base} bytes) is above the total memory "
                f"({self.memory} bytes)"
            )
        if used.max is not None and used.max > self.memory:
            raise ValueError(
                f"memoryUsed.max ({used.max} bytes) is above the total memory ({self.memory} bytes)"
            )
        return self


class FleetLink(_FleetModel):
    """Every pair of ``devices`` (positions in the node's ``devices``) is linked so."""

    devices: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2)]
    type: LinkType
    count: Annotated[int, Field(ge=1, le=MAX_LINKS)] | None = None
    level: PCIeLevel | None = None
    hops: Annotated[int, Field(ge=1, le=64)] = 1

    @model_validator(mode="after")
    def _consistent(self) -> FleetLink:
        if len(set(self.devices)) != len(self.devices):
            raise ValueError(f"devices {self.devices} names a device twice")
        if self.type is LinkType.PCIE:
            if self.count is not None:
                raise ValueError("a PCIe entry has no count (fabric links)")
            if self.level is None:
                raise ValueError("a PCIe entry needs a level")
        elif self.count is None:
            raise ValueError(f"a {self.type} entry needs a count (its links per pair)")
        return self


class FleetNode(_FleetModel):
    name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    ]
    devices: list[FleetDevice] = Field(default_factory=list)
    links: list[FleetLink] = Field(default_factory=list)
    #: Labels of the node itself (its rack, zone): what the local cluster puts on the fake
    #: Node; the exporter does not read them.
    labels: Annotated[dict[str, Annotated[str, Field(max_length=63)]],
                      Field(max_length=64)] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _links_within_node(self) -> FleetNode:
        fabric: dict[tuple[int, int], int] = {}
        for n, link in enumerate(self.links):
            for position in link.devices:
                if position >= len(self.devices):
                    raise ValueError(f"links[{n}].devices: position {position} is not a device "
                                     f"of the node (it has {len(self.devices)})")
            if link.type is LinkType.PCIE:
                continue
            for pair in pairs(link.devices):
                if pair in fabric:
                    raise ValueError(f"links[{n}]: devices {pair[0]} and {pair[1]} already have "
                                     f"a fabric in links[{fabric[pair]}]")
                fabric[pair] = n
        return self


def pairs(positions: list[int]) -> list[tuple[int, int]]:
    """Every pair of ``positions``, each as (smaller, larger)."""
    ordered = sorted(positions)
    return [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:]]


class ResolvedDevice(BaseModel):
    """A fleet device with its node, index and UUID settled."""

    model_config = ConfigDict(frozen=True)

    node: str
    index: int
    uuid: str
    spec: FleetDevice
    #: Its position in the node's ``devices`` (what ``links`` refer to).
    position: int = 0


class Fleet(_FleetModel):
    nodes: list[FleetNode] = Field(min_length=1)

    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def devices_of(self, node: str) -> list[ResolvedDevice]:
        return _resolve(self.node(node))

    def node(self, name: str) -> FleetNode:
        for entry in self.nodes:
            if entry.name == name:
                return entry
        raise KeyError(name)


def _default_uuid(node: str, vendor: Vendor, index: int) -> str:
    digest = hashlib.sha256(f"{node}/{vendor.value}/{index}".encode()).hexdigest()
    prefix = "GPU" if vendor is Vendor.NVIDIA else vendor.value.upper()
    return f"{prefix}-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _resolve(node: FleetNode) -> list[ResolvedDevice]:
    counters: dict[Vendor, int] = {}
    out = []
    for place, device in enumerate(node.devices):
        position = counters.get(device.vendor, 0)
        counters[device.vendor] = position + 1
        index = position if device.index is None else device.index
        uuid = device.uuid or _default_uuid(node.name, device.vendor, index)
        out.append(ResolvedDevice(node=node.name, index=index, uuid=uuid, spec=device,
                                  position=place))
    return out


class FleetError(ValueError):
    """A fleet file that cannot be used: names the file, the entry and the reason."""

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        self.entry, self.reason = problems[0]
        lines = "; ".join(f"{entry}: {reason}" for entry, reason in problems)
        super().__init__(f"fleet file {path}: {lines}")


def _entry(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("function-after", "function-before") or part.startswith("function-"):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text or "<file>"


def _duplicates(fleet: Fleet) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    seen_nodes: dict[str, int] = {}
    seen_uuids: dict[str, str] = {}
    for n, node in enumerate(fleet.nodes):
        if node.name in seen_nodes:
            problems.append(
                (
                    f"nodes[{n}]",
                    f"duplicate node {node.name!r} (also nodes[{seen_nodes[node.name]}])",
                )
            )
            continue
        seen_nodes[node.name] = n
        seen_slots: dict[tuple[Vendor, int], int] = {}
        for d, device in enumerate(_resolve(node)):
            entry = f"nodes[{n}].devices[{d}]"
            slot = (device.spec.vendor, device.index)
            if slot in seen_slots:
                problems.append(
                    (
                        entry,
                        f"duplicate device: {device.spec.vendor.value} index {device.index} "
                        f"on node {node.name!r} is also nodes[{n}].devices[{seen_slots[slot]}]",
                    )
                )
            else:
                seen_slots[slot] = d
            if device.uuid in seen_uuids:
                problems.append(
                    (
                        entry,
                        f"duplicate device: uuid {device.uuid!r} is also {seen_uuids[device.uuid]}",
                    )
                )
            else:
                seen_uuids[device.uuid] = entry
    return problems


def _reason(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "enum" and error["loc"]:
        return f"unknown {error['loc'][-1]} {error['input']!r}: {message}"
    return message


def parse_fleet(data: Any, source: str = "<fleet>") -> Fleet:
    """Validate fleet data (already parsed YAML); FleetError names the entry and the reason."""
    if not isinstance(data, dict):
        raise FleetError(source, [("<file>", "expected a mapping with a 'nodes' list")])
    try:
        fleet = Fleet.model_validate(data)
    except ValidationError as exc:
        problems = [(_entry(tuple(err["loc"])), _reason(err)) for err in exc.errors()]
        raise FleetError(source, problems) from None
    problems = _duplicates(fleet)
    if problems:
        raise FleetError(source, problems)
    return fleet


def load_fleet(path: Path | str) -> Fleet:
    """Read and validate a fleet file; FleetError (a ValueError) on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(str(path), [("<file>", f"cannot read: {exc.strerror or exc}")]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FleetError(str(path), [("<file>", f"not valid YAML: {exc}")]) from exc
    return parse_fleet(data, str(path))


def demo_fleet_path() -> Path:
    """The sample fleet shipped with the package (every vendor, every behaviour)."""
    return Path(__file__).resolve().parent.parent / "data" / "fleet-demo.yaml"
