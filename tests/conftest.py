"""Fixtures shared by several test modules. Keep this small; module-specific helpers live in their module."""

from __future__ import annotations

from pathlib import Path

import pytest

# Read-only shared material (real images, reference fixtures) beside the repository.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``<repo>/../shared``; the test is skipped when it is absent (e.g. a fresh clone)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared test material not found at {SHARED}")
    return SHARED
