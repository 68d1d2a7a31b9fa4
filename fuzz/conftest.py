"""Fuzz targets run as part of the suite with a bounded number of examples.

KBS_FUZZ_EXAMPLES raises the count for a long run (`make fuzz`).  The database is off so
runs are reproducible from the seed hypothesis prints on failure.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("KBS_FUZZ_EXAMPLES", "300"))

# In CI the examples are derandomized, so a run is reproducible and a landing is never decided by
# chance; `make fuzz` and local runs explore new examples every time.
settings.register_profile("fuzz", max_examples=EXAMPLES, deadline=None, database=None,
                          derandomize=bool(os.environ.get("CI")),
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("fuzz")
