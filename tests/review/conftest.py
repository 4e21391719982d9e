from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # review_factory, also for tests/apps

from medassist.review import logic  # noqa: E402
from review_factory import make_triage_out  # noqa: E402


@pytest.fixture()
def triage_out(tmp_path):
    """A small triage OUT folder (see review_factory.make_triage_out)."""
    logic.clear_caches()
    yield make_triage_out(tmp_path)
    logic.clear_caches()
