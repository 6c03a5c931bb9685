"""Apple silicon GPUs on macOS nodes, from ``powermetrics`` (plist), ``sysctl`` and ``vm_stat``.

One GPU per Mac. Identity: the chip's name (``sysctl -n machdep.cpu.brand_string``, e.g.
``Apple M1 Pro``) and unified memory (``sysctl -n hw.memsize``). Each read runs one
``powermetrics --samplers gpu_power -i 500 -n 1 -f plist`` (root only, as on every Mac) and
``vm_stat``:

* utilization: ``1 - gpu.idle_ratio`` of the sample window;
* clock: ``gpu.freq_hz``, which despite its name holds MHz (the active-residency-weighted
  frequency the text output prints as "GPU HW active frequency");
* power: ``gpu_energy`` (millijoules over ``elapsed_ns``, in ``gpu`` or ``processor`` depending
  on the macOS release), else ``processor.gpu_power`` (milliwatts);
* temperature: absent. On Apple silicon powermetrics reports only a thermal pressure *level*
  (Nominal ... Critical), not degrees, and there is no public temperature interface;
* memory: unified, so the GPU allocates from system memory: total ``hw.memsize``, used
  ``(active + wired + occupied by compressor) x page size`` from ``vm_stat``.

Output parsing is pure (:func:`parse_powermetrics`, :func:`parse_vm_stat`); the command runner
is injectable, so the unit tier runs recorded output on Linux. A command that exits non-zero,
times out or prints something unparsable makes that read fail with a reason
(``PowermetricsFailed``, ``PowermetricsGarbled``, ``VmStatFailed``...): the device turns
Ready=False, the exporter keeps running and tries again next poll.
"""

from __future__ import annotations

import plistlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from xml.parsers.expat import ExpatError

from exo.gpu.k8s.models import device_name
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

from .base import HEALTHY, BackendError, BackendUnavailable, DeviceHealth, DeviceLost
from .drm_parse import ParseError

Runner = Callable[[Sequence[str]], bytes]

POWERMETRICS = ("powermetrics", "--samplers", "gpu_power", "-i", "500", "-n", "1", "-f", "plist")


class CommandFailed(Exception):
    """A command could not run or exited non-zero; the message says how."""


