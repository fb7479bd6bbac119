"""Hypothesis profiles for the property-based tests (tests/unit/test_properties.py).

``turnpike-ci`` (the default) runs a few thousand examples in all, derandomized
so a CI run is reproducible; ``turnpike-fuzz`` (``make fuzz``) runs the same
properties with fresh random inputs and ≥ 100,000 examples in all. Select one
with TURNPIKE_HYPOTHESIS_PROFILE. Each property asks for a share of the
profile's max_examples (see ``examples`` in test_properties.py).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,  # the machine is shared with builds; timing is not a property
    "database": None,  # nothing written into the tree; failures print a reproduction blob
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("turnpike-ci", max_examples=100, derandomize=True, **_COMMON)
settings.register_profile("turnpike-fuzz", max_examples=4000, **_COMMON)
settings.load_profile(os.environ.get("TURNPIKE_HYPOTHESIS_PROFILE", "turnpike-ci"))
