"""The core's fit rules (exo.gpu.fit), device state (exo.gpu.state) and ledger, as tables."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo.gpu.capabilities import resolve_compute_capacity
from exo.gpu.errors import InvalidRequestError
from exo.gpu.fit import (
    FITS,
    FitReason,
    FitRequest,
    FitResult,
    choose,
    explain,
    fit,
    free_for,
)
from exo.gpu.policy import (
    DEFAULT_POLICY,
    SelectionPolicy,
    free_memory_bytes,
    score_device,
    stale,
    thermal_penalty,
    too_hot,
)
from exo.gpu.state import DeviceState, Ledger, Reservation
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

GIB = 1024**3
NOW = 1_800_000_000.0


def device(name: str = "d", *, vendor: str = "nvidia", total: int = 80 * GIB, used: int = 0,
           temp: float = 50.0, age: float | None = 0.0, cordoned: bool = False,
           ready: bool = True, labels: dict[str, str] | None = None, reserved: int = 0,
           held: dict[str, int] | None = None, policy: SelectionPolicy = DEFAULT_POLICY
           ) -> DeviceState:
    info = GPUDeviceInfo(device_id=name, vendor=Vendor(vendor), name="Test GPU",
                         memory_total_bytes=total, node="n")
    state = DeviceState(info=info, capacity=resolve_compute_capacity(info),
                        labels=labels or {}, cordoned=cordoned, ready=ready,
                        ready_detail="" if ready else "BackendError: no answer",
                        reserved=reserved, held=held)
    if age is not None:
        state.metrics = GPUMetrics(device_id=name, timestamp=NOW - age, memory_used_bytes=used,
                                   memory_total_bytes=total, compute_utilization_percent=10.0,
                                   power_watts=100.0, temperature_celsius=temp,
                                   clock_rate_mhz=1500.0)
    state.refresh(policy)
    return state


class Selector:
    """A label selector (the Protocol exo.gpu.fit.LabelMatcher)."""

    def __init__(self, **wanted: str) -> None:
        self.wanted = wanted

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.wanted.items())

    def describe(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.wanted.items())


# -- one rule at a time -----------------------------------------------------------------------

RULES: list[tuple[str, dict[str, Any], dict[str, Any], FitReason | None, bool]] = [
    # id, device, request, reason, resolvable
    ("fits", {}, {"min_memory_bytes": 10 * GIB}, None, False),
    ("not-planned", {}, {"planned": {"other"}}, FitReason.NOT_PLANNED, False),
    ("planned", {}, {"planned": {"d", "e"}}, None, False),
    ("cordoned", {"cordoned": True}, {}, FitReason.CORDONED, False),
    ("not-ready", {"ready": False}, {}, FitReason.NOT_READY, False),
    ("no-metrics", {"age": None}, {}, FitReason.NO_METRICS, False),
    ("stale", {"age": 91.0}, {}, FitReason.STALE, False),
    ("at-the-stale-limit", {"age": 90.0}, {}, None, False),
    ("too-hot", {"temp": 90.0}, {}, FitReason.TOO_HOT, False),
    ("below-the-thermal-limit", {"temp": 89.9}, {}, None, False),
    ("vendor", {"vendor": "amd"}, {"vendor": "nvidia"}, FitReason.VENDOR_MISMATCH, False),
    ("labels", {"labels": {"a": "1"}}, {"labels": {"a": "2"}}, FitReason.SELECTOR_MISMATCH,
     False),
    ("selector", {"labels": {"a": "1"}}, {"selector": Selector(a="2")},
     FitReason.SELECTOR_MISMATCH, False),
    ("selector-matches", {"labels": {"a": "1"}}, {"selector": Selector(a="1")}, None, False),
    ("predicate", {}, {"predicate": lambda info: False}, FitReason.SELECTOR_MISMATCH, False),
    ("too-small", {"total": 16 * GIB}, {"min_memory_bytes": 24 * GIB}, FitReason.TOO_SMALL,
     False),
    ("measured-use", {"used": 75 * GIB}, {"min_memory_bytes": 10 * GIB},
     FitReason.INSUFFICIENT_MEMORY, True),
    ("reserved", {"reserved": 75 * GIB}, {"min_memory_bytes": 10 * GIB},
     FitReason.INSUFFICIENT_MEMORY, True),
    ("exactly-enough", {"reserved": 70 * GIB}, {"min_memory_bytes": 10 * GIB}, None, False),
    ("whole-device-held", {"reserved": 1}, {"whole_device": True}, FitReason.IN_USE, True),
    ("whole-device-measured-use-is-no-holder", {"used": 60 * GIB}, {"whole_device": True},
     None, False),
    ("own-workload-holds-it", {"reserved": 80 * GIB, "held": {"ns/w": 80 * GIB}},
     {"whole_device": True, "workload": "ns/w"}, None, False),
    ("other-workload-holds-it", {"reserved": 80 * GIB, "held": {"ns/w": 80 * GIB}},
     {"whole_device": True, "workload": "ns/x"}, FitReason.IN_USE, True),
    ("own-share-only", {"reserved": 50 * GIB, "held": {"ns/w": 20 * GIB}},
     {"min_memory_bytes": 60 * GIB, "workload": "ns/w"}, FitReason.INSUFFICIENT_MEMORY, True),
    # 50 held, 20 of them the workload's own: 30 held by others, 50 free for it (30 for others)
    ("own-share-makes-room", {"reserved": 50 * GIB, "held": {"ns/w": 20 * GIB}},
     {"min_memory_bytes": 40 * GIB, "workload": "ns/w"}, None, False),
    ("own-share-is-not-others", {"reserved": 50 * GIB, "held": {"ns/w": 20 * GIB}},
     {"min_memory_bytes": 40 * GIB, "workload": "ns/x"}, FitReason.INSUFFICIENT_MEMORY, True),
]


@pytest.mark.parametrize(("dev", "req", "reason", "resolvable"),
                         [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_rule_table(dev: dict[str, Any], req: dict[str, Any], reason: FitReason | None,
                    resolvable: bool) -> None:
    result = fit(device(**dev), FitRequest(**req), NOW)
    assert result.reason is reason
    assert result.fits is (reason is None)
    assert result.resolvable is resolvable
    if reason is not None:
        assert result.device == "d"
        assert result.describe().startswith(f"d: {reason.value} (")


def test_rules_are_checked_in_order_and_explain_lists_every_one() -> None:
    dev = device(cordoned=True, ready=False, temp=95.0, age=120.0, vendor="amd", used=79 * GIB)
    request = FitRequest(min_memory_bytes=10 * GIB, vendor="nvidia", planned={"x"})
    reasons = [r.reason for r in explain(dev, request, NOW)]
    assert reasons == [FitReason.NOT_PLANNED, FitReason.CORDONED, FitReason.NOT_READY,
                       FitReason.STALE, FitReason.TOO_HOT, FitReason.VENDOR_MISMATCH,
                       FitReason.INSUFFICIENT_MEMORY]
    assert fit(dev, request, NOW).reason is FitReason.NOT_PLANNED
    assert explain(device(), request.__class__(), NOW) == ()


@pytest.mark.parametrize(("dev", "req", "text"), [
    ({"reserved": 75 * GIB}, {"min_memory_bytes": 10 * GIB},
     "5.0 GiB free, 10.0 GiB requested; 75.0 GiB held by others"),
    ({"used": 75 * GIB}, {"min_memory_bytes": 10 * GIB}, "5.0 GiB free, 10.0 GiB requested"),
    ({"total": 16 * GIB}, {"min_memory_bytes": 64 * GIB}, "16.0 GiB in all, 64.0 GiB requested"),
    ({"reserved": 2 * GIB}, {"whole_device": True}, "2.0 GiB held by other pods or plans"),
    ({"temp": 95.0}, {}, "temperature 95.0 C is at or above the 90.0 C limit"),
    ({"age": 91.0}, {}, "latest sample is 91 s old (stale after 90 s)"),
    ({"ready": False}, {}, "device is not Ready (BackendError: no answer)"),
    ({"vendor": "amd"}, {"vendor": "intel"}, "vendor amd does not match the requested intel"),
    ({}, {"planned": {"b", "a"}}, "the workload planned a,b"),
    ({"labels": {}}, {"selector": Selector(zone="z1")}, "the selector zone=z1"),
])
def test_messages_carry_the_numbers(dev: dict[str, Any], req: dict[str, Any],
                                    text: str) -> None:
    assert text in fit(device(**dev), FitRequest(**req), NOW).message


def test_preemption_override_of_what_others_hold() -> None:
    dev = device(reserved=75 * GIB)
    request = FitRequest(min_memory_bytes=10 * GIB)
    assert fit(dev, request, NOW).reason is FitReason.INSUFFICIENT_MEMORY
    assert fit(dev, request, NOW, reserved=60 * GIB).fits
    assert free_for(dev, request) == 5 * GIB
    assert free_for(dev, request, reserved=60 * GIB) == 20 * GIB


def test_without_a_clock_nothing_is_stale() -> None:
    assert fit(device(age=10_000.0), FitRequest(), None).fits


class TestRequest:
    @pytest.mark.parametrize(("kwargs", "field"), [
        ({"min_memory_bytes": -1}, "min_memory_bytes"),
        ({"min_memory_bytes": 1.5}, "min_memory_bytes"),
        ({"min_memory_bytes": True}, "min_memory_bytes"),
        ({"vendor": "nvidea"}, "vendor"),
        ({"whole_device": True, "min_memory_bytes": GIB}, "min_memory_bytes"),
        ({"whole_device": "yes"}, "whole_device"),
        ({"devices": 0}, "devices"),
        ({"devices": 1.0}, "devices"),
        ({"workload": ""}, "workload"),
    ])
    def test_bad_requests_name_the_field(self, kwargs: dict[str, Any], field: str) -> None:
        with pytest.raises(InvalidRequestError) as caught:
            FitRequest(**kwargs)
        assert caught.value.field == field

    def test_simple_and_trivial(self) -> None:
        assert FitRequest().is_trivial and FitRequest(vendor="amd").is_trivial
        assert FitRequest(min_memory_bytes=GIB).simple
        assert not FitRequest(min_memory_bytes=GIB).is_trivial
        for kwargs in ({"whole_device": True}, {"workload": "ns/w"}, {"planned": {"d"}},
                       {"labels": {}}, {"selector": Selector()}):
            assert not FitRequest(**kwargs).simple  # type: ignore[arg-type]

    def test_reserves_a_size_or_the_whole_device(self) -> None:
        assert FitRequest(min_memory_bytes=GIB).reserves(80 * GIB) == GIB
        assert FitRequest(whole_device=True).reserves(80 * GIB) == 80 * GIB

    def test_reasons_classify(self) -> None:
        assert {r for r in FitReason if r.resolvable} == {FitReason.IN_USE,
                                                          FitReason.INSUFFICIENT_MEMORY}
        assert {r for r in FitReason if r.device_failed} == {
            FitReason.NOT_READY, FitReason.NO_METRICS, FitReason.STALE, FitReason.TOO_HOT}
        assert FITS.fits and FITS.message == "fits"


class TestTemperatureUnknown:
    """A None temperature (not reported by the hardware): no penalty, never TooHot."""

    def test_policy_functions(self) -> None:
        assert thermal_penalty(None) == 0.0 and not too_hot(None)
        assert score_device(100, 0, 0.0, None).thermal == 0.0
        assert thermal_penalty(82.5) == pytest.approx(0.25) and too_hot(90.0)


def test_free_memory_and_stale_are_the_policy_s() -> None:
    assert free_memory_bytes(100, 30, 50) == 50
    assert free_memory_bytes(100, 30, 150) == 0
    assert free_memory_bytes(0, 0, 0) == 0
    assert not stale(NOW - 90, NOW) and stale(NOW - 90.5, NOW) and not stale(NOW - 1e9, None)
    assert stale(NOW - 11, NOW, 10.0) and not stale(NOW - 10, NOW, 10.0)


# -- choose: the fast path is fit, written out ------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 80), st.integers(30, 95), st.one_of(
    st.none(), st.integers(0, 120)), st.booleans(), st.booleans(), st.integers(0, 80)),
    min_size=1, max_size=8), st.integers(0, 90), st.integers(1, 3))
def test_fast_path_is_fit(specs: list[tuple[int, int, int | None, bool, bool, int]],
                          need_gib: int, wanted: int) -> None:
    devices = [device(f"d{i}", used=used * GIB, temp=temp, age=age, cordoned=cordoned,
                      ready=ready, reserved=reserved * GIB)
               for i, (used, temp, age, cordoned, ready, reserved) in enumerate(specs)]
    request = FitRequest(min_memory_bytes=need_gib * GIB, devices=wanted)
    assert request.simple
    fitting = [d for d in devices if fit(d, request, NOW).fits]
    fast = choose(devices, request, NOW)
    slow = choose(devices, request, NOW, reserved={})  # any override disables the fast path
    assert [d.device_id for d in fast.devices] == [d.device_id for d in slow.devices] == \
        [d.device_id for d in fitting[:wanted]]
    if len(fitting) < wanted:
        assert fast.rejections == slow.rejections
        assert [r.device for r in fast.rejections] == \
            [d.device_id for d in devices if not fit(d, request, NOW).fits]
    else:
        assert fast.rejections == ()


# -- the device state -------------------------------------------------------------------------

class TestDeviceState:
    def test_refresh_derives_everything_from_the_inputs(self) -> None:
        dev = device(used=20 * GIB, reserved=30 * GIB, temp=82.5)
        expected = score_device(80 * GIB, 20 * GIB, 10.0, 82.5, 30 * GIB)
        assert dev.breakdown == expected and dev.score == expected.total
        assert dev.free == 50 * GIB and dev.available and not dev.hot
        assert dev.fresh_until == NOW + DEFAULT_POLICY.stale_after_seconds
        dev.cordoned = True
        dev.refresh(DEFAULT_POLICY)
        assert not dev.available and dev.blocked == (FitReason.CORDONED,)

    def test_without_a_sample(self) -> None:
        dev = device(age=None, reserved=10 * GIB)
        assert dev.breakdown is None and dev.score == 0.0 and dev.priority == 0
        assert dev.free == 70 * GIB and dev.fresh_until == -math.inf
        assert dev.blocked == (FitReason.NO_METRICS,)


# -- the ledger -------------------------------------------------------------------------------

def pod(uid: str, device_name: str, amount: int, workload: str | None = None,
        bound: bool = True) -> Reservation:
    return Reservation(uid, f"ns/{uid}", "n" if bound else "", (device_name,), amount, workload,
                       bound)


class TestLedger:
    def test_pods_without_a_workload_add_up(self) -> None:
        ledger = Ledger()
        assert ledger.hold(pod("a", "d", 10)) == {"d"}
        ledger.hold(pod("b", "d", 5))
        assert ledger.totals("d") == (15, None)
        assert ledger.release("a")[1] == {"d"}
        assert ledger.reserved_by_device() == {"d": 5}

    def test_a_pod_takes_over_its_workload_s_plan_hold(self) -> None:
        ledger = Ledger()
        ledger.set_plan("ns/w", {"d": 40})
        assert ledger.totals("d") == (40, {"ns/w": 40})
        ledger.hold(pod("p", "d", 40, "ns/w", bound=False))  # created, pending
        assert ledger.totals("d") == (40, {"ns/w": 40})
        ledger.hold(pod("p", "d", 40, "ns/w"))  # bound: replaces, never adds
        assert ledger.totals("d") == (40, {"ns/w": 40})
        ledger.set_plan("ns/w", {})  # the plan moved on: the pod still holds
        assert ledger.totals("d") == (40, {"ns/w": 40})
        ledger.release("p")
        assert ledger.totals("d") == (0, None) and ledger.reserved_by_device() == {}

    def test_workloads_and_loose_pods_add_up(self) -> None:
        ledger = Ledger()
        ledger.set_plan("ns/w", {"d": 30, "e": 10})
        ledger.set_plan("ns/x", {"d": 20})
        ledger.hold(pod("loose", "d", 5))
        assert ledger.totals("d") == (55, {"ns/w": 30, "ns/x": 20})
        assert ledger.set_plan("ns/w", {"d": 30}) == {"e"}  # only what moved is touched
        assert ledger.reserved_without("d", "ns/x", ["loose"]) == 30
        assert ledger.reserved_without("d", None, []) == 55

    def test_bad_holds_are_refused_and_change_nothing(self) -> None:
        ledger = Ledger()
        ledger.set_plan("ns/w", {"d": 30})
        with pytest.raises(InvalidRequestError):
            ledger.set_plan("ns/w", {"d": -1})
        with pytest.raises(InvalidRequestError):
            ledger.hold(pod("p", "d", -5))
        assert ledger.totals("d") == (30, {"ns/w": 30})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["plan", "pod", "pending", "release"]),
                          st.sampled_from(["ns/a", "ns/b", None]), st.integers(0, 5),
                          st.sampled_from(["d", "e"]), st.integers(0, 50)), max_size=40))
def test_ledger_totals_match_a_recount(ops: list[tuple[str, str | None, int, str, int]]) -> None:
    ledger = Ledger()
    plans: dict[str, dict[str, int]] = {}
    for op, workload, who, dev, amount in ops:
        uid = f"p{who}"
        if op == "plan" and workload is not None:
            plans[workload] = {dev: amount}
            ledger.set_plan(workload, {dev: amount})
        elif op in ("pod", "pending"):
            ledger.hold(pod(uid, dev, amount, workload, bound=op == "pod"))
        elif op == "release":
            ledger.release(uid)
    for dev in ("d", "e"):
        loose = sum(r.bytes_per_device for r in ledger.pods.values()
                    if r.workload is None and dev in r.devices)
        shares = {}
        for w in ("ns/a", "ns/b"):
            mine = sum(r.bytes_per_device for r in ledger.pods.values()
                       if r.workload == w and dev in r.devices)
            shares[w] = max(plans.get(w, {}).get(dev, 0), mine)
        total, held = ledger.totals(dev)
        assert total == loose + sum(shares.values())
        assert {w: s for w, s in (held or {}).items() if s} == \
            {w: s for w, s in shares.items() if s}


def test_fit_result_is_a_cheap_tuple() -> None:
    assert isinstance(FITS, tuple) and FitResult(FitReason.STALE).code is FitReason.STALE


def test_a_new_state_is_what_refresh_makes_of_a_device_without_a_sample() -> None:
    info = GPUDeviceInfo(device_id="d", vendor=Vendor.AMD, name="AMD Instinct MI300X",
                         memory_total_bytes=192 * GIB)
    fresh = DeviceState(info=info, capacity=resolve_compute_capacity(info))
    refreshed = DeviceState(info=info, capacity=resolve_compute_capacity(info))
    refreshed.refresh(DEFAULT_POLICY)
    fields = ("breakdown", "free", "score", "priority", "blocked", "hot", "available",
              "fresh_until")
    assert [getattr(fresh, f) for f in fields] == [getattr(refreshed, f) for f in fields]
