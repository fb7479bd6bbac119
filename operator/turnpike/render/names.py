"""Names of the objects rendered for a ModelDeployment.

A ModelDeployment may be called anything the API server accepts for a custom
resource (a DNS-1123 subdomain of up to 253 characters, possibly starting with
a digit or containing dots), but its children are stricter: a Service name must
be a DNS-1035 label and a Deployment name becomes the prefix of pod hostnames.
Every child is therefore named by :func:`child_name`, which leaves names that are
already valid untouched (so ``kubectl get deploy llama`` finds ``llama``) and
otherwise derives a valid name that carries a short hash of the original, so two
different ModelDeployments can never be given the same child.
"""

from __future__ import annotations

import hashlib
import re

# Kubernetes' own limits (k8s.io/apimachinery/pkg/util/validation).
MAX_NAME_LENGTH = 63
MAX_LABEL_VALUE_LENGTH = 63
# Characters of the sha256 hex digest kept in a derived name: 32 bits make an
# accidental collision between two ModelDeployments of one namespace negligible.
HASH_LENGTH = 8
# Kept short so the part of the ModelDeployment's name that survives stays readable.
MAX_SUFFIX_LENGTH = 20
# Prepended when the name does not start with a letter, as DNS-1035 requires.
LEADING_LETTER_PREFIX = "md-"

_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SUFFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def short_hash(text: str) -> str:
    """A stable digest: the same input names the same child across operator restarts
    and Python versions (unlike ``hash()``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def is_dns1035_label(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _DNS1035_LABEL.match(name) is not None


def is_label_value(value: str) -> bool:
    return len(value) <= MAX_LABEL_VALUE_LENGTH and _LABEL_VALUE.match(value) is not None


def child_name(md_name: str, suffix: str = "") -> str:
    """The DNS-1035 name of a child object of the ModelDeployment ``md_name``.

    ``md_name`` (joined with ``-suffix``) is returned as is when it is already a
    valid DNS-1035 label. Otherwise the name is lower-cased, characters outside
    ``[a-z0-9-]`` become ``-``, ``md-`` is prepended when it does not start with a
    letter, it is cut to fit, and ``-<hash>`` of the original name is appended
    (before the suffix, which always survives whole). The hash is there for
    uniqueness, not decoration: two names that share their first 60 characters,
    or that differ only in characters replaced by ``-``, still get different
    children.

    A suffixed child shares the namespace of unsuffixed ones: ``child_name("a",
    "b")`` equals ``child_name("a-b")``. Use suffixes only for kinds that are never
    named without one.
    """
    if suffix and not (len(suffix) <= MAX_SUFFIX_LENGTH and _SUFFIX.match(suffix)):
        raise ValueError(
            f"child name suffix {suffix!r} must be a DNS label of at most "
            f"{MAX_SUFFIX_LENGTH} characters"
        )
    tail = f"-{suffix}" if suffix else ""
    candidate = md_name + tail
    if is_dns1035_label(candidate):
        return candidate

    body = re.sub(r"[^a-z0-9-]", "-", md_name.lower()).strip("-")
    if not body[:1].isalpha():
        body = (LEADING_LETTER_PREFIX + body).rstrip("-")
    marker = f"-{short_hash(md_name)}"
    room = MAX_NAME_LENGTH - len(marker) - len(tail)
    return body[:room].rstrip("-") + marker + tail


def label_value(value: str) -> str:
    """``value`` made into a valid label value (at most 63 characters, alphanumeric
    at both ends), unchanged when it already is one and otherwise suffixed with a
    hash of the original so distinct values stay distinct, which matters because
    these labels select pods."""
    if is_label_value(value):
        return value
    body = re.sub(r"[^-A-Za-z0-9_.]", "-", value)
    marker = short_hash(value)
    room = MAX_LABEL_VALUE_LENGTH - len(marker) - 1
    body = re.sub(r"^[^A-Za-z0-9]+", "", body)[:room]
    body = re.sub(r"[^A-Za-z0-9]+$", "", body)
    return f"{body}-{marker}" if body else marker
