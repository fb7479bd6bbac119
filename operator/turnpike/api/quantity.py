"""Kubernetes quantities and container resource names, as the API server checks them.

A ModelDeployment's ``runtime.resources`` and ``runtime.shmSize`` end up in the
pod template. Anything the API server would refuse there must be refused when
the ModelDeployment is admitted instead: a Deployment that cannot create its
pods only says so in a ReplicaFailure condition, long after ``kubectl apply``
reported success. The patterns below are shared by the CRD (Go's RE2) and the
Python twins, so they use only syntax both engines read alike and no backslash
(CEL string literals refuse ``\\.``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from fractions import Fraction

# k8s.io/apimachinery/pkg/api/resource: a decimal number with a binary-SI suffix
# (Ki..Ei), a decimal-SI suffix (n, u, m, k, M..E) or a decimal exponent. The
# exponent is an integer (Go's parser refuses "1e1.5") and kept to two digits,
# which covers every real quantity (E is 1e18). No minus sign: a negative size,
# request or limit is refused by the API server anyway.
QUANTITY_BODY = (
    "[+]?(([0-9]+([.][0-9]*)?)|([.][0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][-+]?[0-9]{1,2}))?"
)
QUANTITY_PATTERN = f"^{QUANTITY_BODY}$"
MAX_QUANTITY_LENGTH = 64

# Resource names a container may request (k8s.io/kubernetes/pkg/apis/core/validation,
# validateContainerResourceName): the standard ones, hugepages of a size, or an
# extended resource "<DNS subdomain>/<name>" outside the kubernetes.io domain.
STANDARD_RESOURCE_PATTERN = f"^(cpu|memory|ephemeral-storage|hugepages-{QUANTITY_BODY})$"
EXTENDED_RESOURCE_PATTERN = (
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    "/([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
)
# "requests.<name>" must still be a qualified name (ResourceQuota keys), which
# leaves 244 characters for the prefix; the name part is a label (63).
EXTENDED_RESOURCE_LENGTHS = "^[^/]{1,244}/[^/]{1,63}$"
HUGEPAGES_PREFIX = "hugepages-"

_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_NUMBER = re.compile(r"[+]?([0-9]*[.]?[0-9]*)(.*)")
# CEL's isInteger(): the value fits an int64 exactly.
MAX_INT64 = 2**63 - 1
# The API server checks device counts through their milli-value, an int64 too.
MAX_DEVICE_COUNT = MAX_INT64 // 1000
_PARTS = re.compile(r"[+]?0*([0-9]*)(?:[.]([0-9]*))?(.*)")
_MAX_INT64_DIGITS = 18  # apimachinery's maxInt64Factors


def is_quantity(text: str) -> bool:
    return len(text) <= MAX_QUANTITY_LENGTH and re.fullmatch(QUANTITY_PATTERN, text) is not None


def parse_quantity(text: str) -> Fraction:
    """The exact value of a quantity (``"1.5Gi"`` → 1610612736); ValueError if it is none."""
    if not is_quantity(text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    found = _NUMBER.fullmatch(text)
    assert found is not None  # the pattern above already matched
    number, suffix = Fraction(found.group(1)), found.group(2)
    if suffix in _BINARY_SI:
        return number * (1 << _BINARY_SI[suffix])
    if suffix in _DECIMAL_SI:
        return number * Fraction(10) ** _DECIMAL_SI[suffix]
    return number * Fraction(10) ** int(suffix[1:])


def is_extended_resource(name: str) -> bool:
    """Extended resources (``nvidia.com/gpu``) and hugepages cannot be overcommitted:
    requests must equal limits, and a request needs a limit."""
    return "/" in name


def is_container_resource_name(name: str) -> bool:
    if re.fullmatch(STANDARD_RESOURCE_PATTERN, name) is not None:
        return True
    return (
        re.fullmatch(EXTENDED_RESOURCE_PATTERN, name) is not None
        and re.fullmatch(EXTENDED_RESOURCE_LENGTHS, name) is not None
        and "kubernetes.io/" not in name
        and not name.startswith("requests.")
    )


def not_overcommittable(name: str) -> bool:
    return is_extended_resource(name) or name.startswith(HUGEPAGES_PREFIX)


def requests_within_limits(requests: Mapping[str, str], limits: Mapping[str, str]) -> bool:
    """No request above its limit (keys or values that are invalid are refused elsewhere)."""
    return all(
        _compare(value, limits[name], operator.le)
        for name, value in requests.items()
        if name in limits
    )


def requests_equal_limits(requests: Mapping[str, str], limits: Mapping[str, str]) -> bool:
    """Extended resources and hugepages: a request has a limit, and the two are equal."""
    return all(
        name in limits and _compare(value, limits[name], operator.eq)
        for name, value in requests.items()
        if not_overcommittable(name)
    )


def whole_extended_resources(values: Mapping[str, str]) -> bool:
    """Devices are counted, not measured: ``nvidia.com/gpu: 500m`` means nothing."""
    return all(
        not is_quantity(value) or _whole_count(value, MAX_DEVICE_COUNT)
        for name, value in values.items()
        if is_extended_resource(name)
    )


def hugepages_in_pages(values: Mapping[str, str]) -> bool:
    """``hugepages-<size>`` amounts are whole multiples of a positive, whole page size."""
    for name, value in values.items():
        if not name.startswith(HUGEPAGES_PREFIX):
            continue
        size_text = name.removeprefix(HUGEPAGES_PREFIX)
        if not is_quantity(size_text):
            return False
        size = cel_integer(size_text)
        if size is None or size <= 0:
            return False
        if is_quantity(value):
            amount = cel_integer(value)
            if amount is None or amount % size != 0:
                return False
    return True


def hugepages_with_cpu_or_memory(requests: Mapping[str, str], limits: Mapping[str, str]) -> bool:
    """The API server refuses hugepages in a container that names neither cpu nor memory."""
    names = [*requests, *limits]
    huge = any(n.startswith(HUGEPAGES_PREFIX) for n in names)
    return not huge or "cpu" in names or "memory" in names


def _compare(a: str, b: str, relation: Callable[[Fraction, Fraction], bool]) -> bool:
    """relation(a, b) on their values; True when either is no quantity (the pattern
    refuses those, and one refusal per mistake is enough)."""
    if not (is_quantity(a) and is_quantity(b)):
        return True
    return relation(parse_quantity(a), parse_quantity(b))


def cel_integer(text: str) -> int | None:
    """What CEL's ``quantity(text).asInteger()`` gives, or None where ``isInteger()``
    is false, for a valid quantity ``text``.

    CEL answers from apimachinery's internal form, not from the value: ParseQuantity
    keeps an exact int64 (value, decimal scale) only within its precision rules,
    and an int64 with a negative scale is never an integer to it, so "489.0",
    "1000m" and "100Ti" are not integers to the API server's CEL while "1.72k" is.
    This mirrors ParseQuantity and int64Amount.AsInt64 (apimachinery v0.36) so the
    Python twin refuses exactly what admission refuses.
    """
    if text == "0":
        return 0
    found = _PARTS.fullmatch(text)
    assert found is not None and is_quantity(text)
    num, denom, suffix = found.group(1) or "0", found.group(2) or "", found.group(3)
    if suffix in _BINARY_SI:
        exponent = _BINARY_SI[suffix]
        if denom:
            return None
        mantissa = 1 << exponent
        precision = 15 - len(num) - int(exponent * 3 / 10) - 1
        scale = 0
    else:
        exponent = _DECIMAL_SI[suffix] if suffix in _DECIMAL_SI else int(suffix[1:])
        mantissa, scale = 1, exponent
        precision = _MAX_INT64_DIGITS - (len(num) + len(denom))
    scale -= len(denom)
    if precision < 0 or scale < -9:
        return None
    value = int(num + denom) * mantissa
    if value > MAX_INT64 or scale < 0:
        return None
    value *= 10**scale
    return value if value <= MAX_INT64 else None


def _whole_count(text: str, limit: int) -> bool:
    """A count CEL's isInteger() accepts, at most ``limit``."""
    value = cel_integer(text)
    return value is not None and value <= limit
