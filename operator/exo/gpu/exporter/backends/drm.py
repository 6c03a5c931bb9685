"""GPUs read from what the Linux kernel drivers publish in sysfs: amdgpu, i915/xe and kgsl.

No vendor library is needed: the drivers already export utilization, memory, clocks,
temperature and power as files. Reading (:mod:`.sysfs`) is kept apart from parsing
(:mod:`.drm_parse`); this module decides which files mean what, per driver, and builds the core
models. A field the driver does not expose is absent from the sample (None), never 0.

Discovery lists ``class/drm/card<N>`` (the driver is ``DRIVER=`` in ``device/uevent``) and
``class/kgsl/kgsl-3d<N>`` (Qualcomm's Adreno driver on Android-derived and Qualcomm Linux
kernels). Cards of other drivers (a BMC's ``ast``, ``nvidia``, upstream ``msm``) and cards whose
memory cannot be sized are not reported; :attr:`DrmBackend.skipped` says which and why (the
probe prints it, the log says it once). Device indexes count per vendor in PCI address order,
which, unlike ``cardN`` numbering, does not change between boots.

What each driver yields (the table in ``docs/exporter.md`` is the reference):

* **amdgpu**: ``gpu_busy_percent``; VRAM ``mem_info_vram_total`` / ``_used``; hwmon temperature
  (``edge``, else ``junction``, else ``temp1``), power (``power1_average``, else
  ``power1_input``) and shader clock (``freq1_input``, labelled ``sclk``, else the ``*`` level of
  ``pp_dpm_sclk``).
* **i915 / xe**: utilization is the share of the poll interval the GT spent outside its idle
  state, from the idle-residency counter (i915 ``gt/gt0/rc6_residency_ms``, xe
  ``tile0/gt0/gtidle/idle_residency_ms``). The first sample after discovery has no interval yet
  and reports the GT's current state instead (idle: 0 %, awake: 100 %). Clock: the actual
  frequency (0 when the GT is power-gated). Integrated parts (told apart by having no hwmon of
  their own: i915 and xe register one only on discrete parts) allocate from system memory
  (below) and have no GPU temperature or power sensor. Discrete parts publish no VRAM use in
  sysfs: a discrete card whose VRAM size xe publishes (``tile0/physical_vram_size_bytes``) is
  registered and reports ``MemoryNotExposed``; one without (i915) is skipped. ``--backend
  intel`` (xpu-smi) reads both.
* **kgsl** (Adreno): ``gpu_busy_percentage``, else ``gpubusy``; ``devfreq/cur_freq``, else
  ``gpuclk``; temperature from ``temp``, else the hottest thermal zone whose type starts with
  ``gpu``; no power.

Shared memory (integrated Intel, Adreno): the GPU allocates from system memory with no separate
pool or cap in sysfs, so the share the driver allows is all of it: total ``MemTotal`` and used
``MemTotal - MemAvailable`` from ``<procfs-root>/meminfo``. Free memory is what the system can
still give a new allocation.

Failures, per device, never for the node: a file that cannot be read is ``SysfsUnreadable``,
text that is not what the file holds ``SysfsGarbled``, a required value the driver does not
publish ``UtilizationNotExposed`` / ``MemoryNotExposed``, a card whose directory is gone
``DeviceLost``. Each becomes that device's Ready=False reason; the other devices carry on.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from exo.gpu.k8s.models import device_name
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

from .base import HEALTHY, BackendError, BackendUnavailable, DeviceHealth, DeviceLost
from .drm_parse import (
    ParseError,
    busy_from_idle_residency,
    hertz_to_mhz,
    parse_dpm_current_mhz,
    parse_int,
    parse_kgsl_busy_percentage,
    parse_kgsl_gpubusy,
    parse_meminfo,
    parse_uevent,
    parse_xe_idle_status,
)
from .sysfs import FileError, FileTree, Missing

log = logging.getLogger("exo.gpu.exporter.drm")

T = TypeVar("T")
Kind = Literal["amdgpu", "i915", "xe", "kgsl"]

VENDOR_OF: dict[str, Vendor] = {
    "amdgpu": Vendor.AMD,
    "i915": Vendor.INTEL,
    "xe": Vendor.INTEL,
    "kgsl": Vendor.QUALCOMM,
}

#: Drivers with a DRM card that this backend does not read, and what to do instead.
NOT_READ: dict[str, str] = {
    "nvidia": "NVIDIA GPUs are read through NVML (--backend nvml)",
    "nvidia-drm": "NVIDIA GPUs are read through NVML (--backend nvml)",
    "msm": "upstream msm (freedreno) publishes no GPU utilization in sysfs; Adreno is read "
    "through kgsl",
    "msm_drm": "a Qualcomm display controller; the Adreno GPU is read through kgsl",
}

#: Marketing names of PCI device ids, from the bracketed names of the pci.ids database
#: (version 2025.06.21), for the parts a cluster is likely to hold and those of the recorded
#: fixtures. amdgpu's own ``product_name`` wins where the board publishes one; an id not listed
#: is named by its vendor and id (``AMD GPU 1002:7551``).
PCI_NAMES: dict[str, str] = {
    "1002:687F": "AMD Radeon RX Vega 56/64",
    "1002:738C": "AMD Instinct MI100",
    "1002:73BF": "AMD Radeon RX 6800/6800 XT/6900 XT",
    "1002:7408": "AMD Instinct MI250X",
    "1002:740C": "AMD Instinct MI250X/MI250",
    "1002:740F": "AMD Instinct MI210",
    "1002:744C": "AMD Radeon RX 7900 XT/XTX",
    "1002:74A1": "AMD Instinct MI300X",
    "1002:74A5": "AMD Instinct MI325X",
    "1002:74A9": "AMD Instinct MI300X HF",
    "8086:0BD5": "Intel Data Center GPU Max 1550",
    "8086:0BD6": "Intel Data Center GPU Max 1550",
    "8086:0BDA": "Intel Data Center GPU Max 1100",
    "8086:46A6": "Intel Iris Xe Graphics (Alder Lake-P)",
    "8086:56A0": "Intel Arc A770",
    "8086:56A5": "Intel Arc A380",
    "8086:56C0": "Intel Data Center GPU Flex 170",
    "8086:56C1": "Intel Data Center GPU Flex 140",
    "8086:5917": "Intel UHD Graphics 620",
    "8086:7D55": "Intel Arc Graphics (Meteor Lake-P)",
    "8086:9A49": "Intel Iris Xe Graphics (Tiger Lake-LP)",
    "8086:9B41": "Intel UHD Graphics (Comet Lake-U)",
    "8086:E20B": "Intel Arc B580",
    "8086:E20C": "Intel Arc B570",
}

#: The DRM drivers this backend reads, by the name in ``DRIVER=``.
KINDS: dict[str, Kind] = {"amdgpu": "amdgpu", "i915": "i915", "xe": "xe"}

_CARD = re.compile(r"card(\d+)")
_KGSL = re.compile(r"kgsl-3d(\d+)")


@dataclass(frozen=True)
class Skipped:
    """A device discovery saw and does not report, and why."""

    where: str
    reason: str


@dataclass(frozen=True)
class Card:
    """What discovery learned about one device: where its files are and how to read them."""

    kind: Kind
    card: str  # class/drm/card0 or class/kgsl/kgsl-3d0
    device: str  # class/drm/card0/device (the PCI device) or the kgsl directory
    key: str  # stable across discoveries: the PCI address, or the kgsl name
    hwmon: str | None
    shared_memory: bool
    info: GPUDeviceInfo

    @property
    def label(self) -> str:
        name = self.card.rsplit("/", 1)[-1]
        return name if self.kind == "kgsl" else f"{name} ({self.kind} {self.key})"


@dataclass
class _Counters:
    """The previous reading of a device's counters, for rates over the poll interval."""

    time: float
    idle_ms: int | None = None


