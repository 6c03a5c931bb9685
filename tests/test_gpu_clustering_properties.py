"""Property tests (hypothesis) of the distribution and selection policies."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from exo.gpu.clustering import GPUClusteringManager
from exo.gpu.distribution import (
    WorkloadDistributor,
    _largest_remainder_flat,
    _largest_remainder_grouped,
    _water_fill,
    _water_fill_rounds,
)
from exo.gpu.errors import InsufficientCapacityError
from exo.gpu.selector import SelectionPolicy, score_device
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

GB = 1_000_000_000
T0 = 1707043200.0

settings.register_profile("core", max_examples=300, deadline=None)
settings.load_profile("core")

weights_st = st.one_of(
    st.just(0.0),
    st.sampled_from([0.5, 1.0, 2.0, 3.0, 1 / 3, 165.0, 989.0]),
    st.floats(min_value=0.001, max_value=1000.0, allow_nan=False, allow_infinity=False),
)


@st.composite
def distribution_inputs(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(min_value=1, max_value=25))
    devices = [f"dev-{i:02d}" for i in range(n)]
    draw(st.randoms()).shuffle(devices)  # device order is not name order
    task_count = draw(st.integers(min_value=0, max_value=400))
    strategy = draw(st.sampled_from(["uniform", "capacity"]))
    capacities = None
    if draw(st.booleans()):
        values = draw(st.lists(weights_st, min_size=n, max_size=n))
        assume(any(v > 0 for v in values))
        capacities = dict(zip(devices, values, strict=True))
    caps: Any = None
    mode = draw(st.sampled_from(["none", "int", "mapping"]))
    if mode == "int":
        caps = draw(st.integers(min_value=1, max_value=60))
    elif mode == "mapping":
        chosen = draw(st.lists(st.sampled_from(devices), unique=True))
        caps = {d: draw(st.integers(min_value=1, max_value=60)) for d in chosen}
    return {
        "tasks": list(range(task_count)),
        "devices": devices,
        "strategy": strategy,
        "capacities": capacities,
        "max_items_per_device": caps,
    }


def effective_weights(inp: dict[str, Any]) -> dict[str, Fraction]:
    capacities = inp["capacities"]
    out = {}
    for d in inp["devices"]:
        w = 1.0 if capacities is None else capacities[d]
        if inp["strategy"] == "uniform":
            w = 1.0 if w > 0 else 0.0
        out[d] = Fraction(w)
    return out


def cap_of(inp: dict[str, Any], device: str) -> int | None:
    caps = inp["max_items_per_device"]
    if caps is None:
        return None
    if isinstance(caps, int):
        return caps
    value: int | None = caps.get(device)
    return value


def distribute(inp: dict[str, Any]) -> dict[str, list[int]]:
    return WorkloadDistributor().distribute(
        inp["tasks"],
        inp["devices"],
        inp["strategy"],
        inp["capacities"],
        inp["max_items_per_device"],
    )


def feasible(inp: dict[str, Any]) -> bool:
    weights = effective_weights(inp)
    total = 0
    for d in inp["devices"]:
        if weights[d] > 0:
            cap = cap_of(inp, d)
            if cap is None:
                return True
            total += cap
    return total >= len(inp["tasks"])


class TestDistributionProperties:
    @given(distribution_inputs())
    def test_every_task_placed_exactly_once_in_contiguous_runs(self, inp: dict[str, Any]) -> None:
        if not feasible(inp):
            with pytest.raises(InsufficientCapacityError) as caught:
                distribute(inp)
            assert caught.value.shortfall > 0
            return
        result = distribute(inp)
        assert list(result) == inp["devices"]
        # Concatenating the runs in device order gives back the task list: every task exactly
        # once, each device a contiguous run.
        assert [t for run in result.values() for t in run] == inp["tasks"]

    @given(distribution_inputs())
    def test_caps_are_respected_and_zero_weights_get_nothing(self, inp: dict[str, Any]) -> None:
        assume(feasible(inp))
        result = distribute(inp)
        weights = effective_weights(inp)
        for device, run in result.items():
            cap = cap_of(inp, device)
            assert cap is None or len(run) <= cap
            if weights[device] == 0:
                assert run == []

    @given(distribution_inputs())
    def test_uniform_counts_differ_by_at_most_one(self, inp: dict[str, Any]) -> None:
        inp["strategy"] = "uniform"
        inp["max_items_per_device"] = None
        assume(feasible(inp))
        result = distribute(inp)
        weights = effective_weights(inp)
        counts = [len(run) for d, run in result.items() if weights[d] > 0]
        assert max(counts) - min(counts) <= 1
        # The extra tasks go to the earliest (best-scored) devices.
        assert counts == sorted(counts, reverse=True)

    @given(distribution_inputs())
    def test_uncapped_capacity_counts_are_within_one_of_the_exact_share(
        self, inp: dict[str, Any]
    ) -> None:
        inp["strategy"] = "capacity"
        inp["max_items_per_device"] = None
        result = distribute(inp)
        weights = effective_weights(inp)
        total_weight = sum(weights.values())
        for device, run in result.items():
            exact = len(inp["tasks"]) * weights[device] / total_weight
            assert abs(len(run) - exact) < 1

    @given(distribution_inputs())
    def test_overflow_of_capped_devices_is_respread_evenly(self, inp: dict[str, Any]) -> None:
        inp["strategy"] = "uniform"
        assume(feasible(inp))
        result = distribute(inp)
        weights = effective_weights(inp)
        taking = {d: len(run) for d, run in result.items() if weights[d] > 0}
        below = [n for d, n in taking.items() if (cap := cap_of(inp, d)) is None or n < cap]
        if below:
            # Devices below their cap differ by at most one, and none of them holds fewer
            # than any other device minus one: what a capped device could not take went to
            # the others.
            assert max(below) - min(below) <= 1
            assert min(below) >= max(taking.values()) - 1

    @given(distribution_inputs())
    def test_same_input_same_output(self, inp: dict[str, Any]) -> None:
        assume(feasible(inp))
        assert distribute(inp) == distribute(dict(inp))

    @given(
        st.integers(min_value=0, max_value=500),
        st.lists(weights_st, min_size=1, max_size=40),
    )
    def test_grouped_and_flat_largest_remainder_agree(
        self, remaining: int, weights: list[float]
    ) -> None:
        assume(any(weights))
        assert _largest_remainder_grouped(remaining, weights) == _largest_remainder_flat(
            remaining, weights
        )


    @given(
        st.integers(min_value=0, max_value=500),
        st.lists(
            st.tuples(st.one_of(st.none(), st.integers(min_value=1, max_value=40)), weights_st),
            min_size=1,
            max_size=40,
        ),
    )
    def test_grouped_and_round_based_water_filling_agree(
        self, remaining: int, pairs: list[tuple[int | None, float]]
    ) -> None:
        caps = [c for c, _ in pairs]
        weights = [w for _, w in pairs]
        assume(any(weights))
        left, kept, filled = _water_fill(remaining, weights, caps)
        left_r, kept_r, filled_r = _water_fill_rounds(remaining, weights, caps)
        assert left == left_r
        assert kept == kept_r
        assert (filled or [0] * len(weights)) == filled_r


finite = {"allow_nan": False, "allow_infinity": False}


class TestScoreProperties:
    @given(
        total=st.integers(min_value=0, max_value=10**15),
        used=st.integers(min_value=0, max_value=10**15),
        reserved=st.integers(min_value=0, max_value=10**15),
        util=st.floats(min_value=-1e6, max_value=1e6, **finite),
        temp=st.floats(min_value=-300, max_value=1e4, **finite),
        memory_weight=st.floats(min_value=0, max_value=2, **finite),
        compute_weight=st.floats(min_value=0.01, max_value=2, **finite),
        penalty=st.floats(min_value=0, max_value=1, **finite),
    )
    def test_score_is_always_within_0_and_1(self, **kw: Any) -> None:
        policy = SelectionPolicy(
            memory_weight=kw["memory_weight"],
            compute_weight=kw["compute_weight"],
            max_thermal_penalty=kw["penalty"],
        )
        breakdown = score_device(
            kw["total"], kw["used"], kw["util"], kw["temp"], kw["reserved"], policy
        )
        assert 0.0 <= breakdown.total <= 1.0
        assert breakdown.free_memory_bytes >= 0
        assert 0.0 <= breakdown.thermal <= policy.max_thermal_penalty


MODELS = [
    (Vendor.NVIDIA, "NVIDIA H100 80GB HBM3", 80 * GB),
    (Vendor.AMD, "AMD Instinct MI300X", 192 * GB),
    (Vendor.INTEL, "Intel(R) Arc(TM) A770 Graphics", 16 * GB),
    (Vendor.APPLE, "Apple M2 Ultra", 192 * GB),
    (Vendor.QUALCOMM, "Qualcomm Adreno X1-85", 32 * GB),
]


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(min_value=1, max_value=60))):
        device = draw(st.integers(min_value=0, max_value=7))
        kind = draw(
            st.sampled_from(["record", "record", "record", "cordon", "ready", "reserve", "tick"])
        )
        if kind == "record":
            ops.append(
                (
                    "record",
                    device,
                    draw(st.floats(min_value=0, max_value=1)),  # used fraction
                    draw(st.floats(min_value=0, max_value=100)),
                    draw(st.sampled_from([40.0, 70.0, 80.0, 85.0, 89.9, 90.0, 95.0])),
                    draw(st.floats(min_value=0, max_value=150)),  # sample age at the clock
                )
            )
        elif kind in ("cordon", "ready"):
            ops.append((kind, device, draw(st.booleans())))
        elif kind == "reserve":
            ops.append(("reserve", device, draw(st.integers(min_value=0, max_value=200)) * GB))
        else:
            ops.append(("tick", draw(st.floats(min_value=-50, max_value=120))))
    return ops


class TestSelectionProperties:
    @settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(
        operations(),
        st.integers(min_value=0, max_value=200),
        st.one_of(st.none(), st.sampled_from(list(Vendor))),
    )
    def test_selection_never_returns_an_ineligible_device(
        self, ops: list[tuple[Any, ...]], min_gb: int, vendor: Vendor | None
    ) -> None:
        clock = [T0]
        manager = GPUClusteringManager(clock=lambda: clock[0])
        for i in range(8):
            v, name, total = MODELS[i % len(MODELS)]
            manager.register_device(
                GPUDeviceInfo(device_id=f"gpu-{i}", vendor=v, name=name, memory_total_bytes=total)
            )
        for op in ops:
            if op[0] == "record":
                _, i, used_fraction, util, temp, age = op
                total = MODELS[i % len(MODELS)][2]
                manager.record_metrics_sync(
                    GPUMetrics(
                        device_id=f"gpu-{i}",
                        timestamp=clock[0] - age,
                        memory_used_bytes=int(total * used_fraction),
                        memory_total_bytes=total,
                        compute_utilization_percent=util,
                        power_watts=100.0,
                        temperature_celsius=temp,
                        clock_rate_mhz=1000.0,
                    )
                )
            elif op[0] == "cordon":
                manager.set_cordoned(f"gpu-{op[1]}", op[2])
            elif op[0] == "ready":
                manager.set_ready(f"gpu-{op[1]}", op[2])
            elif op[0] == "reserve":
                manager.set_reservation(f"gpu-{op[1]}", op[2])
            else:
                clock[0] += op[1]
            # The cached ordering must agree with a from-scratch evaluation at every step.
            best = manager.select_best_device(min_memory_bytes=min_gb * GB, vendor=vendor)
            ranked = manager.rank_devices(min_memory_bytes=min_gb * GB, vendor=vendor)
            eligible = [r for r in ranked if r.eligible]
            event("a device was selected" if best else "nothing eligible")
            if best is None:
                assert eligible == []
            else:
                chosen = manager.explain_device(best, min_memory_bytes=min_gb * GB, vendor=vendor)
                assert chosen.eligible, chosen.rejections
                top = max(eligible, key=lambda r: (r.score, [-ord(c) for c in r.device_id]))
                assert best == top.device_id
                assert best == eligible[0].device_id
