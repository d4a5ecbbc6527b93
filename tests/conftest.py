"""Shared fixtures. Every server a test needs is started by a fixture here or in a sub-conftest."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# A shared, busy machine makes single examples slow now and then: correctness is what the properties
# check, so no per-example deadline (speed lives in tests/bench/).
settings.register_profile(
    "fieldgate", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("fieldgate")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_root() -> Path:
    return REPO
