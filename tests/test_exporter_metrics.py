"""Prometheus output: DCGM-compatible and hw_gpu_* families, exporter health, no hardware calls."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exo.gpu.exporter.backends.base import HEALTHY, DeviceHealth
from exo.gpu.exporter.metrics import DeviceStore, ExporterMetrics, device_collectors
from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

MIB = 1024**2
GIB = 1024**3

INFO = GPUDeviceInfo(device_id="n1-nvidia-3", vendor=Vendor.NVIDIA, name="NVIDIA L4",
                     memory_total_bytes=24 * GIB, node="n1", uuid="GPU-42", index=3)
AMD = GPUDeviceInfo(device_id="n1-amd-0", vendor=Vendor.AMD, name="AMD Instinct MI300X",
                    memory_total_bytes=192 * GIB, node="n1", uuid="AMD-7", index=0)
SAMPLE = GPUMetrics(device_id="n1-nvidia-3", timestamp=1_800_000_000, memory_used_bytes=6 * GIB,
                    memory_total_bytes=24 * GIB, compute_utilization_percent=42.5,
                    power_watts=61.25, temperature_celsius=57, clock_rate_mhz=1905)


def scrape(metrics: ExporterMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: ExporterMetrics, name: str, **labels: str) -> float | None:
    wanted = tuple(sorted(labels.items()))
    return scrape(metrics).get((name, wanted))


def test_registering_never_collects() -> None:
    store = DeviceStore("n1")
    store.update(INFO, SAMPLE, HEALTHY)

    def read_hardware(_: object) -> float:
        raise AssertionError("collect() ran")

    registry = CollectorRegistry()
    for collector in device_collectors(store):
        collector.value = read_hardware
        registry.register(collector)  # describe() only: nothing is read
    with pytest.raises(AssertionError, match="collect"):
        generate_latest(registry)  # a scrape does read (from the store)


DCGM = {"gpu": "3", "UUID": "GPU-42", "device": "nvidia3", "modelName": "NVIDIA L4",
        "Hostname": "n1"}
HW = {"hw_id": "GPU-42", "hw_name": "NVIDIA L4", "hw_vendor": "nvidia", "k8s_node_name": "n1"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DCGM_FI_DEV_GPU_UTIL", 42.5),
        ("DCGM_FI_DEV_FB_USED", 6 * 1024),
        ("DCGM_FI_DEV_FB_FREE", 18 * 1024),
        ("DCGM_FI_DEV_GPU_TEMP", 57),
        ("DCGM_FI_DEV_POWER_USAGE", 61.25),
        ("DCGM_FI_DEV_SM_CLOCK", 1905),
    ],
)
def test_dcgm_compatible_families(name: str, expected: float) -> None:
    metrics = ExporterMetrics("n1", registry=CollectorRegistry())
    metrics.record_sample(INFO, SAMPLE)
    assert value(metrics, name, **DCGM) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hw_gpu_utilization_ratio", 0.425),
        ("hw_gpu_memory_usage_bytes", 6 * GIB),
        ("hw_gpu_memory_limit_bytes", 24 * GIB),
        ("hw_gpu_temperature_celsius", 57),
        ("hw_gpu_power_draw_watts", 61.25),
        ("hw_gpu_clock_frequency_hertz", 1905e6),
        ("exo_gpu_device_healthy", 1),
    ],
)
def test_opentelemetry_style_families(name: str, expected: float) -> None:
    metrics = ExporterMetrics("n1", registry=CollectorRegistry())
    metrics.record_sample(INFO, SAMPLE)
    assert value(metrics, name, **HW) == pytest.approx(expected)


def test_device_without_sample_reports_only_identity_and_health() -> None:
    metrics = ExporterMetrics("n1", registry=CollectorRegistry())
    metrics.record_sample(AMD, None, DeviceHealth(False, "AMDSMIError", "boom"))
    labels = {"hw_id": "AMD-7", "hw_name": "AMD Instinct MI300X", "hw_vendor": "amd",
              "k8s_node_name": "n1"}
    assert value(metrics, "hw_gpu_memory_limit_bytes", **labels) == 192 * GIB
    assert value(metrics, "exo_gpu_device_healthy", **labels) == 0
    assert not any(name == "DCGM_FI_DEV_GPU_UTIL" for name, _ in scrape(metrics))


def test_failed_read_serves_no_stale_value_and_removal_drops_the_device() -> None:
    metrics = ExporterMetrics("n1", registry=CollectorRegistry())
    metrics.record_sample(INFO, SAMPLE)
    assert value(metrics, "DCGM_FI_DEV_GPU_UTIL", **DCGM) == 42.5
    metrics.record_sample(INFO, None, DeviceHealth(False, "BackendTimeout", "stuck"))
    assert value(metrics, "DCGM_FI_DEV_GPU_UTIL", **DCGM) is None
    assert value(metrics, "exo_gpu_device_healthy", **HW) == 0
    metrics.store.remove(INFO.device_id)
    assert value(metrics, "hw_gpu_memory_limit_bytes", **HW) is None


def test_absent_fields_have_no_series_never_zero() -> None:
    metrics = ExporterMetrics("n1", registry=CollectorRegistry())
    adreno = SAMPLE.model_copy(update={"power_watts": None, "clock_rate_mhz": None,
                                       "temperature_celsius": None})
    metrics.record_sample(INFO, adreno)
    for name in ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_SM_CLOCK"):
        assert value(metrics, name, **DCGM) is None
    for name in ("hw_gpu_temperature_celsius", "hw_gpu_power_draw_watts",
                 "hw_gpu_clock_frequency_hertz"):
        assert value(metrics, name, **HW) is None
    assert value(metrics, "DCGM_FI_DEV_GPU_UTIL", **DCGM) == 42.5
    assert value(metrics, "hw_gpu_memory_usage_bytes", **HW) == 6 * GIB


def test_exporter_health_families() -> None:
    metrics = ExporterMetrics("n1", registry=CollectorRegistry())
    metrics.scrape_duration.labels("nvml").observe(0.003)
    metrics.scrape_success.labels("nvml").set(1)
    metrics.backend_errors.labels("nvml", "BackendTimeout").inc()
    metrics.invalid_readings.labels("nvml", "temperature_celsius").inc(2)
    metrics.api_writes.labels("status", "ok").inc(5)
    metrics.api_writes.labels("status", "conflict").inc()
    assert value(metrics, "exo_gpu_exporter_backend_scrape_duration_seconds_count",
                 backend="nvml") == 1
    assert value(metrics, "exo_gpu_exporter_backend_scrape_success", backend="nvml") == 1
    assert value(metrics, "exo_gpu_exporter_backend_errors_total", backend="nvml",
                 reason="BackendTimeout") == 1
    assert value(metrics, "exo_gpu_exporter_invalid_readings_total", backend="nvml",
                 field="temperature_celsius") == 2
    assert value(metrics, "exo_gpu_exporter_api_writes_total", kind="status", result="ok") == 5
    assert value(metrics, "exo_gpu_exporter_api_writes_total", kind="status",
                 result="conflict") == 1
