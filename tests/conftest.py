import os
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings

# Two CPU cores on CI: keep property tests bounded and free of timing-based flakiness.
settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# solver='auto' keeps its batch-cost measurements on disk (the CLI turns that on): the tests, and the
# commands they start, use a folder of their own instead of the user's ~/.cache.
os.environ.setdefault("FIXEDPOINT_IR_CACHE_DIR", tempfile.mkdtemp(prefix="fixedpoint-ir-cache-"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
