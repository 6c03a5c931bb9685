"""Unit tests of the core library: models, capability table, score formula, selection,
telemetry, distribution, the manager's bad-input handling and the original design's snippets."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from exo.gpu.capabilities import (
    CAPABILITY_TABLE,
    FALLBACK_TFLOPS_PER_GIB,
    MIN_FALLBACK_TFLOPS,
    CapacitySource,
    compute_capacity,
    lookup_model,
    normalize_model_name,
    resolve_compute_capacity,
)
from exo.gpu.clustering import GPUClusteringManager
from exo.gpu.distribution import Strategy, WorkloadDistributor, parse_strategy
from exo.gpu.errors import (
    DeviceConflictError,
    DistributionError,
    GPUClusteringError,
    InsufficientCapacityError,
    InvalidMetricsError,
    InvalidRequestError,
    UnknownDeviceError,
)
from exo.gpu.selector import (
    DeviceSelector,
    RejectionReason,
    SelectionPolicy,
    SelectionRequest,
    extender_score,
    score_device,
)
from exo.gpu.telemetry import RecordResult, TelemetryCollector
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

GB = 1_000_000_000
GIB = 1024**3
T0 = 1707043200.0


def info(
    device_id: str = "cuda:0",
    vendor: Vendor | str = Vendor.NVIDIA,
    name: str = "NVIDIA RTX 4090",
    total: int = 24 * GB,
    **extra: Any,
) -> GPUDeviceInfo:
    return GPUDeviceInfo(
        device_id=device_id, vendor=vendor, name=name, memory_total_bytes=total, **extra
    )


def metrics(
    device_id: str = "cuda:0",
    ts: float = T0,
    used: int = 8 * GB,
    total: int = 24 * GB,
    util: float = 50.0,
    temp: float = 65.0,
    power: float = 150.0,
    clock: float = 2500.0,
) -> GPUMetrics:
    return GPUMetrics(
        device_id=device_id,
        timestamp=ts,
        memory_used_bytes=used,
        memory_total_bytes=total,
        compute_utilization_percent=util,
        power_watts=power,
        temperature_celsius=temp,
        clock_rate_mhz=clock,
    )


def metrics_dict(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "device_id": "cuda:0",
        "timestamp": T0,
        "memory_used_bytes": 8 * GB,
        "memory_total_bytes": 24 * GB,
        "compute_utilization_percent": 50.0,
        "power_watts": 150.0,
        "temperature_celsius": 65.0,
        "clock_rate_mhz": 2500,
    }
    base.update(overrides)
    return base


class Clock:
    """A settable clock for staleness tests."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def snapshot(manager: GPUClusteringManager) -> dict[str, Any]:
    """Everything observable about a manager, to prove a failed call changed nothing."""
    devices = manager.list_devices()
    return {
        "devices": devices,
        "metrics": {d.device_id: manager.get_metrics(d.device_id) for d in devices},
        "history": {d.device_id: manager.get_metrics_history(d.device_id) for d in devices},
        "reservations": {d.device_id: manager.get_reservation(d.device_id) for d in devices},
        "ranking": [
            (r.device_id, r.breakdown, r.eligible, r.rejections) for r in manager.rank_devices()
        ],
        "aggregate": manager.get_aggregated_metrics(),
        "best": manager.select_best_device(),
    }


@pytest.fixture
def fleet() -> GPUClusteringManager:
    """Two reporting RTX 4090s (cuda:1 the better) and an idle-but-silent H100."""
    manager = GPUClusteringManager(clock=Clock(T0))
    manager.register_device(info("cuda:0"))
    manager.register_device(info("cuda:1"))
    manager.register_device(info("h100", name="NVIDIA H100 80GB HBM3", total=80 * GB))
    manager.record_metrics_sync(metrics("cuda:0", used=8 * GB, util=50.0))
    manager.record_metrics_sync(metrics("cuda:1", used=2 * GB, util=10.0))
    return manager


def assert_names(error: BaseException, field: str, *reason_fragments: str) -> None:
    text = str(error)
    assert field in text, f"{field!r} not in {text!r}"
    for fragment in reason_fragments:
        assert fragment.lower() in text.lower(), f"{fragment!r} not in {text!r}"


# -- models -----------------------------------------------------------------------------------


class TestTelemetryProtocol:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("nvidia", Vendor.NVIDIA),
            ("NVIDIA", Vendor.NVIDIA),
            (" Amd ", Vendor.AMD),
            ("Intel", Vendor.INTEL),
            ("APPLE", Vendor.APPLE),
            ("QualComm", Vendor.QUALCOMM),
        ],
    )
    def test_vendor_parses_case_insensitively(self, raw: str, expected: Vendor) -> None:
        assert info(vendor=raw).vendor is expected
        assert Vendor(raw) is expected

    def test_unknown_vendor_names_the_field_and_the_choices(self) -> None:
        with pytest.raises(ValidationError) as caught:
            info(vendor="matrox")
        assert_names(caught.value, "vendor", "nvidia", "qualcomm")

    @pytest.mark.parametrize(
        ("field", "value", "reason"),
        [
            ("memory_total_bytes", -1, "greater than 0"),
            ("memory_total_bytes", 0, "greater than 0"),
            ("device_id", "", "at least 1"),
            ("name", "", "at least 1"),
            ("compute_capacity", 0.0, "greater than 0"),
            ("compute_capacity", -3.0, "greater than 0"),
            ("compute_capacity", math.nan, "finite"),
            ("compute_capacity", math.inf, "finite"),
            ("index", -1, "greater than or equal to 0"),
            ("numa_node", -2, "greater than or equal to 0"),
        ],
    )
    def test_bad_device_info_names_field_and_reason(
        self, field: str, value: object, reason: str
    ) -> None:
        fields: dict[str, Any] = {
            "device_id": "cuda:0",
            "vendor": "nvidia",
            "name": "NVIDIA RTX 4090",
            "memory_total_bytes": 24 * GB,
            field: value,
        }
        with pytest.raises(ValidationError) as caught:
            GPUDeviceInfo(**fields)
        assert_names(caught.value, field, reason)

    def test_unknown_numa_node_minus_one_means_none(self) -> None:
        assert info(numa_node=-1).numa_node is None
        assert info(numa_node=1).numa_node == 1

    def test_unknown_fields_are_refused(self) -> None:
        with pytest.raises(ValidationError) as caught:
            GPUDeviceInfo(
                device_id="x", vendor="amd", name="MI300X", memory_total_bytes=1, memroy=3
            )
        assert_names(caught.value, "memroy", "extra")

    @pytest.mark.parametrize(
        ("field", "value", "reason"),
        [
            ("memory_used_bytes", -1, "greater than or equal to 0"),
            ("memory_total_bytes", -5, "greater than 0"),
            ("compute_utilization_percent", -0.1, "greater than or equal to 0"),
            ("compute_utilization_percent", 100.5, "less than or equal to 100"),
            ("compute_utilization_percent", math.nan, "finite"),
            ("power_watts", -1.0, "greater than or equal to 0"),
            ("power_watts", math.nan, "finite"),
            ("power_watts", math.inf, "finite"),
            ("temperature_celsius", math.nan, "finite"),
            ("temperature_celsius", 255.0, "less than or equal to 200"),
            ("temperature_celsius", -300.0, "greater than or equal to -273.15"),
            ("clock_rate_mhz", -1, "greater than or equal to 0"),
            ("clock_rate_mhz", -math.inf, "finite"),
            ("timestamp", math.nan, "finite"),
            ("timestamp", math.inf, "finite"),
            ("timestamp", -1.0, "greater than or equal to 0"),
        ],
    )
    def test_bad_metrics_name_field_and_reason(
        self, field: str, value: object, reason: str
    ) -> None:
        with pytest.raises(ValidationError) as caught:
            GPUMetrics(**metrics_dict(**{field: value}))
        assert_names(caught.value, field, reason)

    def test_used_above_total_names_both_fields(self) -> None:
        with pytest.raises(ValidationError) as caught:
            GPUMetrics(**metrics_dict(memory_used_bytes=25 * GB))
        assert_names(caught.value, "memory_used_bytes", "exceeds", "memory_total_bytes")

    def test_models_are_frozen_and_free_memory_is_derived(self) -> None:
        sample = metrics(used=8 * GB, total=24 * GB)
        assert sample.memory_free_bytes == 16 * GB
        with pytest.raises(ValidationError):
            sample.memory_used_bytes = 0  # type: ignore[misc]
        with pytest.raises(ValidationError):
            info().name = "other"  # type: ignore[misc]


