"""Helpers for the dicom_out tests: sample paths, a worklist made by the run_triage stand-in."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conftest_orthanc  # noqa: E402  (tests/conftest_orthanc.py: fake_triage)

REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "samples" / "export"


@pytest.fixture(scope="session")
def triaged(tmp_path_factory):
    """A results folder: the stand-in triage run on PAT01 (DX), PAT09 (CR, JPEG) and PAT11 (US)."""
    out = tmp_path_factory.mktemp("triaged")
    inputs = [EXPORT / "PAT01", EXPORT / "PAT09", EXPORT / "PAT11"]
    records = conftest_orthanc.fake_triage(inputs, out)
    return out, records