def run_command(argv: Sequence[str], timeout: float = 5.0) -> bytes:
    """Run ``argv`` and return its standard output; CommandFailed on any failure."""
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandFailed(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        stderr = done.stderr.decode("utf-8", "replace").strip()[:200]
        raise CommandFailed(f"{argv[0]} exited {done.returncode}: {stderr}")
    return done.stdout


@dataclass(frozen=True)
class PowermetricsSample:
    utilization_percent: float
    clock_mhz: float | None
    power_watts: float | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_powermetrics(data: bytes) -> PowermetricsSample:
    """The last sample of ``powermetrics -f plist`` output.

    powermetrics separates samples with a NUL byte; the last complete one is used.
    """
    chunks = [c.strip() for c in data.split(b"\0") if c.strip()]
    if not chunks:
        raise ParseError("no output")
    try:
        sample = plistlib.loads(chunks[-1])
    except (plistlib.InvalidFileException, ValueError, ExpatError) as exc:
        raise ParseError(f"not a property list ({exc})") from None
    if not isinstance(sample, dict):
        raise ParseError("the property list is not a dictionary")
    gpu = sample.get("gpu")
    if not isinstance(gpu, dict):
        raise ParseError("no gpu dictionary (was the gpu_power sampler enabled?)")
    idle = _number(gpu.get("idle_ratio"))
    if idle is None:
        raise ParseError("no gpu.idle_ratio")
    if not 0.0 <= idle <= 1.0:
        raise ParseError(f"gpu.idle_ratio {idle} is outside 0..1")
    processor = sample.get("processor")
    processor = processor if isinstance(processor, dict) else {}
    power: float | None = None
    energy_mj = _number(gpu.get("gpu_energy"))
    if energy_mj is None:
        energy_mj = _number(processor.get("gpu_energy"))
    elapsed_ns = _number(sample.get("elapsed_ns"))
    if energy_mj is not None and elapsed_ns:
        power = energy_mj / 1000.0 / (elapsed_ns / 1e9)
    else:
        milliwatts = _number(processor.get("gpu_power"))
        power = None if milliwatts is None else milliwatts / 1000.0
    return PowermetricsSample(
        utilization_percent=100.0 * (1.0 - idle),
        clock_mhz=_number(gpu.get("freq_hz")),
        power_watts=power,
    )


_VM_HEADER = re.compile(r"Mach Virtual Memory Statistics: \(page size of (\d+) bytes\)")
_VM_LINE = re.compile(r'"?([^:"]+)"?:\s+(\d+)\.')


def parse_vm_stat(text: str) -> int:
    """Memory in use, bytes: (active + wired + occupied by compressor) pages x page size."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = _VM_HEADER.fullmatch(lines[0].strip()) if lines else None
    if header is None:
        raise ParseError("no 'Mach Virtual Memory Statistics' header with the page size")
    pages: dict[str, int] = {}
    for line in lines[1:]:
        match = _VM_LINE.fullmatch(line.strip())
        if match is None:
            raise ParseError(f"not a vm_stat line: {line.strip()[:60]!r}")
        pages[match.group(1).strip()] = int(match.group(2))
    wanted = ("Pages active", "Pages wired down", "Pages occupied by compressor")
    missing = [k for k in wanted if k not in pages]
    if missing:
        raise ParseError(f"no {', '.join(missing)}")
    return sum(pages[k] for k in wanted) * int(header.group(1))


class AppleBackend:
    """``powermetrics``-backed :class:`~exo.gpu.exporter.backends.base.Backend` (macOS only)."""

    name = "apple"

    def __init__(
        self, node: str, runner: Runner | None = None, platform: str = sys.platform
    ) -> None:
        if runner is None:
            if platform != "darwin":
                raise BackendUnavailable(f"apple: runs only on macOS (this is {platform})")
            if shutil.which("powermetrics") is None:
                raise BackendUnavailable("apple: powermetrics is not on PATH")
            runner = run_command
        self.node = node
        self._run = runner
        self._device_id: str | None = None

    def close(self) -> None:
        return None

    def _output(self, argv: Sequence[str], reason: str) -> bytes:
        try:
            return self._run(argv)
        except CommandFailed as exc:
            raise BackendError(f"apple: {exc}", reason) from None

    def _sysctl(self, key: str) -> str:
        raw = self._output(("sysctl", "-n", key), "SysctlFailed")
        return raw.decode("utf-8", "replace").strip()

    def discover(self) -> list[GPUDeviceInfo]:
        brand = self._sysctl("machdep.cpu.brand_string")
        memsize = self._sysctl("hw.memsize")
        if not memsize.isdigit() or int(memsize) <= 0:
            raise BackendError(
                f"apple: hw.memsize is not a byte count: {memsize!r}", "SysctlFailed"
            )
        device_id = device_name(self.node, Vendor.APPLE, 0)
        self._device_id = device_id
        return [
            GPUDeviceInfo(
                device_id=device_id,
                vendor=Vendor.APPLE,
                name=brand or "Apple GPU",
                memory_total_bytes=int(memsize),
                node=self.node,
                index=0,
            )
        ]

    def read(self, device: GPUDeviceInfo) -> GPUMetrics:
        if device.device_id != self._device_id:
            raise DeviceLost(f"apple: {device.device_id} is not among the discovered devices")
        try:
            sample = parse_powermetrics(self._output(POWERMETRICS, "PowermetricsFailed"))
        except ParseError as exc:
            raise BackendError(f"apple: powermetrics: {exc}", "PowermetricsGarbled") from None
        text = self._output(("vm_stat",), "VmStatFailed").decode("utf-8", "replace")
        try:
            used = parse_vm_stat(text)
        except ParseError as exc:
            raise BackendError(f"apple: vm_stat: {exc}", "VmStatGarbled") from None
        return GPUMetrics(
            device_id=device.device_id,
            timestamp=time.time(),
            memory_used_bytes=used,
            memory_total_bytes=device.memory_total_bytes,
            compute_utilization_percent=sample.utilization_percent,
            power_watts=sample.power_watts,
            temperature_celsius=None,
            clock_rate_mhz=sample.clock_mhz,
        )

    def health(self, device: GPUDeviceInfo) -> DeviceHealth:
        return HEALTHY
