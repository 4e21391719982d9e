from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "review"))  # review_factory

from medassist.review import logic  # noqa: E402
from review_factory import make_triage_out  # noqa: E402


@pytest.fixture()
def triage_out(tmp_path):
    logic.clear_caches()
    yield make_triage_out(tmp_path)
    logic.clear_caches()