# -- capability table ---------------------------------------------------------------------------


class TestCapabilities:
    @pytest.mark.parametrize(
        ("vendor", "name", "model"),
        [
            (Vendor.NVIDIA, "NVIDIA GeForce RTX 4090", "rtx 4090"),
            (Vendor.NVIDIA, "NVIDIA RTX 4090", "rtx 4090"),
            (Vendor.NVIDIA, "NVIDIA H100 80GB HBM3", "h100"),
            (Vendor.NVIDIA, "NVIDIA H100 PCIe", "h100 pcie"),
            (Vendor.NVIDIA, "NVIDIA H200", "h200"),
            (Vendor.NVIDIA, "NVIDIA A100-SXM4-80GB", "a100"),
            (Vendor.NVIDIA, "Tesla T4", "t4"),
            (Vendor.NVIDIA, "Tesla V100-SXM2-16GB", "v100"),
            (Vendor.NVIDIA, "NVIDIA L40S", "l40s"),
            (Vendor.NVIDIA, "NVIDIA L40", "l40"),
            (Vendor.NVIDIA, "NVIDIA A10G", "a10g"),
            (Vendor.NVIDIA, "NVIDIA GeForce RTX 3090", "rtx 3090"),
            (Vendor.AMD, "AMD Instinct MI300X", "mi300x"),
            (Vendor.AMD, "AMD Instinct MI250X", "mi250x"),
            (Vendor.AMD, "AMD Instinct MI210", "mi210"),
            (Vendor.AMD, "AMD Radeon RX 7900 XTX", "rx 7900 xtx"),
            (Vendor.AMD, "AMD Radeon RX 7900 XT", "rx 7900 xt"),
            (Vendor.INTEL, "Intel(R) Data Center GPU Max 1550", "max 1550"),
            (Vendor.INTEL, "Intel(R) Arc(TM) A770 Graphics", "arc a770"),
            (Vendor.INTEL, "Intel(R) Data Center GPU Flex 170", "flex 170"),
            (Vendor.APPLE, "Apple M1", "m1"),
            (Vendor.APPLE, "Apple M2 Ultra", "m2 ultra"),
            (Vendor.APPLE, "Apple M3 Max (40-core GPU)", "m3 max"),
            (Vendor.APPLE, "Apple M4 Pro", "m4 pro"),
            (Vendor.QUALCOMM, "Qualcomm(R) Adreno(TM) X1-85 GPU", "adreno x1 85"),
            (Vendor.QUALCOMM, "Adreno 750", "adreno 750"),
        ],
    )
    def test_table_matches_normalized_names(self, vendor: Vendor, name: str, model: str) -> None:
        estimate = resolve_compute_capacity(info(vendor=vendor, name=name))
        assert estimate.source is CapacitySource.TABLE
        assert estimate.matched_model == model
        assert estimate.value == CAPABILITY_TABLE[vendor][model]

    def test_longest_entry_wins_over_its_prefix(self) -> None:
        sxm = CAPABILITY_TABLE[Vendor.NVIDIA]["h100"]
        pcie = CAPABILITY_TABLE[Vendor.NVIDIA]["h100 pcie"]
        assert sxm != pcie
        assert compute_capacity(info(name="NVIDIA H100 PCIe")) == pcie

    def test_every_entry_is_positive_and_matches_itself(self) -> None:
        for vendor, models in CAPABILITY_TABLE.items():
            assert set(models), vendor
            for model, tflops in models.items():
                assert tflops > 0
                assert lookup_model(vendor, model) == (model, tflops)

    def test_normalization_drops_vendor_noise(self) -> None:
        assert normalize_model_name("NVIDIA GeForce RTX 4090") == ("rtx", "4090")
        assert normalize_model_name("Intel(R) Arc(TM) A770 Graphics") == ("arc", "a770")

    def test_declared_capacity_overrides_the_table(self) -> None:
        estimate = resolve_compute_capacity(info(compute_capacity=42.5))
        assert (estimate.value, estimate.source) == (42.5, CapacitySource.DECLARED)

    @pytest.mark.parametrize("vendor", list(Vendor))
    def test_unknown_model_falls_back_to_memory_never_zero(self, vendor: Vendor) -> None:
        big = resolve_compute_capacity(info(vendor=vendor, name="Prototype ZX-9", total=64 * GIB))
        assert big.source is CapacitySource.MEMORY_FALLBACK
        assert big.value == pytest.approx(FALLBACK_TFLOPS_PER_GIB[vendor] * 64)
        tiny = resolve_compute_capacity(info(vendor=vendor, name="Prototype ZX-1", total=1024))
        assert tiny.value == MIN_FALLBACK_TFLOPS > 0

    def test_matching_is_scoped_to_the_vendor(self) -> None:
        # An Apple model name on an NVIDIA device is not an Apple chip.
        estimate = resolve_compute_capacity(info(vendor=Vendor.NVIDIA, name="Apple M2 Ultra"))
        assert estimate.source is CapacitySource.MEMORY_FALLBACK


# -- score formula ------------------------------------------------------------------------------


