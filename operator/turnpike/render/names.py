"""Names of the objects rendered for a ModelDeployment.

A ModelDeployment may be called anything the API server accepts for a custom
resource (a DNS-1123 subdomain of up to 253 characters, possibly starting with
a digit or containing dots), but its children are stricter: a Service name must
be a DNS-1035 label and a Deployment name becomes the prefix of pod hostnames.
Every child is therefore named by :func:`child_name`, which leaves names that are
already valid untouched (so ``kubectl get deploy llama`` finds ``llama``) and
otherwise derives a valid name that carries a short hash of the original.

The mapping is injective: a derived name always ends in ``-<8 hex digits>``, and
a name that already ends that way is never kept as it is (it is derived too).
Without that rule ``a.b`` (derived: ``a-b-2e7336dc``) and a ModelDeployment
literally called ``a-b-2e7336dc`` would share one Deployment. Pod selector labels
(:func:`label_value`) follow the same rule.
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

# Matched with fullmatch: re.match with "$" also accepts a trailing newline.
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_SUFFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
# How every derived name ends; reserved, so no name kept as is can look like one.
_DERIVED_ENDING = re.compile(rf"-[0-9a-f]{{{HASH_LENGTH}}}\Z")


def short_hash(text: str) -> str:
    """A stable digest: the same input names the same child across operator restarts
    and Python versions (unlike ``hash()``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def is_dns1035_label(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _DNS1035_LABEL.fullmatch(name) is not None


def is_label_value(value: str) -> bool:
    return len(value) <= MAX_LABEL_VALUE_LENGTH and _LABEL_VALUE.fullmatch(value) is not None


def looks_derived(name: str) -> bool:
    """Whether ``name`` has the shape of a derived name (``...-<8 hex digits>``)."""
    return _DERIVED_ENDING.search(name) is not None


def child_name(md_name: str, suffix: str = "") -> str:
    """The DNS-1035 name of a child object of the ModelDeployment ``md_name``.

    ``md_name`` (joined with ``-suffix``) is returned as is when it is already a
    valid DNS-1035 label and does not itself end like a derived name (``-`` and
    eight hex digits, e.g. ``model-20261201``). Otherwise the name is lower-cased,
    characters outside ``[a-z0-9-]`` become ``-``, ``md-`` is prepended when it
    does not start with a letter, it is cut to fit, and ``-<hash>`` of the
    original name is appended
    (before the suffix, which always survives whole). The hash is there for
    uniqueness, not decoration: two names that share their first 60 characters,
    or that differ only in characters replaced by ``-``, still get different
    children.

    A suffixed child shares the namespace of unsuffixed ones: ``child_name("a",
    "b")`` equals ``child_name("a-b")``. Use suffixes only for kinds that are never
    named without one.
    """
    if suffix and not (len(suffix) <= MAX_SUFFIX_LENGTH and _SUFFIX.fullmatch(suffix)):
        raise ValueError(
            f"child name suffix {suffix!r} must be a DNS label of at most "
            f"{MAX_SUFFIX_LENGTH} characters"
        )
    tail = f"-{suffix}" if suffix else ""
    candidate = md_name + tail
    if is_dns1035_label(candidate) and not looks_derived(md_name):
        return candidate

    body = re.sub(r"[^a-z0-9-]", "-", md_name.lower()).strip("-")
    if not body[:1].isalpha():
        body = (LEADING_LETTER_PREFIX + body).rstrip("-")
    marker = f"-{short_hash(md_name)}"
    room = MAX_NAME_LENGTH - len(marker) - len(tail)
    return body[:room].rstrip("-") + marker + tail


def role_name(md_name: str, role: str) -> str:
    """The name of a child that plays ``role`` beside another child of the same kind
    that already carries the plain name, e.g. the leaders' Service of a multi-node
    ModelDeployment beside the headless Service LeaderWorkerSet names after it.

    Always derived (``<body>-<role>-<hash>``, the hash of ``md_name/role``), so it
    has the reserved ending no name kept as is can have, and no other
    ModelDeployment's child can take it (a ``/`` never occurs in a name).
    """
    if not (len(role) <= MAX_SUFFIX_LENGTH and _SUFFIX.fullmatch(role)):
        raise ValueError(
            f"role {role!r} must be a DNS label of at most {MAX_SUFFIX_LENGTH} characters"
        )
    body = re.sub(r"[^a-z0-9-]", "-", md_name.lower()).strip("-")
    if not body[:1].isalpha():
        body = (LEADING_LETTER_PREFIX + body).rstrip("-")
    tail = f"-{role}-{short_hash(f'{md_name}/{role}')}"
    return body[: MAX_NAME_LENGTH - len(tail)].rstrip("-") + tail


def label_value(value: str) -> str:
    """``value`` made into a valid label value (at most 63 characters, alphanumeric
    at both ends), unchanged when it already is one (and does not end like a
    derived value) and otherwise suffixed with a hash of the original so distinct
    values stay distinct, which matters because these labels select pods."""
    if is_label_value(value) and not looks_derived(value):
        return value
    body = re.sub(r"[^-A-Za-z0-9_.]", "-", value)
    marker = short_hash(value)
    room = MAX_LABEL_VALUE_LENGTH - len(marker) - 1
    body = re.sub(r"^[^A-Za-z0-9]+", "", body)[:room]
    body = re.sub(r"[^A-Za-z0-9]+$", "", body)
    # A value with nothing left to keep still gets a letter before the hash, so it
    # has the derived shape too (a bare hash could be someone's name as is).
    return f"{body or 'x'}-{marker}"
