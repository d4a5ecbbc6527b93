"""Shared fixtures. Every server a test needs is started by a fixture here or in a sub-conftest."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_root() -> Path:
    return REPO