# Each row: inputs, then the expected terms worked out by hand from the formula in
# score_device's docstring (weights 0.6 / 0.4, penalty 0 at 75 C rising to 0.5 at 90 C).
SCORE_TABLE = [
    # id, total, used, reserved, util, temp, memory, compute, thermal, total_score
    ("idle-empty-cool", 100, 0, 0, 0.0, 30.0, 0.6, 0.4, 0.0, 1.0),
    # 0.6 * 16/24 = 0.4 ; 0.4 * (1 - 0.5) = 0.2
    ("original-snippet", 24 * GB, 8 * GB, 0, 50.0, 65.0, 0.4, 0.2, 0.0, 0.6),
    # reservation above measured use counts: free = 100 - 40 = 60 -> 0.6 * 0.6 = 0.36
    ("reserved-above-used", 100, 10, 40, 0.0, 30.0, 0.36, 0.4, 0.0, 0.76),
    # measured use above reservation counts: free = 100 - 70 = 30 -> 0.18
    ("used-above-reserved", 100, 70, 40, 0.0, 30.0, 0.18, 0.4, 0.0, 0.58),
    # reservation beyond the total clamps free memory at 0 (no negative free memory)
    ("over-reserved-clamps", 100, 0, 150, 0.0, 30.0, 0.0, 0.4, 0.0, 0.4),
    # exactly at thermal_start: no penalty
    ("at-thermal-start", 100, 0, 0, 0.0, 75.0, 0.6, 0.4, 0.0, 1.0),
    # 82.5 C is halfway from 75 to 90: penalty 0.5 * 7.5/15 = 0.25
    ("thermal-halfway", 100, 0, 0, 0.0, 82.5, 0.6, 0.4, 0.25, 0.75),
    # 80 C: penalty 0.5 * 5/15 = 1/6 ; 0.6 * 0.5 + 0.4 * 0.5 - 1/6 = 1/3
    ("thermal-80", 100, 50, 0, 50.0, 80.0, 0.3, 0.2, 1 / 6, 1 / 3),
    # full, busy and at 90 C: 0 + 0 - 0.5 clamps to 0
    ("clamped-at-zero", 100, 100, 0, 100.0, 90.0, 0.0, 0.0, 0.5, 0.0),
    # beyond 90 C the penalty stays at its maximum 0.5
    ("penalty-capped", 100, 0, 0, 0.0, 120.0, 0.6, 0.4, 0.5, 0.5),
    # utilization outside 0..100 is clamped by the pure function: 150 -> 100, -10 -> 0
    ("util-above-100", 100, 0, 0, 150.0, 30.0, 0.6, 0.0, 0.0, 0.6),
    ("util-below-0", 100, 100, 0, -10.0, 30.0, 0.0, 0.4, 0.0, 0.4),
    # zero total (impossible through the models) cannot divide by zero
    ("zero-total", 0, 0, 0, 0.0, 30.0, 0.0, 0.4, 0.0, 0.4),
    # unknown temperature (the driver exposes none): no thermal penalty; 0.6 * 0.5 + 0.4 * 0.5
    ("temperature-unknown", 100, 50, 0, 50.0, None, 0.3, 0.2, 0.0, 0.5),
]


class TestScoreFormula:
    @pytest.mark.parametrize(
        ("total", "used", "reserved", "util", "temp", "memory", "compute", "thermal", "score"),
        [row[1:] for row in SCORE_TABLE],
        ids=[row[0] for row in SCORE_TABLE],
    )
    def test_score_table(
        self,
        total: int,
        used: int,
        reserved: int,
        util: float,
        temp: float | None,
        memory: float,
        compute: float,
        thermal: float,
        score: float,
    ) -> None:
        breakdown = score_device(total, used, util, temp, reserved)
        assert breakdown.memory == pytest.approx(memory)
        assert breakdown.compute == pytest.approx(compute)
        assert breakdown.thermal == pytest.approx(thermal)
        assert breakdown.total == pytest.approx(score)
        assert 0.0 <= breakdown.total <= 1.0
        assert breakdown.free_memory_bytes == max(0, total - max(used, reserved))

    def test_policy_changes_weights_and_thermal_band(self) -> None:
        policy = SelectionPolicy(
            memory_weight=0.5,
            compute_weight=0.5,
            thermal_start_celsius=60.0,
            thermal_max_celsius=80.0,
            max_thermal_penalty=0.2,
        )
        # 0.5 * 0.5 + 0.5 * 0.8 - 0.2 * (70 - 60) / 20 = 0.25 + 0.4 - 0.1
        breakdown = score_device(100, 50, 20.0, 70.0, policy=policy)
        assert breakdown.total == pytest.approx(0.55)

    @pytest.mark.parametrize("field", ["util", "temp"])
    def test_non_finite_inputs_are_refused(self, field: str) -> None:
        util, temp = (math.nan, 50.0) if field == "util" else (10.0, math.inf)
        with pytest.raises(InvalidMetricsError):
            score_device(100, 0, util, temp)

    @pytest.mark.parametrize(
        ("score", "priority"),
        [(0.0, 0), (1.0, 10), (0.74, 7), (0.75, 8), (0.049, 0), (0.051, 1), (math.nan, 0)],
    )
    def test_extender_score_maps_to_0_10(self, score: float, priority: int) -> None:
        assert extender_score(score) == priority


class TestSelectionPolicy:
    def test_defaults_match_the_design(self) -> None:
        policy = SelectionPolicy()
        assert (policy.memory_weight, policy.compute_weight) == (0.6, 0.4)
        assert (policy.thermal_start_celsius, policy.thermal_max_celsius) == (75.0, 90.0)
        assert policy.max_thermal_penalty == 0.5
        assert policy.stale_after_seconds == 3 * policy.reporting_interval_seconds

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"memory_weight": -0.1}, "memory_weight"),
            ({"memory_weight": 0.0, "compute_weight": 0.0}, "memory_weight"),
            ({"compute_weight": math.nan}, "compute_weight"),
            ({"thermal_start_celsius": 90.0}, "thermal_start_celsius"),
            ({"max_thermal_penalty": 1.5}, "max_thermal_penalty"),
            ({"reporting_interval_seconds": 0.0}, "reporting_interval_seconds"),
            ({"stale_after_intervals": -1.0}, "stale_after_intervals"),
        ],
    )
    def test_invalid_policy_is_refused(self, kwargs: dict[str, float], field: str) -> None:
        with pytest.raises(InvalidRequestError) as caught:
            SelectionPolicy(**kwargs)
        assert caught.value.field == field
        assert_names(caught.value, field)


# -- selection ----------------------------------------------------------------------------------


