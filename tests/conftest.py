"""Fixtures for every test folder: the tests' own site key.

MEDASSIST_KEY_FILE points at a key made for this test session (in the environment, so commands the
tests start as subprocesses use it too): tests never sign with, or create, the user's real key.
MEDASSIST_USERS_FILE likewise: the reviewer accounts beside that key, never the user's real ones.
MEDASSIST_ONNX_DIR: an empty folder of this session, so triage's default runtime (auto) finds no
ONNX export of the user's and scores with torch unless a test exports (tests/models/onnx_helpers.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_KEY_DIR = Path(tempfile.mkdtemp(prefix="medassist-test-key-"))


def pytest_configure(config) -> None:
    os.environ["MEDASSIST_KEY_FILE"] = str(_KEY_DIR / "site.key")
    os.environ["MEDASSIST_USERS_FILE"] = str(_KEY_DIR / "review-users.json")
    os.environ["MEDASSIST_ONNX_DIR"] = str(_KEY_DIR / "onnx")


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_KEY_DIR, ignore_errors=True)
