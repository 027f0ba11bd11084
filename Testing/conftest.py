"""Shared pytest fixtures: where the real data lives, and the small fixtures bundled in Testing/Data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "Testing" / "Data"
SHARED_DATA = Path(os.environ.get("HILA_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared(*parts: str) -> Path:
    """A path under ../shared/data; skips the test with a clear reason when it is not there."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (set HILA_SHARED_DATA or place shared/data beside the checkout)")
    return p


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real data not available: {SHARED_DATA}")
    return SHARED_DATA