class TestSelection:
    def test_best_device_has_the_highest_score(self, fleet: GPUClusteringManager) -> None:
        ranked = fleet.rank_devices()
        assert fleet.select_best_device() == "cuda:1"
        assert ranked[0].device_id == "cuda:1"
        assert ranked[0].score > ranked[1].score

    def test_ties_break_by_device_id(self) -> None:
        manager = GPUClusteringManager()
        for device_id in ("gpu-b", "gpu-a", "gpu-c"):
            manager.register_device(info(device_id))
            manager.record_metrics_sync(metrics(device_id))
        assert manager.select_best_device() == "gpu-a"
        assert [r.device_id for r in manager.rank_devices()] == ["gpu-a", "gpu-b", "gpu-c"]

    def test_min_memory_skips_devices_without_enough_free_memory(
        self, fleet: GPUClusteringManager
    ) -> None:
        # cuda:1 has 22 GB free, cuda:0 16 GB.
        assert fleet.select_best_device(min_memory_bytes=20 * GB) == "cuda:1"
        assert fleet.select_best_device(min_memory_bytes=23 * GB) is None
        rejected = fleet.explain_device("cuda:0", min_memory_bytes=20 * GB)
        assert rejected.reason is RejectionReason.INSUFFICIENT_MEMORY
        assert "GiB" in rejected.rejections[0].message

    def test_reservations_count_as_used_memory(self, fleet: GPUClusteringManager) -> None:
        fleet.set_reservation("cuda:1", 20 * GB)
        assert fleet.select_best_device(min_memory_bytes=10 * GB) == "cuda:0"
        breakdown = fleet.explain_device("cuda:1").breakdown
        assert breakdown is not None and breakdown.free_memory_bytes == 4 * GB
        fleet.set_reservation("cuda:1", 0)
        assert fleet.select_best_device(min_memory_bytes=10 * GB) == "cuda:1"

    def test_set_reservations_replaces_every_reservation(
        self, fleet: GPUClusteringManager
    ) -> None:
        fleet.set_reservation("cuda:0", 5 * GB)
        fleet.set_reservations({"cuda:1": 3 * GB})
        assert fleet.get_reservation("cuda:0") == 0
        assert fleet.get_reservation("cuda:1") == 3 * GB

    @pytest.mark.parametrize("vendor", [Vendor.AMD, "amd", "AMD"])
    def test_vendor_filter(self, fleet: GPUClusteringManager, vendor: Vendor | str) -> None:
        assert fleet.select_best_device(vendor=vendor) is None
        fleet.register_device(
            info("rocm:0", vendor="amd", name="AMD Instinct MI300X", total=192 * GB)
        )
        fleet.record_metrics_sync(metrics("rocm:0", used=190 * GB, total=192 * GB, util=90.0))
        assert fleet.select_best_device(vendor=vendor) == "rocm:0"
        assert fleet.select_best_device(vendor="nvidia") == "cuda:1"

    def test_cordoned_and_not_ready_devices_are_skipped(
        self, fleet: GPUClusteringManager
    ) -> None:
        fleet.set_cordoned("cuda:1")
        assert fleet.select_best_device() == "cuda:0"
        assert fleet.explain_device("cuda:1").reason is RejectionReason.CORDONED
        fleet.set_ready("cuda:0", False)
        assert fleet.select_best_device() is None
        assert fleet.explain_device("cuda:0").reason is RejectionReason.NOT_READY
        fleet.set_cordoned("cuda:1", False)
        fleet.set_ready("cuda:0", True)
        assert fleet.select_best_device() == "cuda:1"

    def test_device_without_metrics_is_not_eligible(self, fleet: GPUClusteringManager) -> None:
        h100 = fleet.explain_device("h100")
        assert not h100.eligible
        assert h100.reason is RejectionReason.NO_METRICS
        assert h100.breakdown is None and h100.score == 0.0
        assert fleet.rank_devices()[-1].device_id == "h100"

    @pytest.mark.parametrize(("temp", "eligible"), [(89.9, True), (90.0, False), (95.0, False)])
    def test_too_hot_devices_are_excluded(self, temp: float, eligible: bool) -> None:
        manager = GPUClusteringManager()
        manager.register_device(info())
        manager.record_metrics_sync(metrics(temp=temp))
        assert (manager.select_best_device() == "cuda:0") is eligible
        ranked = manager.explain_device("cuda:0")
        assert ranked.eligible is eligible
        if not eligible:
            assert ranked.reason is RejectionReason.TOO_HOT
            assert f"{temp:.1f} C" in ranked.rejections[0].message

    def test_unknown_temperature_is_never_too_hot(self) -> None:
        manager = GPUClusteringManager()
        manager.register_device(info())
        manager.record_metrics_sync(metrics().model_copy(update={"temperature_celsius": None}))
        assert manager.select_best_device() == "cuda:0"
        ranked = manager.explain_device("cuda:0")
        assert ranked.eligible and ranked.breakdown is not None
        assert ranked.breakdown.thermal == 0.0

    def test_staleness_follows_the_injected_clock(self) -> None:
        clock = Clock(T0)
        manager = GPUClusteringManager(clock=clock)
        manager.register_device(info())
        manager.record_metrics_sync(metrics(ts=T0))
        stale_after = manager.policy.stale_after_seconds
        clock.now = T0 + stale_after
        assert manager.select_best_device() == "cuda:0"  # exactly at the limit: still fresh
        clock.now = T0 + stale_after + 1
        assert manager.select_best_device() is None
        stale = manager.explain_device("cuda:0")
        assert stale.reason is RejectionReason.STALE
        assert f"{stale_after + 1:.0f} s old" in stale.rejections[0].message
        assert manager.get_aggregated_metrics()["oldest_sample_age_seconds"] == stale_after + 1
        manager.record_metrics_sync(metrics(ts=T0 + stale_after))
        assert manager.select_best_device() == "cuda:0"
        clock.now = T0 + 10 * stale_after
        assert manager.select_best_device() is None
        clock.now = T0 + stale_after  # a clock that goes back makes the device fresh again
        assert manager.select_best_device() == "cuda:0"

    def test_default_clock_is_the_newest_sample(self) -> None:
        manager = GPUClusteringManager()
        assert manager.now() is None
        manager.register_device(info("old"))
        manager.register_device(info("new"))
        manager.record_metrics_sync(metrics("old", ts=T0, used=0, util=0.0))
        manager.record_metrics_sync(metrics("new", ts=T0 + 300, used=20 * GB, util=90.0))
        assert manager.now() == T0 + 300
        assert manager.select_best_device() == "new"
        assert manager.explain_device("old").reason is RejectionReason.STALE

    def test_labels_and_predicate_filters(self, fleet: GPUClusteringManager) -> None:
        fleet.set_labels("cuda:0", {"gpu.exo.dev/node": "node-a"})
        fleet.set_labels("cuda:1", {"gpu.exo.dev/node": "node-b"})
        assert fleet.select_best_device(labels={"gpu.exo.dev/node": "node-a"}) == "cuda:0"
        assert fleet.select_best_device(labels={"gpu.exo.dev/node": "node-z"}) is None
        assert fleet.select_best_device(predicate=lambda d: d.device_id != "cuda:1") == "cuda:0"
        ranked = fleet.explain_device("cuda:1", labels={"gpu.exo.dev/node": "node-a"})
        assert ranked.reason is RejectionReason.SELECTOR_MISMATCH

    def test_rank_lists_every_device_with_breakdown_and_all_reasons(
        self, fleet: GPUClusteringManager
    ) -> None:
        fleet.set_cordoned("cuda:0")
        fleet.set_ready("cuda:0", False)
        ranked = {r.device_id: r for r in fleet.rank_devices(min_memory_bytes=20 * GB)}
        assert set(ranked) == {"cuda:0", "cuda:1", "h100"}
        assert ranked["cuda:1"].eligible and ranked["cuda:1"].rejections == ()
        codes = [r.code for r in ranked["cuda:0"].rejections]
        assert codes == [
            RejectionReason.CORDONED,
            RejectionReason.NOT_READY,
            RejectionReason.INSUFFICIENT_MEMORY,
        ]
        breakdown = ranked["cuda:0"].breakdown
        assert breakdown is not None
        assert breakdown.total == pytest.approx(
            breakdown.memory + breakdown.compute - breakdown.thermal
        )

    def test_cached_order_follows_new_samples(self, fleet: GPUClusteringManager) -> None:
        assert fleet.select_best_device() == "cuda:1"
        fleet.record_metrics_sync(metrics("cuda:1", ts=T0 + 1, used=23 * GB, util=100.0))
        assert fleet.select_best_device() == "cuda:0"
        fleet.record_metrics_sync(metrics("h100", total=80 * GB, used=0, util=0.0, ts=T0 + 1))
        assert fleet.select_best_device() == "h100"
        fleet.unregister_device("h100")
        assert fleet.select_best_device() == "cuda:0"

    def test_selector_can_be_used_on_its_own(self) -> None:
        selector = DeviceSelector()
        selector.add_device(info("a"))
        selector.add_device(info("b"))
        selector.update_metrics("a", metrics("a", used=20 * GB))
        selector.update_metrics("b", metrics("b", used=1 * GB))
        assert selector.select(SelectionRequest(), now=T0) == "b"
        assert selector.eligible_in_order(now=T0) == ["b", "a"]
        assert selector.select(SelectionRequest(min_memory_bytes=30 * GB), now=T0) is None


