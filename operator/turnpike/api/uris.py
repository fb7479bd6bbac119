"""What a ``model.uri`` may look like, written once for the CRD and for Python.

Every rule here is checked twice: by the API server at admission (CEL, Go's RE2)
and by the operator's Python twins for objects stored before a CRD change. The
regular expressions therefore use only syntax that both engines read the same
way, no backslashes (CEL string literals refuse ``\\.``), and they are applied
with ``fullmatch``/``search`` in Python and ``^...$``/unanchored in CEL.

A URI that passes here is one the renderer can always turn into a pod: the
renderer's own checks (:mod:`turnpike.render.repository`) are the same
predicates, kept there only as a guard.
"""

from __future__ import annotations

import re

SCHEMES = ("s3", "gs", "pvc", "hf", "http", "https")
# Go's \s is ASCII-only while pydantic's (Rust) \s is Unicode: with "[^\s]" the
# API server admitted "\v", U+00A0, U+2028 and U+0085 that the operator then
# refused. Unicode separators (Z) and control characters (Cc) mean the same set
# in both engines, and no URI needs either.
URI_PATTERN = r"^(s3|gs|pvc|hf|https?)://[^\p{Z}\p{Cc}]+$"
HTTP_URL_PATTERN = r"^https?://[^\p{Z}\p{Cc}]+$"

# user:password@ in the authority (after any "://", so "s3://https://u:p@host" counts).
USERINFO = "://[^/?#]*@"
DNS_SUBDOMAIN = "[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
# pvc://CLAIM[/PATH]: the claim is a DNS subdomain of at most 253 characters.
PVC_URI = f"pvc://{DNS_SUBDOMAIN}(/.*)?"
PVC_CLAIM_LENGTH = "pvc://[^/]{1,253}(/.*)?"
# hf://ORG/NAME[/PATH], the Hub's repository id.
HF_PART = "[A-Za-z0-9][A-Za-z0-9_.-]*"
HF_URI = f"hf://{HF_PART}/{HF_PART}(/.*)?"
# A ".." path segment would leave the mounted volume or the downloaded repository.
PARENT_SEGMENT = "/[.][.](/|$)"

REDACTED = "***"


def has_userinfo(uri: str) -> bool:
    return re.search(USERINFO, uri) is not None


def redact_userinfo(text: str) -> str:
    """``text`` with the user:password part of every URL in it replaced by ``***``.

    For messages and logs that quote a URI or an exception that might: inline
    credentials are refused at admission, but an object stored before that rule
    (or a bug) must still never print them.
    """
    return re.sub(r"://[^/?#\s@]*@", f"://{REDACTED}@", text)


def is_valid_pvc_uri(uri: str) -> bool:
    return (
        re.fullmatch(PVC_URI, uri) is not None and re.fullmatch(PVC_CLAIM_LENGTH, uri) is not None
    )


def is_valid_hf_uri(uri: str) -> bool:
    return re.fullmatch(HF_URI, uri) is not None


def leaves_the_repository(uri: str) -> bool:
    """A ``..`` segment in the path of a mounted (pvc) or downloaded (hf) repository."""
    return uri.startswith(("pvc://", "hf://")) and re.search(PARENT_SEGMENT, uri) is not None
