"""The independent DICOM validators from Debian, run on a written file, shared by the dicom_out tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def validator_problems(path: Path) -> dict[str, list[str]]:
    """dciodvfy's (dicom3tools) Error lines and dsrdump's (dcmtk) error/warning lines, with its exit
    status, for a file; a validator that is not installed has no key."""
    found = {}
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
        found["dciodvfy"] = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    if shutil.which("dsrdump"):
        out = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
        bad = [line for line in out.stderr.splitlines() if line.startswith(("E:", "F:", "W:"))]
        found["dsrdump"] = bad + ([f"exit status {out.returncode}"] if out.returncode else [])
    return found
