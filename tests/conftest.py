import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Two CPU cores on CI: keep property tests bounded and free of timing-based flakiness.
settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
