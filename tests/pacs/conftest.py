"""Fixtures for the PACS tests: one Orthanc for the session, loaded with the sample export."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conftest_orthanc  # noqa: E402  (tests/conftest_orthanc.py)

REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "samples" / "export"
# Uploaded once: 3 DX (2024-01-15..), the 2 CR and the US (2004-08-26). PAT12 is truncated on purpose.
SAMPLE_FILES = [
    "PAT01/STUDY1/SER1/IM0001",
    "PAT02/STUDY1/SER1/IM0001.dcm",
    "PAT03/STUDY1/SER1/IM0001",
    "PAT09/STUDY1/SER1/IM0001.dcm",
    "PAT10/STUDY1/SER1/IM0001",
    "PAT11/STUDY1/SER1/IM0001.dcm",
]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A running Orthanc (see tests/conftest_orthanc.py); stopped with SIGTERM at the end."""
    if not conftest_orthanc.orthanc_available():
        pytest.skip("Orthanc is not installed (/usr/sbin/Orthanc missing): "
                    "apt-get install orthanc orthanc-dicomweb orthanc-gdcm")
    server = conftest_orthanc.start_orthanc(tmp_path_factory.mktemp("orthanc"))
    sys.stderr.write(f"\n[orthanc] started in {server.startup_seconds:.2f} s on {server.url}\n")
    yield server
    took = server.stop()
    sys.stderr.write(f"\n[orthanc] stopped in {took:.2f} s\n")


@pytest.fixture(scope="session")
def orthanc_loaded(orthanc):
    """The Orthanc with the sample files stored (REST POST /instances)."""
    import requests

    for rel in SAMPLE_FILES:
        r = requests.post(f"{orthanc.url}/instances", data=(EXPORT / rel).read_bytes(), auth=orthanc.auth, timeout=60)
        assert r.status_code == 200, (rel, r.status_code, r.text[:300])
    return orthanc


@pytest.fixture
def fake_triage():
    """``run_triage``'s stand-in, recording its calls in ``.calls``."""
    calls = []

    def triage(inputs, out_dir, options):
        calls.append((list(inputs), Path(out_dir), options))
        return conftest_orthanc.fake_triage(inputs, out_dir, options)

    triage.calls = calls
    return triage