# -- telemetry ----------------------------------------------------------------------------------


class TestTelemetryCollector:
    def make(self, history_size: int = 5) -> TelemetryCollector:
        collector = TelemetryCollector(history_size=history_size)
        collector.register("cuda:0", Vendor.NVIDIA, 24 * GB)
        return collector

    def test_history_is_bounded_and_keeps_the_newest(self) -> None:
        collector = self.make(history_size=5)
        for i in range(8):
            assert collector.record(metrics(ts=T0 + i)) is RecordResult.LATEST
        stamps = [m.timestamp for m in collector.history("cuda:0")]
        assert stamps == [T0 + i for i in range(3, 8)]

    def test_out_of_order_samples_are_inserted_in_order(self) -> None:
        collector = self.make(history_size=10)
        for offset in (0, 10, 20):
            collector.record(metrics(ts=T0 + offset, used=offset * GB // 10))
        latest_before = collector.latest("cuda:0")
        aggregate_before = collector.aggregate(T0 + 20)
        assert collector.record(metrics(ts=T0 + 5)) is RecordResult.INSERTED
        assert [m.timestamp for m in collector.history("cuda:0")] == [
            T0,
            T0 + 5,
            T0 + 10,
            T0 + 20,
        ]
        assert collector.latest("cuda:0") == latest_before
        assert collector.aggregate(T0 + 20) == aggregate_before
        assert [m.timestamp for m in collector.history("cuda:0", since=T0 + 6)] == [
            T0 + 10,
            T0 + 20,
        ]

    def test_duplicates_are_dropped_first_one_wins(self) -> None:
        collector = self.make()
        collector.record(metrics(ts=T0, util=10.0))
        assert collector.record(metrics(ts=T0, util=99.0)) is RecordResult.DUPLICATE
        assert not RecordResult.DUPLICATE.accepted
        history = collector.history("cuda:0")
        assert len(history) == 1 and history[0].compute_utilization_percent == 10.0

    def test_sample_older_than_a_full_history_is_dropped(self) -> None:
        collector = self.make(history_size=3)
        for i in range(1, 4):
            collector.record(metrics(ts=T0 + i))
        assert collector.record(metrics(ts=T0)) is RecordResult.TOO_OLD
        assert len(collector.history("cuda:0")) == 3

    @pytest.mark.parametrize("size", [0, -1, 2.5, True])
    def test_invalid_history_size(self, size: Any) -> None:
        with pytest.raises(InvalidRequestError) as caught:
            TelemetryCollector(history_size=size)
        assert_names(caught.value, "history_size", "at least 1")

    def test_aggregate_matches_a_recomputation(self) -> None:
        collector = TelemetryCollector()
        fleet = {
            "n0": (Vendor.NVIDIA, 80 * GB, 20 * GB, 30.0, 60.0, 300.0, T0),
            "n1": (Vendor.NVIDIA, 24 * GB, 4 * GB, 70.0, 81.5, 350.5, T0 + 4),
            "a0": (Vendor.AMD, 192 * GB, 100 * GB, 55.5, 71.0, 500.0, T0 + 2),
            "q0": (Vendor.QUALCOMM, 32 * GB, 1 * GB, 5.0, 44.0, 9.25, T0 + 1),
        }
        for device_id, (vendor, total, *_rest) in fleet.items():
            collector.register(device_id, vendor, total)
        collector.register("silent", Vendor.APPLE, 64 * GB)
        for device_id, (_vendor, total, used, util, temp, power, ts) in fleet.items():
            collector.record(
                metrics(device_id, ts=ts, used=used, total=total, util=util, temp=temp, power=power)
            )
        rows = list(fleet.values())
        agg = collector.aggregate(now=T0 + 10)
        assert agg["device_count"] == 5
        assert agg["reporting_device_count"] == 4
        assert agg["total_memory_bytes"] == sum(r[1] for r in rows) + 64 * GB
        assert agg["used_memory_bytes"] == sum(r[2] for r in rows)
        assert agg["free_memory_bytes"] == sum(r[1] - r[2] for r in rows)
        assert agg["unreported_memory_bytes"] == 64 * GB
        assert agg["average_utilization_percent"] == pytest.approx(
            sum(r[3] for r in rows) / len(rows)
        )
        assert agg["max_temperature_celsius"] == max(r[4] for r in rows)
        assert agg["total_power_watts"] == pytest.approx(sum(r[5] for r in rows))
        assert agg["devices_by_vendor"] == {
            "nvidia": 2,
            "amd": 1,
            "intel": 0,
            "apple": 1,
            "qualcomm": 1,
        }
        assert agg["oldest_sample_age_seconds"] == pytest.approx(10.0)

        # The hottest device cools down, then leaves: the maximum follows.
        collector.record(metrics("n1", ts=T0 + 5, used=4 * GB, total=24 * GB, temp=50.0))
        assert collector.aggregate()["max_temperature_celsius"] == 71.0
        collector.unregister("a0")
        agg = collector.aggregate(now=T0 + 10)
        assert agg["max_temperature_celsius"] == 60.0
        assert agg["devices_by_vendor"]["amd"] == 0
        assert agg["used_memory_bytes"] == 20 * GB + 4 * GB + 1 * GB

    def test_aggregate_leaves_unknown_temperature_and_power_out(self) -> None:
        collector = TelemetryCollector()
        for device_id in ("n0", "q0", "i0"):
            collector.register(device_id, Vendor.NVIDIA, 24 * GB)
        collector.record(metrics("n0", temp=60.0, power=300.0))
        # An Adreno: no power exposed. An integrated Intel GPU: neither power nor temperature.
        collector.record(metrics("q0", temp=44.0).model_copy(update={"power_watts": None}))
        collector.record(
            metrics("i0").model_copy(update={"power_watts": None, "temperature_celsius": None})
        )
        agg = collector.aggregate()
        assert agg["reporting_device_count"] == 3
        assert agg["max_temperature_celsius"] == 60.0
        assert agg["total_power_watts"] == 300.0
        assert agg["unknown_temperature_device_count"] == 1
        assert agg["unknown_power_device_count"] == 2
        # The integrated GPU starts reporting power; the NVIDIA device leaves.
        collector.record(
            metrics("i0", ts=T0 + 1).model_copy(update={"temperature_celsius": None})
        )
        collector.unregister("n0")
        agg = collector.aggregate()
        assert agg["max_temperature_celsius"] == 44.0
        assert agg["total_power_watts"] == 150.0
        assert agg["unknown_temperature_device_count"] == 1
        assert agg["unknown_power_device_count"] == 1
        collector.unregister("i0")
        collector.unregister("q0")
        agg = collector.aggregate()
        assert agg["unknown_temperature_device_count"] == agg["unknown_power_device_count"] == 0
        assert agg["max_temperature_celsius"] is None

    def test_empty_aggregate(self) -> None:
        agg = TelemetryCollector().aggregate(now=T0)
        assert agg["device_count"] == 0
        assert agg["average_utilization_percent"] == 0.0
        assert agg["max_temperature_celsius"] is None
        assert agg["oldest_sample_age_seconds"] is None


# -- distribution -------------------------------------------------------------------------------


def ready_manager(*specs: tuple[str, str, int, int, float]) -> GPUClusteringManager:
    """A manager with (id, model, total, used, util) devices, all reporting at T0."""
    manager = GPUClusteringManager(clock=Clock(T0))
    for device_id, model, total, used, util in specs:
        manager.register_device(info(device_id, name=model, total=total))
        manager.record_metrics_sync(
            metrics(device_id, used=used, total=total, util=util, temp=50.0)
        )
    return manager


class TestDistribution:
    @pytest.mark.parametrize(
        ("task_count", "device_count", "expected"),
        [
            (10, 3, [4, 3, 3]),
            (11, 3, [4, 4, 3]),
            (3, 3, [1, 1, 1]),
            (2, 4, [1, 1, 0, 0]),
            (0, 2, [0, 0]),
            (100, 1, [100]),
        ],
    )
    def test_uniform_counts_extra_tasks_go_to_the_best(
        self, task_count: int, device_count: int, expected: list[int]
    ) -> None:
        devices = [f"d{i}" for i in range(device_count)]  # already in device order
        result = WorkloadDistributor().distribute(list(range(task_count)), devices, "uniform")
        assert list(result) == devices
        assert [len(v) for v in result.values()] == expected
        assert [t for run in result.values() for t in run] == list(range(task_count))

    def test_uniform_order_follows_scores_not_names(self) -> None:
        manager = ready_manager(
            ("a-busy", "NVIDIA RTX 4090", 24 * GB, 20 * GB, 90.0),
            ("z-idle", "NVIDIA RTX 4090", 24 * GB, 0, 0.0),
        )
        result = manager.distribute_workload(["t0", "t1", "t2"], strategy="uniform")
        assert result == {"z-idle": ["t0", "t1"], "a-busy": ["t2"]}

    def test_capacity_is_proportional_with_largest_remainder(self) -> None:
        result = WorkloadDistributor().distribute(
            list(range(10)), ["a", "b", "c"], "capacity", {"a": 1.0, "b": 1.0, "c": 1.0}
        )
        # 10/3 each: floors 3, one left over, ties broken by device order.
        assert [len(v) for v in result.values()] == [4, 3, 3]
        result = WorkloadDistributor().distribute(
            list(range(7)), ["a", "b", "c"], "capacity", {"a": 1.0, "b": 3.0, "c": 3.0}
        )
        # shares 1, 3, 3 exactly.
        assert [len(v) for v in result.values()] == [1, 3, 3]
        result = WorkloadDistributor().distribute(
            list(range(10)), ["a", "b"], "capacity", {"a": 2.0, "b": 1.0}
        )
        # shares 6.67 and 3.33: the larger remainder (a) gets the leftover.
        assert [len(v) for v in result.values()] == [7, 3]

    def test_capacity_ties_break_by_score_then_name(self) -> None:
        manager = ready_manager(
            ("b", "NVIDIA RTX 4090", 24 * GB, 0, 0.0),
            ("a", "NVIDIA RTX 4090", 24 * GB, 0, 0.0),
            ("c-best", "NVIDIA RTX 4090", 24 * GB, 0, 0.0),
        )
        manager.record_metrics_sync(metrics("b", ts=T0 + 1, used=12 * GB, util=10.0, temp=50.0))
        # Scores: a == c-best > b; equal weights; 4 tasks -> one leftover to "a" (score tie,
        # then name), then "c-best".
        result = manager.distribute_workload(
            list(range(4)), strategy="capacity", capacities={"a": 1, "b": 1, "c-best": 1}
        )
        assert {k: len(v) for k, v in result.items()} == {"a": 2, "c-best": 1, "b": 1}
        assert list(result) == ["a", "c-best", "b"]

    def test_zero_capacity_gets_nothing(self) -> None:
        result = WorkloadDistributor().distribute(
            list(range(9)), ["a", "b", "c"], "capacity", {"a": 0.0, "b": 1.0, "c": 2.0}
        )
        assert result == {"a": [], "b": [0, 1, 2], "c": [3, 4, 5, 6, 7, 8]}

    def test_default_capacities_are_compute_capacities(self) -> None:
        manager = ready_manager(
            ("h100", "NVIDIA H100 80GB HBM3", 80 * GB, 0, 0.0),
            ("t4", "Tesla T4", 16 * GB, 0, 0.0),
        )
        h100 = CAPABILITY_TABLE[Vendor.NVIDIA]["h100"]
        t4 = CAPABILITY_TABLE[Vendor.NVIDIA]["t4"]
        result = manager.distribute_workload(list(range(1000)), strategy="capacity")
        assert len(result["h100"]) == round(1000 * h100 / (h100 + t4))
        plan = manager.plan_workload(list(range(1000)), strategy="capacity")
        assert plan.weights == {"h100": h100, "t4": t4}
        assert set(plan.scores) == {"h100", "t4"}

    @pytest.mark.parametrize(
        ("caps", "expected"),
        [
            (4, [4, 3, 3]),
            ({"a": 2}, [2, 4, 4]),
            ({"a": 1, "b": 1}, [1, 1, 8]),
        ],
    )
    def test_caps_respread_overflow(self, caps: Any, expected: list[int]) -> None:
        result = WorkloadDistributor().distribute(
            list(range(10)), ["a", "b", "c"], "uniform", max_items_per_device=caps
        )
        assert [len(v) for v in result.values()] == expected
        assert [t for run in result.values() for t in run] == list(range(10))

    def test_overflow_is_respread_in_proportion_to_capacity(self) -> None:
        # Shares 2/3 of 12 = 8 for "big" but its cap is 4: the other 8 tasks go to "x" and
        # "y" in proportion 1:3.
        result = WorkloadDistributor().distribute(
            list(range(12)),
            ["big", "x", "y"],
            "capacity",
            {"big": 8.0, "x": 1.0, "y": 3.0},
            max_items_per_device={"big": 4},
        )
        assert [len(v) for v in result.values()] == [4, 2, 6]

    @pytest.mark.parametrize(
        "tasks",
        [list(range(7)), tuple(range(7)), range(7), (i for i in range(7)), "abcdefg"],
        ids=["list", "tuple", "range", "generator", "str"],
    )
    def test_any_sequence_of_tasks(self, tasks: Any) -> None:
        manager = ready_manager(
            ("a", "NVIDIA RTX 4090", 24 * GB, 0, 0.0), ("b", "NVIDIA RTX 4090", 24 * GB, 0, 0.0)
        )
        result = manager.distribute_workload(tasks, strategy="uniform")
        assert all(isinstance(run, list) for run in result.values())
        assert sum(len(run) for run in result.values()) == 7

    def test_same_input_same_output(self, fleet: GPUClusteringManager) -> None:
        first = fleet.distribute_workload(list(range(101)), "capacity")
        for _ in range(3):
            assert fleet.distribute_workload(list(range(101)), "capacity") == first

    def test_ineligible_named_devices_are_excluded_with_reasons(
        self, fleet: GPUClusteringManager
    ) -> None:
        plan = fleet.plan_workload(
            list(range(6)), "capacity", capacities={"cuda:0": 1.0, "h100": 5.0}
        )
        assert plan.assignments == {"cuda:0": list(range(6))}
        assert [r.code for r in plan.excluded["h100"]] == [RejectionReason.NO_METRICS]

    def test_filters_apply_to_distribution(self, fleet: GPUClusteringManager) -> None:
        result = fleet.distribute_workload(list(range(4)), min_memory_bytes=20 * GB)
        assert result == {"cuda:1": [0, 1, 2, 3]}

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("uniform", Strategy.UNIFORM),
            ("UNIFORM", Strategy.UNIFORM),
            (" capacity ", Strategy.CAPACITY),
            (Strategy.CAPACITY, Strategy.CAPACITY),
        ],
    )
    def test_strategy_parsing(self, raw: Any, expected: Strategy) -> None:
        assert parse_strategy(raw) is expected


