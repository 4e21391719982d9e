"""Fixtures for the audit tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_helpers import make_shipped_model

from medassist.models.spec import ModelSpec


@pytest.fixture
def shipped(tmp_path: Path) -> tuple[Path, ModelSpec]:
    """A weights folder holding one throwaway model (spec + weights), as training writes them."""
    weights_dir = tmp_path / "weights"
    return weights_dir, make_shipped_model(weights_dir)
