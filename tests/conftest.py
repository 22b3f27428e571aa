"""Shared fixtures. No tests/__init__.py: pytest runs with --import-mode=importlib."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    """The conformance vectors of shared/conformance (copied into tests/data)."""
    return json.loads((DATA / "guarantee_vectors.json").read_text())