# -- devices ------------------------------------------------------------------------------------


class TestDeviceRegistry:
    def test_registering_the_same_identity_again_is_a_no_op(
        self, fleet: GPUClusteringManager
    ) -> None:
        before = snapshot(fleet)
        fleet.register_device(info("cuda:0"))
        fleet.register_device(info("cuda:0").model_dump())
        assert snapshot(fleet) == before

    def test_replace_keeps_metrics_when_memory_is_unchanged(
        self, fleet: GPUClusteringManager
    ) -> None:
        fleet.register_device(info("cuda:0", compute_capacity=99.0), replace=True)
        assert fleet.get_metrics("cuda:0") is not None
        assert fleet.compute_capacity("cuda:0").value == 99.0
        fleet.register_device(info("cuda:0", total=48 * GB), replace=True)
        assert fleet.get_metrics("cuda:0") is None
        assert fleet.explain_device("cuda:0").reason is RejectionReason.NO_METRICS
        fleet.register_device(
            info("cuda:1", vendor="amd", name="AMD Radeon RX 7900 XTX"), replace=True
        )
        assert fleet.get_metrics("cuda:1") is None
        assert fleet.explain_device("cuda:1").reason is RejectionReason.NO_METRICS
        assert fleet.get_aggregated_metrics()["devices_by_vendor"]["amd"] == 1
        assert fleet.get_aggregated_metrics()["total_memory_bytes"] == (48 + 24 + 80) * GB

    def test_unregister_forgets_everything(self, fleet: GPUClusteringManager) -> None:
        fleet.unregister_device("cuda:1")
        assert fleet.get_device("cuda:1") is None
        assert "cuda:1" not in fleet
        assert fleet.select_best_device() == "cuda:0"
        agg = fleet.get_aggregated_metrics()
        assert agg["device_count"] == 2 and agg["used_memory_bytes"] == 8 * GB
        with pytest.raises(UnknownDeviceError):
            fleet.unregister_device("cuda:1")

    def test_list_devices_sorted_by_id(self, fleet: GPUClusteringManager) -> None:
        assert [d.device_id for d in fleet.list_devices()] == ["cuda:0", "cuda:1", "h100"]
        assert len(fleet) == 3

    async def test_record_metrics_reports_duplicates(self, fleet: GPUClusteringManager) -> None:
        assert await fleet.record_metrics(metrics("cuda:0", ts=T0 + 1)) is True
        assert await fleet.record_metrics(metrics("cuda:0", ts=T0 + 1)) is False
        assert await fleet.record_metrics(metrics_dict(timestamp=T0 + 2)) is True


