"""Relative compute of GPU models, so capacity-weighted distribution has a sensible default.

Basis: one figure per model, in TFLOPS, for **peak dense FP16 math with FP32 accumulation on the
fastest path the device offers** (tensor / matrix / XMX cores where it has them, otherwise the
shader FP16 rate; no structured-sparsity doubling). It is the number that bounds the inference and
training work this project spreads across devices. Figures are rounded vendor spec-sheet values:
they rank devices, they do not predict a benchmark. A device that knows better declares its own
``GPUDeviceInfo.compute_capacity`` and that always wins.

Resolution order (``resolve_compute_capacity``):

1. ``declared``: ``GPUDeviceInfo.compute_capacity`` when set.
2. ``table``: the model name, normalized (lower case, punctuation and vendor noise words such as
   "NVIDIA", "GeForce", "Tesla", "(R)", "(TM)" dropped), contains the tokens of a table entry of
   the device's vendor. The longest matching entry wins, so "NVIDIA GeForce RTX 4090" and
   "NVIDIA RTX 4090" both hit "rtx 4090", and "NVIDIA H100 PCIe" hits "h100 pcie" rather than
   "h100".
3. ``memory_fallback``: memory in GiB times a conservative per-vendor TFLOPS-per-GiB ratio
   (unified-memory vendors get a much lower one), never below ``MIN_FALLBACK_TFLOPS``. An unknown
   model is therefore never "0 compute", the bug that a hard-coded table without a fallback keeps
   producing; it is slightly under-estimated instead, which errs towards giving it less work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from exo.gpu.telemetry_protocol import GPUDeviceInfo, Vendor

__all__ = [
    "CAPABILITY_TABLE",
    "FALLBACK_TFLOPS_PER_GIB",
    "MIN_FALLBACK_TFLOPS",
    "CapacityEstimate",
    "CapacitySource",
    "compute_capacity",
    "lookup_model",
    "normalize_model_name",
    "resolve_compute_capacity",
]


class CapacitySource(StrEnum):
    """Where a compute figure came from (shown in placement explanations)."""

    DECLARED = "declared"
    TABLE = "table"
    MEMORY_FALLBACK = "memory_fallback"


@dataclass(frozen=True, slots=True)
class CapacityEstimate:
    """A compute figure, its source, and the table entry it matched (if any)."""

    value: float
    source: CapacitySource
    matched_model: str | None = None


#: Model -> dense FP16 TFLOPS (see the module docstring for the basis). Keys are normalized
#: token strings matched against normalized device names of the same vendor.
CAPABILITY_TABLE: dict[Vendor, dict[str, float]] = {
    Vendor.NVIDIA: {
        "b200": 2250.0,
        "b100": 1750.0,
        "gh200": 989.0,
        "h200": 989.0,
        "h100": 989.0,
        "h100 pcie": 756.0,
        "h100 nvl": 835.0,
        "h800": 989.0,
        "h20": 148.0,
        "a100": 312.0,
        "a800": 312.0,
        "a40": 150.0,
        "a30": 165.0,
        "a10": 125.0,
        "a10g": 70.0,
        "a2": 18.0,
        "l40s": 362.0,
        "l40": 181.0,
        "l4": 121.0,
        "t4": 65.0,
        "v100": 125.0,
        "v100 pcie": 112.0,
        "v100s": 130.0,
        "p100": 19.0,
        "rtx 6000 ada": 364.0,
        "rtx a6000": 155.0,
        "rtx a5000": 111.0,
        "rtx a4000": 77.0,
        "rtx 5090": 210.0,
        "rtx 5080": 113.0,
        "rtx 4090": 165.0,
        "rtx 4080": 97.0,
        "rtx 4070 ti": 80.0,
        "rtx 4070": 58.0,
        "rtx 4060": 30.0,
        "rtx 3090 ti": 40.0,
        "rtx 3090": 36.0,
        "rtx 3080 ti": 34.0,
        "rtx 3080": 30.0,
        "rtx 3070": 20.0,
        "rtx 3060": 13.0,
        "rtx 2080 ti": 57.0,
        "jetson agx orin": 43.0,
    },
    Vendor.AMD: {
        "mi355x": 2300.0,
        "mi325x": 1307.0,
        "mi300x": 1307.0,
        "mi300a": 981.0,
        "mi250x": 383.0,
        "mi250": 362.0,
        "mi210": 181.0,
        "mi100": 185.0,
        "mi50": 27.0,
        "rx 7900 xtx": 123.0,
        "rx 7900 xt": 103.0,
        "rx 7900 gre": 92.0,
        "rx 7800 xt": 75.0,
        "pro w7900": 123.0,
        "pro w7800": 90.0,
        "rx 9070 xt": 195.0,
        "rx 6900 xt": 46.0,
        "rx 6800 xt": 41.0,
    },
    Vendor.INTEL: {
        "max 1550": 839.0,
        "max 1100": 352.0,
        "flex 170": 128.0,
        "flex 140": 64.0,
        "arc a770": 138.0,
        "arc a750": 118.0,
        "arc a580": 98.0,
        "arc b580": 117.0,
        "arc b570": 99.0,
        "arc 140v": 32.0,
    },
    Vendor.APPLE: {
        "m1": 2.6,
        "m1 pro": 5.2,
        "m1 max": 10.4,
        "m1 ultra": 21.2,
        "m2": 3.6,
        "m2 pro": 6.8,
        "m2 max": 13.6,
        "m2 ultra": 27.2,
        "m3": 4.1,
        "m3 pro": 7.4,
        "m3 max": 16.4,
        "m3 ultra": 32.8,
        "m4": 4.3,
        "m4 pro": 9.2,
        "m4 max": 18.4,
    },
    Vendor.QUALCOMM: {
        "adreno x1 85": 9.2,
        "adreno x1 45": 3.8,
        "adreno 830": 6.8,
        "adreno 750": 5.6,
        "adreno 740": 4.2,
        "adreno 730": 3.6,
        "adreno 690": 3.4,
    },
}

#: TFLOPS per GiB of device memory for models the table lacks: roughly the lower quartile of the
#: table's own ratios per vendor, so an unknown device is under- rather than over-estimated.
#: Apple and Qualcomm share system memory with the CPU, which makes memory a weak proxy: their
#: ratio is far lower.
FALLBACK_TFLOPS_PER_GIB: dict[Vendor, float] = {
    Vendor.NVIDIA: 4.0,
    Vendor.AMD: 3.0,
    Vendor.INTEL: 4.0,
    Vendor.APPLE: 0.15,
    Vendor.QUALCOMM: 0.3,
}

#: Floor of the memory fallback: no registered device computes "nothing".
MIN_FALLBACK_TFLOPS = 1.0

_GIB = 1024**3
_NOISE_TOKENS = frozenset(
    {
        "nvidia",
        "geforce",
        "tesla",
        "quadro",
        "amd",
        "ati",
        "radeon",
        "instinct",
        "intel",
        "r",
        "tm",
        "data",
        "center",
        "datacenter",
        "gpu",
        "graphics",
        "apple",
        "qualcomm",
        "snapdragon",
    }
)
# Tokens dropped from table keys too, so "radeon pro w7900" and "pro w7900" agree.
_SPLIT = re.compile(r"[^a-z0-9]+")


def normalize_model_name(name: str) -> tuple[str, ...]:
    """Lower-case alphanumeric tokens of ``name`` without vendor noise words."""
    return tuple(t for t in _SPLIT.split(name.lower()) if t and t not in _NOISE_TOKENS)


def _build_index() -> dict[Vendor, dict[str, list[tuple[tuple[str, ...], str, float]]]]:
    index: dict[Vendor, dict[str, list[tuple[tuple[str, ...], str, float]]]] = {}
    for vendor, models in CAPABILITY_TABLE.items():
        by_first: dict[str, list[tuple[tuple[str, ...], str, float]]] = {}
        for model, tflops in models.items():
            tokens = normalize_model_name(model)
            by_first.setdefault(tokens[0], []).append((tokens, model, tflops))
        index[vendor] = by_first
    return index


_INDEX = _build_index()


@lru_cache(maxsize=4096)
def lookup_model(vendor: Vendor, name: str) -> tuple[str, float] | None:
    """The table entry ``(model, tflops)`` that ``name`` matches for ``vendor``, or None.

    The entry with the most tokens wins; among equally long matches, the earliest in the name.
    """
    tokens = normalize_model_name(name)
    by_first = _INDEX.get(vendor, {})
    best: tuple[int, str, float] | None = None
    for start, token in enumerate(tokens):
        for key, model, tflops in by_first.get(token, ()):
            if tokens[start : start + len(key)] == key and (best is None or len(key) > best[0]):
                best = (len(key), model, tflops)
    return None if best is None else (best[1], best[2])


def memory_fallback(vendor: Vendor, memory_total_bytes: int) -> float:
    """Compute estimate from memory size alone, never below ``MIN_FALLBACK_TFLOPS``."""
    ratio = FALLBACK_TFLOPS_PER_GIB.get(vendor, min(FALLBACK_TFLOPS_PER_GIB.values()))
    return max(MIN_FALLBACK_TFLOPS, round(ratio * memory_total_bytes / _GIB, 3))


def resolve_compute_capacity(info: GPUDeviceInfo) -> CapacityEstimate:
    """Compute figure of ``info`` and where it came from (declared, table, memory fallback)."""
    if info.compute_capacity is not None:
        return CapacityEstimate(info.compute_capacity, CapacitySource.DECLARED)
    match = lookup_model(info.vendor, info.name)
    if match is not None:
        return CapacityEstimate(match[1], CapacitySource.TABLE, match[0])
    return CapacityEstimate(
        memory_fallback(info.vendor, info.memory_total_bytes), CapacitySource.MEMORY_FALLBACK
    )


def compute_capacity(info: GPUDeviceInfo) -> float:
    """Relative compute of ``info`` (TFLOPS-like, always > 0)."""
    return resolve_compute_capacity(info).value
