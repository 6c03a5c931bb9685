"""Kubernetes quantities as bytes: one parser for workloads, pod annotations and fleet files."""

from __future__ import annotations

import pytest

from exo.gpu.errors import InvalidRequestError
from exo.gpu.quantity import format_bytes, parse_quantity

GIB = 2**30


@pytest.mark.parametrize(("value", "expected"), [
    ("8Gi", 8 * GIB), ("500M", 500 * 10**6), ("1e9", 10**9), ("1E3", 1000), ("1024", 1024),
    (4096, 4096), ("0", 0), ("1.5Gi", 3 * GIB // 2), ("100m", 1), ("1k", 1000),
    ("2Ei", 2 * 2**60), (" 16Gi ", 16 * GIB), ("+1Ki", 1024), ("0.5", 1),
])
def test_valid(value: object, expected: int) -> None:
    assert parse_quantity(value, "spec.minMemoryBytes") == expected


@pytest.mark.parametrize(("value", "reason"), [
    ("-1Gi", "negative"), (-5, "negative"), ("8GB", "not a Kubernetes quantity"),
    ("1K", "not a Kubernetes quantity"), ("Gi", "not a Kubernetes quantity"),
    ("", "not a Kubernetes quantity"), ("NaN", "not a Kubernetes quantity"),
    (True, "must be a quantity"), (1.5, "must be a quantity"), (None, "must be a quantity"),
    ([8], "must be a quantity"),
])
def test_invalid_names_the_field_and_reason(value: object, reason: str) -> None:
    with pytest.raises(InvalidRequestError) as error:
        parse_quantity(value, "spec.minMemoryBytes")
    assert error.value.field == "spec.minMemoryBytes"
    assert reason in error.value.reason


@pytest.mark.parametrize(("value", "text"), [
    (0, "0 B"), (1023, "1023 B"), (GIB, "1.0 GiB"), (80 * GIB, "80.0 GiB"),
    (3 * 2**40 // 2, "1.5 TiB"), (5 * 2**20, "5.0 MiB"),
])
def test_format_bytes(value: int, text: str) -> None:
    assert format_bytes(value) == text