@dataclass
class _Found:
    kind: Kind
    card: str
    device: str
    key: str
    vendor: Vendor
    uevent: dict[str, str] = field(default_factory=dict)


class DrmBackend:
    """Sysfs-backed :class:`~exo.gpu.exporter.backends.base.Backend` for every DRM/kgsl GPU."""

    name = "drm"

    def __init__(
        self,
        node: str,
        sysfs_root: Path | str = "/sys",
        procfs_root: Path | str = "/proc",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.sys = FileTree(sysfs_root)
        self.proc = FileTree(procfs_root)
        if not self.sys.is_dir("class"):
            raise BackendUnavailable(
                f"drm: {self.sys.root} has no class/ directory: not a sysfs tree (--sysfs-root)"
            )
        self._clock = clock
        self._wall = wall
        self._known: dict[str, Card] = {}
        self._cards: dict[str, Card] = {}  # device_id -> card, from the last discovery
        self._counters: dict[str, _Counters] = {}
        self.skipped: list[Skipped] = []
        self._logged_skips: set[Skipped] = set()

    def close(self) -> None:
        return None

    # -- discovery --------------------------------------------------------------------------

    def discover(self) -> list[GPUDeviceInfo]:
        try:
            found, skipped = self._find()
        except FileError as exc:  # a class directory that cannot be listed
            raise BackendError(f"drm: discovery: {exc}", "SysfsUnreadable") from None
        counts: dict[Vendor, int] = {}
        cards: dict[str, Card] = {}
        for item in sorted(found, key=lambda f: (f.vendor.value, f.key)):
            index = counts.get(item.vendor, 0)
            try:
                card = self._identify(item, index)
            except (_Skip, FileError) as why:
                known = self._known.get(item.key)
                if known is None:
                    skipped.append(Skipped(item.card, str(why)))
                    continue
                # Known before: keep its identity, so that read() reports the problem as the
                # device's condition instead of the device vanishing.
                card = known
            counts[item.vendor] = index + 1
            cards[card.info.device_id] = card
            self._known[card.key] = card
        self._cards = cards
        self.skipped = skipped
        for skip in skipped:
            if skip not in self._logged_skips:
                log.warning("drm: not reporting %s: %s", skip.where, skip.reason)
        self._logged_skips = set(skipped)
        return [c.info for c in cards.values()]

    def _find(self) -> tuple[list[_Found], list[Skipped]]:
        found: list[_Found] = []
        skipped: list[Skipped] = []
        for name in self.sys.entries("class/drm"):
            if not _CARD.fullmatch(name):
                continue  # connectors (card0-DP-1), render nodes, version
            card = f"class/drm/{name}"
            device = f"{card}/device"
            try:
                uevent = parse_uevent(self.sys.text(f"{device}/uevent"))
            except FileError as exc:
                skipped.append(Skipped(card, f"cannot identify the driver: {exc}"))
                continue
            driver = uevent.get("DRIVER") or self.sys.link_name(f"{device}/driver") or ""
            kind = KINDS.get(driver)
            if kind is not None:
                key = uevent.get("PCI_SLOT_NAME") or card
                found.append(_Found(kind, card, device, key, VENDOR_OF[kind], uevent))
            elif driver:
                reason = NOT_READ.get(driver, f"driver {driver} is not one this backend reads")
                skipped.append(Skipped(card, reason))
            else:
                skipped.append(Skipped(card, "no driver bound (no DRIVER= in device/uevent)"))
        for name in self.sys.entries("class/kgsl"):
            if _KGSL.fullmatch(name):
                path = f"class/kgsl/{name}"
                found.append(_Found("kgsl", path, path, name, Vendor.QUALCOMM))
        return found, skipped

    def _identify(self, item: _Found, index: int) -> Card:
        hwmon = self._hwmon(item) if item.kind != "kgsl" else None
        shared = False
        uuid: str | None = None
        pci = item.uevent.get("PCI_SLOT_NAME")
        if item.kind == "amdgpu":
            total = self._identity_int(f"{item.device}/mem_info_vram_total", "VRAM size")
            name = self._optional_identity(f"{item.device}/product_name") or _pci_name(
                "AMD", item.uevent.get("PCI_ID")
            )
            uuid = self._optional_identity(f"{item.device}/unique_id")
        elif item.kind in ("i915", "xe"):
            name = _pci_name("Intel", item.uevent.get("PCI_ID"))
            vram = self._xe_vram_size(item)
            if vram is not None:
                total = vram
            elif hwmon is not None:
                raise _Skip(
                    f"a discrete {item.kind} card whose local memory size the driver does not "
                    "publish in sysfs; read it with --backend intel (xpu-smi)"
                )
            else:
                total, shared = self._shared_total(), True
        else:
            model = self._optional_identity(f"{item.device}/gpu_model")
            name = f"Qualcomm {_adreno_name(model)}"
            total, shared = self._shared_total(), True
        if total <= 0:
            raise _Skip(f"memory size {total} is not positive")
        numa = self._optional_identity(f"{item.device}/numa_node") if pci else None
        info = GPUDeviceInfo(
            device_id=device_name(self.node, item.vendor, index),
            vendor=item.vendor,
            name=name,
            memory_total_bytes=total,
            node=self.node,
            uuid=uuid or None,
            index=index,
            pci_bus_id=pci or None,
            numa_node=_numa(numa),
        )
        return Card(item.kind, item.card, item.device, item.key, hwmon, shared, info)

    def _hwmon(self, item: _Found) -> str | None:
        """The driver's own hwmon directory (i915 and xe register one only on discrete parts)."""
        for entry in self.sys.entries(f"{item.device}/hwmon"):
            path = f"{item.device}/hwmon/{entry}"
            name = self.sys.optional_text(f"{path}/name")
            if name == item.kind or (name is not None and name.startswith(item.kind)):
                return path
        return None

    def _xe_vram_size(self, item: _Found) -> int | None:
        total = 0
        for entry in self.sys.entries(item.device):
            if re.fullmatch(r"tile\d+", entry):
                rel = f"{item.device}/{entry}/physical_vram_size_bytes"
                if self.sys.exists(rel):
                    total += self._identity_int(rel, "VRAM size")
        return total or None

    def _shared_total(self) -> int:
        try:
            meminfo = parse_meminfo(self.proc.text("meminfo"))
        except (FileError, ParseError) as exc:
            raise _Skip(f"shared memory: cannot size system memory from meminfo: {exc}") from None
        if "MemTotal" not in meminfo:
            raise _Skip("shared memory: meminfo has no MemTotal")
        return meminfo["MemTotal"]

    def _identity_int(self, rel: str, what: str) -> int:
        try:
            return parse_int(self.sys.text(rel))
        except Missing:
            raise _Skip(f"{what} not published ({rel})") from None
        except (FileError, ParseError) as exc:
            raise _Skip(f"{what} unreadable ({rel}: {exc})") from None

    def _optional_identity(self, rel: str) -> str | None:
        try:
            return self.sys.optional_text(rel) or None
        except FileError:
            return None

    # -- reading ----------------------------------------------------------------------------

    def _card(self, device: GPUDeviceInfo) -> Card:
        card = self._cards.get(device.device_id)
        if card is None:
            raise DeviceLost(f"drm: {device.device_id} is not among the discovered devices")
        if not self.sys.is_dir(card.device):
            raise DeviceLost(f"drm: {card.label}: {card.device} is gone")
        return card

    def read(self, device: GPUDeviceInfo) -> GPUMetrics:
        card = self._card(device)
        now = self._clock()
        try:
            if card.kind == "amdgpu":
                fields = self._read_amdgpu(card)
            elif card.kind == "kgsl":
                fields = self._read_kgsl(card)
            else:
                fields = self._read_intel(card, now)
            if card.shared_memory:
                fields.update(self._shared_memory(card))
        except FileError as exc:  # a directory (hwmon, thermal zones) that cannot be listed
            raise BackendError(f"drm: {card.label}: {exc}", "SysfsUnreadable") from None
        return GPUMetrics(device_id=device.device_id, timestamp=self._wall(), **fields)

    def _read_amdgpu(self, card: Card) -> dict[str, object]:
        dev = card.device
        busy = self._required(card, f"{dev}/gpu_busy_percent", parse_int, "UtilizationNotExposed")
        total = self._required(card, f"{dev}/mem_info_vram_total", parse_int, "MemoryNotExposed")
        used = self._required(card, f"{dev}/mem_info_vram_used", parse_int, "MemoryNotExposed")
        temperature = power = clock = None
        if card.hwmon is not None:
            channel = self._labelled(card.hwmon, "temp", ("edge", "junction"))
            if channel is not None:
                temperature = self._millidegrees(card, f"{card.hwmon}/{channel}_input")
            power = self._first(
                card, [f"{card.hwmon}/power1_average", f"{card.hwmon}/power1_input"], _microwatts
            )
            freq = self._labelled(card.hwmon, "freq", ("sclk",), fallback=False)
            if freq is not None:
                clock = self._optional(card, f"{card.hwmon}/{freq}_input", hertz_to_mhz)
        if clock is None:
            clock = self._optional(card, f"{dev}/pp_dpm_sclk", parse_dpm_current_mhz)
        return {
            "compute_utilization_percent": float(busy),
            "memory_total_bytes": total,
            "memory_used_bytes": used,
            "temperature_celsius": temperature,
            "power_watts": power,
            "clock_rate_mhz": clock,
        }

    def _read_intel(self, card: Card, now: float) -> dict[str, object]:
        if not card.shared_memory:
            raise BackendError(
                f"drm: {card.label}: the driver publishes no VRAM use in sysfs; read this card "
                "with --backend intel (xpu-smi)",
                "MemoryNotExposed",
            )
        if card.kind == "xe":
            gt = f"{card.device}/tile0/gt0"
            actual = [f"{gt}/freq0/act_freq"]
            requested = [f"{gt}/freq0/cur_freq"]
            idle_paths = [f"{gt}/gtidle/idle_residency_ms"]
        else:
            actual = [f"{card.card}/gt/gt0/rps_act_freq_mhz", f"{card.card}/gt_act_freq_mhz"]
            requested = [f"{card.card}/gt/gt0/rps_cur_freq_mhz", f"{card.card}/gt_cur_freq_mhz"]
            idle_paths = [
                f"{card.card}/gt/gt0/rc6_residency_ms",
                f"{card.card}/power/rc6_residency_ms",
            ]
        act = self._first(card, actual, _mhz)
        clock = act if act is not None else self._first(card, requested, _mhz)
        idle_ms = self._first(card, idle_paths, parse_int)
        previous = self._counters.get(card.info.device_id)
        self._counters[card.info.device_id] = _Counters(now, idle_ms)
        busy: float | None = None
        if previous is not None and idle_ms is not None and previous.idle_ms is not None:
            busy = busy_from_idle_residency(previous.idle_ms, idle_ms, now - previous.time)
        if busy is None:
            busy = self._intel_state(card, act)
        # Integrated parts have no hwmon of their own: no GPU temperature or power to read.
        return {
            "compute_utilization_percent": busy,
            "temperature_celsius": None,
            "power_watts": None,
            "clock_rate_mhz": clock,
        }

    def _intel_state(self, card: Card, actual_mhz: float | None) -> float:
        """The GT's current state as a utilization (no interval measured yet)."""
        if card.kind == "xe":
            status = f"{card.device}/tile0/gt0/gtidle/idle_status"
            idle = self._optional(card, status, parse_xe_idle_status)
            if idle is not None:
                return 0.0 if idle else 100.0
        elif actual_mhz is not None:
            return 0.0 if actual_mhz == 0 else 100.0  # i915: no actual frequency while in RC6
        raise BackendError(
            f"drm: {card.label}: neither a GT idle-residency counter nor the GT's idle state "
            "is published",
            "UtilizationNotExposed",
        )

    def _read_kgsl(self, card: Card) -> dict[str, object]:
        dev = card.device
        busy = self._optional(card, f"{dev}/gpu_busy_percentage", parse_kgsl_busy_percentage)
        if busy is None:
            busy = self._required(
                card, f"{dev}/gpubusy", parse_kgsl_gpubusy, "UtilizationNotExposed"
            )
        clock = self._first(card, [f"{dev}/devfreq/cur_freq", f"{dev}/gpuclk"], hertz_to_mhz)
        # kgsl prints nothing in ``temp`` when no thermal zone is configured for the GPU.
        temperature = self._optional(card, f"{dev}/temp", _millidegrees_or_empty)
        if temperature is None:
            temperature = self._gpu_thermal_zone(card)
        return {
            "compute_utilization_percent": busy,
            "temperature_celsius": temperature,
            "power_watts": None,
            "clock_rate_mhz": clock,
        }

    def _gpu_thermal_zone(self, card: Card) -> float | None:
        hottest: float | None = None
        for zone in self.sys.entries("class/thermal"):
            if not zone.startswith("thermal_zone"):
                continue
            kind = self.sys.optional_text(f"class/thermal/{zone}/type") or ""
            if not kind.startswith("gpu"):
                continue
            value = self._millidegrees(card, f"class/thermal/{zone}/temp")
            if value is not None and (hottest is None or value > hottest):
                hottest = value
        return hottest

    def _shared_memory(self, card: Card) -> dict[str, object]:
        try:
            meminfo = parse_meminfo(self.proc.text("meminfo"))
        except FileError as exc:
            raise BackendError(
                f"drm: {card.label}: shared memory: {exc}", "SysfsUnreadable"
            ) from None
        except ParseError as exc:
            raise BackendError(
                f"drm: {card.label}: shared memory: meminfo: {exc}", "SysfsGarbled"
            ) from None
        missing = [k for k in ("MemTotal", "MemAvailable") if k not in meminfo]
        if missing:
            raise BackendError(
                f"drm: {card.label}: shared memory: meminfo has no {' or '.join(missing)}",
                "MemoryNotExposed",
            )
        total, available = meminfo["MemTotal"], meminfo["MemAvailable"]
        return {
            "memory_total_bytes": total,
            "memory_used_bytes": max(total - min(available, total), 0),
        }

    # -- field helpers ----------------------------------------------------------------------

    def _optional(self, card: Card, rel: str, parse: Callable[[str], T]) -> T | None:
        """``parse`` of the file; None when the driver does not publish it."""
        try:
            text = self.sys.text(rel)
        except Missing:
            return None
        except FileError as exc:
            raise BackendError(f"drm: {card.label}: {exc}", "SysfsUnreadable") from None
        try:
            return parse(text)
        except ParseError as exc:
            raise BackendError(f"drm: {card.label}: {rel}: {exc}", "SysfsGarbled") from None

    def _required(self, card: Card, rel: str, parse: Callable[[str], T], reason: str) -> T:
        value = self._optional(card, rel, parse)
        if value is None:
            raise BackendError(f"drm: {card.label}: {rel} is not published", reason)
        return value

    def _first(self, card: Card, rels: list[str], parse: Callable[[str], T]) -> T | None:
        for rel in rels:
            value = self._optional(card, rel, parse)
            if value is not None:
                return value
        return None

    def _millidegrees(self, card: Card, rel: str) -> float | None:
        return self._optional(card, rel, lambda t: parse_int(t) / 1000.0)

    def _labelled(
        self, hwmon: str, kind: str, preferred: tuple[str, ...], *, fallback: bool = True
    ) -> str | None:
        """The hwmon channel (``temp2``) labelled with the first of ``preferred`` that exists,
        else channel 1 when ``fallback`` (unlabelled drivers), else None."""
        labels: dict[str, str] = {}
        for entry in self.sys.entries(hwmon):
            match = re.fullmatch(rf"({kind}\d+)_label", entry)
            if match:
                try:
                    label = self.sys.text(f"{hwmon}/{entry}")
                except FileError:
                    continue  # an unreadable label only costs the preference
                labels.setdefault(label, match.group(1))
        for label in preferred:
            if label in labels:
                return labels[label]
        if fallback and self.sys.exists(f"{hwmon}/{kind}1_input"):
            return f"{kind}1"
        return None

    # -- health -----------------------------------------------------------------------------

    def health(self, device: GPUDeviceInfo) -> DeviceHealth:
        card = self._cards.get(device.device_id)
        if card is None or not self.sys.is_dir(card.device):
            return DeviceHealth(False, "DeviceLost", "the device's sysfs directory is gone")
        return HEALTHY


class _Skip(Exception):
    """Discovery cannot report this device; the message says why."""


def _mhz(text: str) -> float:
    value = parse_int(text)
    if value < 0:
        raise ParseError(f"negative frequency: {value} MHz")
    return float(value)


def _microwatts(text: str) -> float:
    value = parse_int(text)
    if value < 0:
        raise ParseError(f"negative power: {value} uW")
    return value / 1_000_000


def _millidegrees_or_empty(text: str) -> float | None:
    return None if text == "" else parse_int(text) / 1000.0


def _numa(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = parse_int(text)
    except ParseError:
        return None
    return value if value >= 0 else None


def _pci_name(vendor: str, pci_id: str | None) -> str:
    if not pci_id:
        return f"{vendor} GPU"
    return PCI_NAMES.get(pci_id.upper(), f"{vendor} GPU {pci_id.upper()}")


def _adreno_name(model: str | None) -> str:
    """kgsl's ``gpu_model`` (``Adreno650v2``) as a name: ``Adreno 650v2``."""
    if not model:
        return "Adreno"
    match = re.fullmatch(r"Adreno\s*(\S+)", model)
    return f"Adreno {match.group(1)}" if match else model
