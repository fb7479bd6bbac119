"""User strings in ``command``, ``args`` and ``env[].value`` must stay literal.

The kubelet expands ``$(NAME)`` in those three places with the container's
environment, Secrets included: a model URI ``s3://bucket/$(AWS_SECRET_ACCESS_KEY)``
would put the key into Triton's arguments and into the download container's log.
``$$`` is the escape, so every ``$`` that the kubelet would read as the start of
a reference or of an escape (one followed by ``(`` or ``$``) is doubled. A ``$``
followed by anything else is already passed through unchanged, so ordinary
strings (``a$b``) keep their spelling in the pod spec.

The operator renders no ``$(NAME)`` references of its own; one added later must
be written outside :func:`literal`.
"""

from __future__ import annotations

import re

_EXPANDED_DOLLAR = re.compile(r"\$(?=[($])")


def literal(text: str) -> str:
    """``text`` escaped so that the kubelet's expansion gives ``text`` back exactly."""
    return _EXPANDED_DOLLAR.sub("$$", text)
