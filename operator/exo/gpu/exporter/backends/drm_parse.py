"""Parsing what the Linux GPU drivers write in sysfs: pure functions from text to numbers.

Each function takes the text of one file (as :class:`~exo.gpu.exporter.backends.sysfs.FileTree`
read it) and returns a value in the unit the core uses, or raises :class:`ParseError` saying why
the text is not what that file holds. Units, as the kernel documents them:

* hwmon (``Documentation/hwmon/sysfs-interface.rst``): ``temp*_input`` millidegrees Celsius,
  ``power*_average`` / ``power*_input`` microwatts, ``freq*_input`` hertz;
* amdgpu (``Documentation/gpu/amdgpu``): ``gpu_busy_percent`` percent, ``mem_info_vram_*``
  bytes, ``pp_dpm_sclk`` one ``N: <MHz>Mhz`` line per level, the current one marked ``*``;
* i915 / xe: frequencies in MHz (``gt_act_freq_mhz``, ``tile0/gt0/freq0/act_freq``), GT idle
  residency in milliseconds (a counter), xe ``gtidle/idle_status`` ``gt-c0`` (awake) or
  ``gt-c6`` (power-gated), xe ``physical_vram_size_bytes`` bytes;
* kgsl (Qualcomm's Adreno driver, ``drivers/gpu/msm/kgsl_pwrctrl.c``): ``gpu_busy_percentage``
  ``"%d %%"``, ``gpubusy`` ``"%7d %7d"`` (busy and total cycles of the last window),
  ``gpuclk`` and ``devfreq/cur_freq`` hertz, ``temp`` millidegrees (empty when no zone);
* thermal zones: ``temp`` millidegrees Celsius;
* ``/proc/meminfo``: ``Key:   value kB`` lines.
"""

from __future__ import annotations

import re

__all__ = [
    "ParseError",
    "busy_from_idle_residency",
    "hertz_to_mhz",
    "parse_dpm_current_mhz",
    "parse_int",
    "parse_kgsl_busy_percentage",
    "parse_kgsl_gpubusy",
    "parse_meminfo",
    "parse_uevent",
    "parse_xe_idle_status",
]


class ParseError(ValueError):
    """The text is not what the file should hold; the message says why."""


_INT = re.compile(r"[+-]?\d+")


def parse_int(text: str) -> int:
    """A decimal integer, the whole of the text (``"38000"``)."""
    if not _INT.fullmatch(text):
        if not text:
            raise ParseError("empty, expected an integer")
        raise ParseError(f"not an integer: {_show(text)}")
    return int(text)


def hertz_to_mhz(text: str) -> float:
    value = parse_int(text)
    if value < 0:
        raise ParseError(f"negative frequency: {value} Hz")
    return value / 1_000_000


def parse_uevent(text: str) -> dict[str, str]:
    """``KEY=value`` lines (``DRIVER=amdgpu``, ``PCI_SLOT_NAME=0000:0b:00.0``)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


_DPM_LINE = re.compile(r"\s*\d+:\s*(\d+)\s*[Mm][Hh]z\s*(\*)?\s*")


def parse_dpm_current_mhz(text: str) -> float:
    """The level marked ``*`` in an amdgpu ``pp_dpm_*`` table (``1: 31Mhz *`` -> 31.0)."""
    levels = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _DPM_LINE.fullmatch(line)
        if match is None:
            raise ParseError(f"not a clock level line: {_show(line)}")
        levels += 1
        if match.group(2):
            return float(match.group(1))
    if levels == 0:
        raise ParseError("empty, expected clock levels")
    raise ParseError(f"no level marked current (*) among {levels}")


_MEMINFO_LINE = re.compile(r"([A-Za-z0-9_()]+):\s+(\d+)(?:\s+kB)?")


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as {key: bytes} (values in kB are multiplied out)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _MEMINFO_LINE.fullmatch(line.strip())
        if match is None:
            raise ParseError(f"not a meminfo line: {_show(line)}")
        value = int(match.group(2))
        out[match.group(1)] = value * 1024 if line.rstrip().endswith("kB") else value
    return out


_KGSL_PERCENT = re.compile(r"(\d+)\s*%")


def parse_kgsl_busy_percentage(text: str) -> float:
    """kgsl ``gpu_busy_percentage``: ``"37 %"`` -> 37.0."""
    match = _KGSL_PERCENT.fullmatch(text)
    if match is None:
        raise ParseError(f"expected '<n> %', got {_show(text)}")
    return float(match.group(1))


def parse_kgsl_gpubusy(text: str) -> float:
    """kgsl ``gpubusy``: busy and total cycles of the last window, as a percentage.

    ``"0 0"`` is what kgsl prints when the GPU was off for the whole window: 0 % busy.
    """
    parts = text.split()
    if len(parts) != 2 or not all(_INT.fullmatch(p) for p in parts):
        raise ParseError(f"expected '<busy> <total>', got {_show(text)}")
    busy, total = (int(p) for p in parts)
    if busy < 0 or total < 0 or busy > total:
        raise ParseError(f"busy {busy} and total {total} cycles are not a fraction")
    return 0.0 if total == 0 else 100.0 * busy / total


def parse_xe_idle_status(text: str) -> bool:
    """xe ``gtidle/idle_status``: True when power-gated (``gt-c6``), False when awake."""
    if text == "gt-c6":
        return True
    if text == "gt-c0":
        return False
    raise ParseError(f"expected gt-c0 or gt-c6, got {_show(text)}")


def busy_from_idle_residency(
    previous_idle_ms: int, idle_ms: int, elapsed_s: float
) -> float | None:
    """Busy percent over an interval from a GT idle-residency counter (milliseconds idle).

    None when the counter went backwards (driver reload, counter reset): no interval to measure.
    Clamped to 0..100, since the counter and the wall clock are sampled a little apart.
    """
    if elapsed_s <= 0 or idle_ms < previous_idle_ms:
        return None
    idle_share = (idle_ms - previous_idle_ms) / 1000.0 / elapsed_s
    return min(max(100.0 * (1.0 - idle_share), 0.0), 100.0)


def _show(text: str, limit: int = 40) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)
