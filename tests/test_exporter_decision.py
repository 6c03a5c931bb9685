"""The exporter's pure decisions: when to write status, which conditions, what status."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo.gpu.exporter.agent import (
    DEFAULT_POLICY,
    WritePolicy,
    WriteReason,
    backoff_delay,
    build_status,
    desired_conditions,
    vanished_conditions,
    write_decision,
)
from exo.gpu.exporter.backends.base import HEALTHY, BackendTimeout, DeviceHealth
from exo.gpu.k8s.models import (
    Condition,
    ConditionStatus,
    DeviceAllocation,
    GPUDeviceStatus,
    find_condition,
    set_condition,
)
from exo.gpu.telemetry_protocol import GPUMetrics

GIB = 1024**3
TOTAL = 80 * GIB
BASE = {"used": 10 * GIB, "util": 50.0, "temp": 60.0, "power": 300.0, "clock": 1500.0}


def sample(t: float = 0.0, **changes: float | None) -> GPUMetrics:
    values = {**BASE, **changes}
    return GPUMetrics(
        device_id="n-nvidia-0", timestamp=1_800_000_000 + t, memory_total_bytes=TOTAL,
        memory_used_bytes=int(values["used"]), compute_utilization_percent=values["util"],
        temperature_celsius=values["temp"], power_watts=values["power"],
        clock_rate_mhz=values["clock"],
    )


PREV = sample()
BAND = math.ceil(0.01 * TOTAL)

# (id, prev_written, new, seconds since the last write (None: never written), conditions
#  changed, heartbeat override, expected)
TABLE = [
    ("first sample", None, sample(), None, False, None, WriteReason.INITIAL),
    ("nothing to write yet", None, None, None, False, None, None),
    ("first conditions without a sample", None, None, None, True, None, WriteReason.INITIAL),
    ("rate limit beats a big change", PREV, sample(util=100), 4.9, False, None, None),
    ("rate limit beats a condition change", PREV, sample(), 4.9, True, None, None),
    ("utilization band edge, at the rate limit", PREV, sample(util=55), 5.0, False, None,
     WriteReason.UTILIZATION),
    ("utilization inside the band", PREV, sample(util=54.9), 10, False, None, None),
    ("utilization down by the band", PREV, sample(util=45), 10, False, None,
     WriteReason.UTILIZATION),
    ("memory up 1 % of total", PREV, sample(used=BASE["used"] + BAND), 10, False, None,
     WriteReason.MEMORY),
    ("memory up just under 1 %", PREV, sample(used=BASE["used"] + BAND - 2), 10, False, None, None),
    ("temperature +2 C", PREV, sample(temp=62), 10, False, None, WriteReason.TEMPERATURE),
    ("temperature -2 C", PREV, sample(temp=58), 10, False, None, WriteReason.TEMPERATURE),
    ("temperature +1.9 C", PREV, sample(temp=61.9), 10, False, None, None),
    ("power +5 %", PREV, sample(power=315), 10, False, None, WriteReason.POWER),
    ("power +4.9 %", PREV, sample(power=314.7), 10, False, None, None),
    ("clock alone never writes", PREV, sample(clock=600), 10, False, None, None),
    # Fields the driver does not expose are None: appearing or vanishing is a change, two
    # absent readings are not, and an absent previous power has a 1 W band.
    ("temperature stops being reported", PREV, sample(temp=None), 10, False, None,
     WriteReason.TEMPERATURE),
    ("temperature starts being reported", sample(temp=None), sample(), 10, False, None,
     WriteReason.TEMPERATURE),
    ("temperature absent twice", sample(temp=None), sample(temp=None), 10, False, None, None),
    ("power stops being reported", PREV, sample(power=None), 10, False, None, WriteReason.POWER),
    ("power absent twice", sample(power=None), sample(power=None), 10, False, None, None),
    ("clock absent alone never writes", PREV, sample(clock=None), 10, False, None, None),
    ("heartbeat due", PREV, sample(), 30, False, None, WriteReason.HEARTBEAT),
    ("heartbeat not yet due", PREV, sample(), 29.9, False, None, None),
    ("jittered heartbeat due earlier", PREV, sample(), 27, False, 27.0, WriteReason.HEARTBEAT),
    ("condition change after the rate limit", PREV, sample(), 6, True, None,
     WriteReason.CONDITIONS),
    ("no heartbeat without fresh data", PREV, None, 60, False, None, None),
    ("condition change without data", PREV, None, 6, True, None, WriteReason.CONDITIONS),
    ("written conditions but never metrics", None, sample(), 6, False, None, WriteReason.INITIAL),
]


@pytest.mark.parametrize(
    ("prev", "new", "since", "changed", "heartbeat", "expected"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_write_decision_table(
    prev: GPUMetrics | None, new: GPUMetrics | None, since: float | None, changed: bool,
    heartbeat: float | None, expected: WriteReason | None,
) -> None:
    now = 1000.0
    last = None if since is None else now - since
    got = write_decision(prev, new, now, last, DEFAULT_POLICY, conditions_changed=changed,
                         heartbeat_s=heartbeat)
    assert got == expected


def test_power_band_has_a_floor() -> None:
    idle = sample(power=0.0)
    assert write_decision(idle, sample(power=0.04), 10, 0) is None
    assert write_decision(idle, sample(power=0.05), 10, 0) == WriteReason.POWER


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_interval_s", 0), ("heartbeat_s", -1), ("jitter_fraction", 1.0),
     ("utilization_points", 0), ("heartbeat_s", 4)],
)
def test_policy_refuses_nonsense(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        WritePolicy(**{field: value})


@settings(max_examples=200, deadline=None)
@given(
    utils=st.lists(st.floats(min_value=0, max_value=100), min_size=10, max_size=120),
    poll=st.sampled_from([1.0, 2.0, 5.0]),
)
def test_writes_are_spaced_and_heartbeats_never_missed(utils: list[float], poll: float) -> None:
    """Whatever the readings: >= 5 s between writes, and never longer than heartbeat + a poll."""
    last: float | None = None
    written: GPUMetrics | None = None
    times = []
    for step, util in enumerate(utils):
        now = step * poll
        new = sample(now, util=util)
        if write_decision(written, new, now, last) is not None:
            times.append(now)
            last, written = now, new
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times and times[0] == 0
    assert all(gap >= DEFAULT_POLICY.min_interval_s for gap in gaps)
    assert all(gap <= DEFAULT_POLICY.heartbeat_s + poll for gap in gaps)
    assert (len(utils) - 1) * poll - times[-1] < DEFAULT_POLICY.heartbeat_s + poll


def test_backoff_grows_and_is_capped() -> None:
    assert backoff_delay(1, u=1.0) == 1.0
    assert backoff_delay(3, u=1.0) == 4.0
    assert backoff_delay(20, u=1.0) == 60.0
    assert backoff_delay(3, u=0.0) == 2.0


# -- conditions ---------------------------------------------------------------------------------


def test_healthy_device_is_ready() -> None:
    state = desired_conditions(HEALTHY, None, 0, None, "nvml")
    assert state.ready[:2] == ("True", "DeviceReady")
    assert state.healthy[:2] == ("True", "DeviceHealthy")


def test_read_error_makes_not_ready_with_its_reason() -> None:
    error = BackendTimeout("read n-nvidia-0 did not return within 2 s")
    state = desired_conditions(HEALTHY, error, 0, None, "nvml")
    assert state.ready == ("False", "BackendTimeout", str(error))


def test_unhealthy_device_is_not_ready() -> None:
    health = DeviceHealth(False, "XidError", "critical XID event(s) 79")
    state = desired_conditions(health, None, 0, None, "nvml")
    assert state.ready[:2] == ("False", "XidError")
    assert state.healthy[:2] == ("False", "XidError")


def test_one_invalid_reading_changes_nothing_three_make_not_ready() -> None:
    ready: tuple[ConditionStatus, str, str] = ("True", "DeviceReady", "reporting")
    assert desired_conditions(HEALTHY, None, 1, ready, "sim").ready == ready
    assert desired_conditions(HEALTHY, None, 3, ready, "sim").ready[:2] == (
        "False", "InvalidReadings"
    )


def test_message_changes_alone_do_not_count() -> None:
    a = desired_conditions(DeviceHealth(False, "XidError", "xid 79"), None, 0, None, "nvml")
    b = desired_conditions(DeviceHealth(False, "XidError", "xid 79, 48"), None, 0, None, "nvml")
    assert a != b and a.key() == b.key()


def test_set_condition_moves_transition_time_only_on_status_change() -> None:
    t1 = datetime(2027, 1, 1, 8, 0, tzinfo=UTC)
    t2 = datetime(2027, 1, 1, 9, 0, tzinfo=UTC)
    first = set_condition([], "Ready", "True", "DeviceReady", "", t1)
    same = set_condition(first, "Ready", "True", "DeviceReady", "again", t2)
    flipped = set_condition(same, "Ready", "False", "XidError", "", t2)
    assert same[0].last_transition_time == t1 and same[0].message == "again"
    assert flipped[0].last_transition_time == t2


def test_build_status_keeps_the_controllers_fields() -> None:
    stale = Condition(type="Stale", status="False", reason="Fresh",
                      last_transition_time=datetime(2027, 1, 1, tzinfo=UTC))
    current = GPUDeviceStatus(score=0.8, conditions=[stale],
                              allocation=DeviceAllocation(pod_count=2, memory_reserved_bytes=GIB))
    state = desired_conditions(HEALTHY, None, 0, None, "nvml")
    status = build_status(current, sample(), state, 1_800_000_010.0, generation=3)
    assert status.score == 0.8 and status.allocation == current.allocation
    assert {c.type for c in status.conditions} == {"Ready", "Healthy", "Stale"}
    assert status.metrics is not None and status.metrics.memory_used_bytes == 10 * GIB
    assert status.display is not None and status.display.memory == "10.0/80.0 GiB"
    assert status.observed_generation == 3
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None and ready.observed_generation == 3


def test_build_status_leaves_fields_the_driver_does_not_expose_absent() -> None:
    state = desired_conditions(HEALTHY, None, 0, None, "drm")
    adreno = sample(temp=None, power=None, clock=587.0)
    status = build_status(None, adreno, state, 1_800_000_010.0, generation=1)
    assert status.metrics is not None
    assert status.metrics.temperature_celsius is None and status.metrics.power_watts is None
    wire = status.to_api()["metrics"]
    assert "temperatureCelsius" not in wire and "powerWatts" not in wire
    assert wire["clockRateMHz"] == 587.0
    back = status.metrics.to_sample("n-qualcomm-0", TOTAL)
    assert (back.temperature_celsius, back.power_watts) == (None, None)


def test_build_status_without_sample_keeps_metrics_and_heartbeat() -> None:
    state = desired_conditions(HEALTHY, None, 0, None, "nvml")
    before = build_status(None, sample(), state, 1_800_000_000.0, 1)
    after = build_status(before, None, vanished_conditions("nvml"), 1_800_000_100.0, 1)
    assert after.metrics == before.metrics
    assert after.last_heartbeat_time == before.last_heartbeat_time
    ready = find_condition(after.conditions, "Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", "DeviceVanished")
