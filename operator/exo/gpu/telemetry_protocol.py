"""Wire models shared by every exo-gpu component: vendors, device identity and metric samples.

These are the types of the original design (``from exo.gpu.telemetry_protocol import GPUMetrics,
GPUDeviceInfo, Vendor``). They validate at the boundary so that nothing downstream has to defend
against impossible numbers: a negative byte count, memory used above total, a NaN or infinite
reading, a utilization outside 0..100 or an unknown vendor is refused with a pydantic
``ValidationError`` that names the field and the reason. Both models are frozen: a sample or an
identity, once accepted, can be shared by the collector, the selector and the controller without
copies.

What this module does not check (it needs context it does not have): whether a device is
registered, whether a sample's timestamp lies in the future relative to a clock, and whether a
sample's ``memory_total_bytes`` agrees with the registered device. ``GPUClusteringManager`` does.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["GPUDeviceInfo", "GPUMetrics", "Vendor"]


class Vendor(StrEnum):
    """GPU vendors sharing one model. Parsing is case-insensitive (``"NVIDIA"`` -> ``NVIDIA``)."""

    NVIDIA = "nvidia"
    AMD = "amd"
    INTEL = "intel"
    APPLE = "apple"
    QUALCOMM = "qualcomm"

    @classmethod
    def _missing_(cls, value: object) -> Vendor | None:
        if isinstance(value, str):
            wanted = value.strip().lower()
            for member in cls:
                if member.value == wanted:
                    return member
        return None


#: Lowest physically meaningful temperature (absolute zero) and the highest reading accepted.
#: Sensors report sentinel values such as 255 when a read fails; anything above 200 C is such a
#: sentinel, not a temperature, and would silently exclude a device if it were believed.
MIN_TEMPERATURE_CELSIUS = -273.15
MAX_TEMPERATURE_CELSIUS = 200.0

NonEmptyStr = Annotated[str, Field(min_length=1, max_length=253)]
ByteCount = Annotated[int, Field(ge=0)]
PositiveByteCount = Annotated[int, Field(gt=0)]


class GPUDeviceInfo(BaseModel):
    """Identity of one GPU: who it is, where it lives, how much memory and compute it has.

    ``device_id`` is the key everywhere (the manager, the selector, distributions). ``vendor``,
    ``name`` and ``memory_total_bytes`` are required; the rest is optional topology and an
    optional declared ``compute_capacity`` (relative compute, see ``exo.gpu.capabilities``) that
    overrides the capability table.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    device_id: NonEmptyStr
    vendor: Vendor
    name: NonEmptyStr
    memory_total_bytes: PositiveByteCount
    node: NonEmptyStr | None = None
    uuid: NonEmptyStr | None = None
    index: Annotated[int, Field(ge=0)] | None = None
    compute_capacity: Annotated[float, Field(gt=0)] | None = None
    pci_bus_id: NonEmptyStr | None = None
    numa_node: Annotated[int, Field(ge=0)] | None = None

    @field_validator("numa_node", mode="before")
    @classmethod
    def _unknown_numa_node(cls, value: Any) -> Any:
        # Linux reports -1 in /sys/bus/pci/devices/*/numa_node when the platform has no NUMA
        # information; that means "unknown", not an error.
        if value == -1 and not isinstance(value, bool):
            return None
        return value


class GPUMetrics(BaseModel):
    """One telemetry sample of one device at ``timestamp`` (seconds since the Unix epoch).

    Memory and utilization are always measured. ``temperature_celsius``, ``power_watts`` and
    ``clock_rate_mhz`` are ``None`` when the device's driver does not expose them (an Adreno
    reports no power, an integrated Intel GPU no temperature of its own): absent, never a zero
    that would read as a cold, idle device. Every consumer says what it does with an unknown.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    device_id: NonEmptyStr
    timestamp: Annotated[float, Field(ge=0)]
    memory_used_bytes: ByteCount
    memory_total_bytes: PositiveByteCount
    compute_utilization_percent: Annotated[float, Field(ge=0, le=100)]
    power_watts: Annotated[float, Field(ge=0)] | None = None
    temperature_celsius: (
        Annotated[float, Field(ge=MIN_TEMPERATURE_CELSIUS, le=MAX_TEMPERATURE_CELSIUS)] | None
    ) = None
    clock_rate_mhz: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _used_within_total(self) -> GPUMetrics:
        if self.memory_used_bytes > self.memory_total_bytes:
            raise ValueError(
                f"memory_used_bytes ({self.memory_used_bytes}) exceeds memory_total_bytes "
                f"({self.memory_total_bytes}): a device cannot use more memory than it has"
            )
        return self

    @property
    def memory_free_bytes(self) -> int:
        """Measured free memory (never negative: the validator guarantees used <= total)."""
        return self.memory_total_bytes - self.memory_used_bytes