# -- bad input: each a clear error naming the field and the reason, state unchanged -------------


class TestBadInput:
    def expect(
        self,
        manager: GPUClusteringManager,
        call: Callable[[], object],
        error: type[BaseException],
        field: str,
        *reason: str,
    ) -> BaseException:
        before = snapshot(manager)
        with pytest.raises(error) as caught:
            call()
        assert_names(caught.value, field, *reason)
        assert snapshot(manager) == before
        return caught.value

    async def test_metrics_for_an_unregistered_device(self, fleet: GPUClusteringManager) -> None:
        before = snapshot(fleet)
        with pytest.raises(UnknownDeviceError) as caught:
            await fleet.record_metrics(metrics("cuda:9"))
        assert_names(caught.value, "device_id", "cuda:9", "not registered")
        assert snapshot(fleet) == before

    def test_same_id_with_a_different_identity(self, fleet: GPUClusteringManager) -> None:
        error = self.expect(
            fleet,
            lambda: fleet.register_device(info("cuda:0", name="NVIDIA H100", total=80 * GB)),
            DeviceConflictError,
            "device_id",
            "different identity",
            "memory_total_bytes",
            "name",
        )
        assert isinstance(error, DeviceConflictError)
        assert set(error.differences) == {"name", "memory_total_bytes"}

    @pytest.mark.parametrize(
        ("field", "value", "reason"),
        [
            ("memory_used_bytes", -1, "greater than or equal to 0"),
            ("power_watts", math.nan, "finite"),
            ("temperature_celsius", math.nan, "finite"),
            ("compute_utilization_percent", math.nan, "finite"),
            ("memory_used_bytes", 30 * GB, "exceeds"),
            ("compute_utilization_percent", 101.0, "less than or equal to 100"),
            ("compute_utilization_percent", -1.0, "greater than or equal to 0"),
            ("timestamp", math.nan, "finite"),
            ("timestamp", math.inf, "finite"),
        ],
    )
    def test_invalid_metric_values(
        self, fleet: GPUClusteringManager, field: str, value: object, reason: str
    ) -> None:
        self.expect(
            fleet,
            lambda: fleet.record_metrics_sync(metrics_dict(**{field: value})),
            ValidationError,
            field,
            reason,
        )

    def test_non_finite_timestamp_that_bypassed_validation(
        self, fleet: GPUClusteringManager
    ) -> None:
        unchecked = GPUMetrics.model_construct(**metrics_dict(timestamp=math.nan))
        self.expect(
            fleet,
            lambda: fleet.record_metrics_sync(unchecked),
            InvalidMetricsError,
            "timestamp",
            "finite",
        )

    def test_timestamp_far_in_the_future(self, fleet: GPUClusteringManager) -> None:
        self.expect(
            fleet,
            lambda: fleet.record_metrics_sync(metrics("cuda:0", ts=T0 + 3600)),
            InvalidMetricsError,
            "timestamp",
            "future",
            "skew",
        )
        # Within the allowed skew is fine.
        fleet.record_metrics_sync(metrics("cuda:0", ts=T0 + 60))

    def test_future_check_uses_wall_time_without_a_clock(self) -> None:
        manager = GPUClusteringManager()
        manager.register_device(info())
        self.expect(
            manager,
            lambda: manager.record_metrics_sync(metrics(ts=4_102_444_800.0)),  # year 2100
            InvalidMetricsError,
            "timestamp",
            "future",
        )

    def test_total_disagrees_with_the_registered_device(
        self, fleet: GPUClusteringManager
    ) -> None:
        self.expect(
            fleet,
            lambda: fleet.record_metrics_sync(metrics("cuda:0", total=48 * GB)),
            InvalidMetricsError,
            "memory_total_bytes",
            "registered with",
        )

    @pytest.mark.parametrize("strategy", ["round_robin", "", 3])
    def test_unknown_strategy(self, fleet: GPUClusteringManager, strategy: Any) -> None:
        self.expect(
            fleet,
            lambda: fleet.distribute_workload([1, 2], strategy=strategy),
            InvalidRequestError,
            "strategy",
            "unknown strategy",
            "uniform",
        )

    @pytest.mark.parametrize(
        ("capacities", "reason"),
        [
            ({"cuda:0": -1.0}, "negative"),
            ({"cuda:0": math.nan}, "finite"),
            ({"cuda:0": math.inf}, "finite"),
            ({"cuda:0": 0.0, "cuda:1": 0}, "zero"),
            ({}, "names no device"),
            ({"cuda:0": "fast"}, "number"),
        ],
    )
    def test_bad_capacities(
        self, fleet: GPUClusteringManager, capacities: dict[str, Any], reason: str
    ) -> None:
        self.expect(
            fleet,
            lambda: fleet.distribute_workload([1, 2], "capacity", capacities=capacities),
            InvalidRequestError,
            "capacities",
            reason,
        )

    def test_capacities_naming_unknown_devices(self, fleet: GPUClusteringManager) -> None:
        self.expect(
            fleet,
            lambda: fleet.distribute_workload(
                [1, 2], "capacity", capacities={"cuda:0": 1.0, "cuda:7": 1.0}
            ),
            UnknownDeviceError,
            "capacities",
            "cuda:7",
            "not registered",
        )

    @pytest.mark.parametrize("cap", [0, -1, {"cuda:0": 0}, 1.5, True])
    def test_max_items_per_device_below_one(self, fleet: GPUClusteringManager, cap: Any) -> None:
        self.expect(
            fleet,
            lambda: fleet.distribute_workload([1, 2], max_items_per_device=cap),
            InvalidRequestError,
            "max_items_per_device",
        )

    def test_caps_naming_unknown_devices(self, fleet: GPUClusteringManager) -> None:
        self.expect(
            fleet,
            lambda: fleet.distribute_workload([1, 2], max_items_per_device={"nope": 3}),
            UnknownDeviceError,
            "max_items_per_device",
            "nope",
        )

    def test_caps_that_cannot_hold_all_tasks(self, fleet: GPUClusteringManager) -> None:
        error = self.expect(
            fleet,
            lambda: fleet.distribute_workload(list(range(7)), max_items_per_device=3),
            InsufficientCapacityError,
            "max_items_per_device",
            "at most 6",
            "7",
            "1 task(s) short",
        )
        assert isinstance(error, InsufficientCapacityError) and error.shortfall == 1

    def test_tasks_but_no_devices(self) -> None:
        manager = GPUClusteringManager()
        self.expect(
            manager,
            lambda: manager.distribute_workload([1, 2, 3], "uniform"),
            DistributionError,
            "devices",
            "3 task(s)",
            "no device is registered",
        )
        assert manager.distribute_workload([], "uniform") == {}

    def test_tasks_but_no_eligible_device(self, fleet: GPUClusteringManager) -> None:
        fleet.set_cordoned("cuda:0")
        fleet.set_cordoned("cuda:1")
        self.expect(
            fleet,
            lambda: fleet.distribute_workload([1], "capacity"),
            DistributionError,
            "devices",
            "none of the 3 device(s)",
            "Cordoned: 2",
            "NoMetrics: 1",
        )

    @pytest.mark.parametrize("value", [-1, -(10**12)])
    def test_negative_min_memory_bytes(self, fleet: GPUClusteringManager, value: int) -> None:
        for call in (
            lambda: fleet.select_best_device(min_memory_bytes=value),
            lambda: fleet.rank_devices(min_memory_bytes=value),
            lambda: fleet.distribute_workload([1], min_memory_bytes=value),
        ):
            self.expect(fleet, call, InvalidRequestError, "min_memory_bytes", "negative")

    def test_unknown_vendor_in_a_request(self, fleet: GPUClusteringManager) -> None:
        self.expect(
            fleet,
            lambda: fleet.select_best_device(vendor="voodoo"),
            InvalidRequestError,
            "vendor",
            "unknown vendor",
        )

    @pytest.mark.parametrize("value", [-1, 2.5, None])
    def test_bad_reservation(self, fleet: GPUClusteringManager, value: Any) -> None:
        self.expect(
            fleet,
            lambda: fleet.set_reservation("cuda:0", value),
            InvalidRequestError,
            "reserved_bytes",
        )

    def test_reservations_naming_unknown_devices_change_nothing(
        self, fleet: GPUClusteringManager
    ) -> None:
        fleet.set_reservation("cuda:0", GB)
        self.expect(
            fleet,
            lambda: fleet.set_reservations({"cuda:1": GB, "ghost": GB}),
            UnknownDeviceError,
            "reservations",
            "ghost",
        )

    def test_every_error_is_a_value_error(self) -> None:
        assert issubclass(GPUClusteringError, ValueError)
        for error in (UnknownDeviceError, DeviceConflictError, InsufficientCapacityError):
            assert issubclass(error, GPUClusteringError)


