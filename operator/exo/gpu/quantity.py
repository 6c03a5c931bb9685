"""Kubernetes quantities (``8Gi``, ``500M``, ``1e9``, ``1024``) as whole bytes, in one place.

GPUWorkload ``spec.minMemoryBytes``, the pod annotation ``gpu.exo.dev/min-memory`` and fleet
files all take memory sizes the way Kubernetes writes them. The grammar is that of
``resource.Quantity``: a decimal number with a binary suffix (Ki, Mi, Gi, Ti, Pi, Ei), a decimal
SI suffix (n, u, m, k, M, G, T, P, E) or an exponent; fractions of a byte round up.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from .errors import InvalidRequestError

__all__ = ["QUANTITY_PATTERN", "format_bytes", "parse_quantity"]

#: What ``resource.Quantity`` accepts (the pattern the Kubernetes code generators emit).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)
_NUMBER = re.compile(r"^([+-]?[0-9.]+)(.*)$")
_SUFFIX: dict[str, Decimal] = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "P": Decimal(10**15), "E": Decimal(10**18),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}


def parse_quantity(value: object, field: str) -> int:
    """Whole bytes of ``value`` (an int or a quantity string), rounded up.

    Raises ``InvalidRequestError`` naming ``field`` for anything else: another type, a string
    that is not a quantity, a negative amount.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequestError(
            field, f"must be a quantity such as 8Gi or a number of bytes, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidRequestError(field, f"must not be negative, got {value}")
        return value
    text = value.strip()
    match = _NUMBER.match(text)
    if not _QUANTITY.match(text) or match is None:
        raise InvalidRequestError(
            field, f"{value!r} is not a Kubernetes quantity (for example 8Gi, 500M, 1e9)")
    number, suffix = match.groups()
    try:
        # "E" alone is exa and "Ei" exbi; "e"/"E" followed by digits is an exponent.
        amount = Decimal(number) * _SUFFIX[suffix] if suffix in _SUFFIX else \
            Decimal(number + suffix)
    except (InvalidOperation, KeyError):
        raise InvalidRequestError(field, f"{value!r} is not a Kubernetes quantity") from None
    if amount < 0:
        raise InvalidRequestError(field, f"must not be negative, got {value!r}")
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))


def format_bytes(value: int) -> str:
    """Bytes for people: binary units with one decimal (``80.0 GiB``)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"