# -- the original design's snippets, verbatim ---------------------------------------------------


class TestOriginalSnippets:
    async def test_snippets_run_unchanged(self) -> None:
        from exo.gpu.clustering import GPUClusteringManager
        from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

        tasks = [f"shard-{i}" for i in range(9)]

        manager = GPUClusteringManager()
        manager.register_device(GPUDeviceInfo(device_id="cuda:0", vendor=Vendor.NVIDIA,
                                              name="NVIDIA RTX 4090", memory_total_bytes=24_000_000_000))  # noqa: E501
        await manager.record_metrics(GPUMetrics(device_id="cuda:0", timestamp=1707043200.0,
            memory_used_bytes=8_000_000_000, memory_total_bytes=24_000_000_000,
            compute_utilization_percent=50.0, power_watts=150.0, temperature_celsius=65.0,
            clock_rate_mhz=2500))  # fmt: skip
        best = manager.select_best_device(min_memory_bytes=8_000_000_000)
        assert best == "cuda:0"

        # The capacities snippet names a second device; register it the same way.
        manager.register_device(GPUDeviceInfo(device_id="cuda:1", vendor=Vendor.NVIDIA,
                                              name="NVIDIA RTX 4090", memory_total_bytes=24_000_000_000))  # noqa: E501
        await manager.record_metrics(GPUMetrics(device_id="cuda:1", timestamp=1707043200.0,
            memory_used_bytes=8_000_000_000, memory_total_bytes=24_000_000_000,
            compute_utilization_percent=50.0, power_watts=150.0, temperature_celsius=65.0,
            clock_rate_mhz=2500))  # fmt: skip
        distribution = manager.distribute_workload(tasks=tasks, strategy="capacity",
                                                   capacities={"cuda:0": 1.0, "cuda:1": 2.0})
        # Equal scores: device order is by id, so cuda:0 takes the first run of 1/3.
        assert distribution == {"cuda:0": tasks[:3], "cuda:1": tasks[3:]}

        agg = manager.get_aggregated_metrics()   # agg["device_count"], agg["total_memory_bytes"], agg["average_utilization_percent"], ...  # noqa: E501
        assert agg["device_count"] == 2
        assert agg["total_memory_bytes"] == 48_000_000_000
        assert agg["average_utilization_percent"] == 50.0
        assert agg["used_memory_bytes"] == 16_000_000_000
        assert agg["max_temperature_celsius"] == 65.0
        assert agg["total_power_watts"] == 300.0
        assert agg["devices_by_vendor"]["nvidia"] == 2
        assert agg["oldest_sample_age_seconds"] == 0.0
