"""`medassist triage` killed with SIGKILL at seeded random moments and resumed gives the same
worklist as an uninterrupted run: nothing lost, nothing duplicated, never a half-written file."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medassist.triage.journal import JOURNAL_NAME
from medassist.triage.manifest import read_manifest
from medassist.triage.testing import synthetic_radiograph, write_dicom_image
from medassist.triage.worklist import FILES_NAME

SEED = 8
N_SERIES = 30
N_KILLS = 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """30 small DX radiographs, 2 ultrasound (not applicable) and 3 truncated files."""
    root = tmp_path_factory.mktemp("crash_inputs")
    for i in range(N_SERIES):
        write_dicom_image(root / f"dx/{i:02d}.dcm", synthetic_radiograph(48, 40, i), index=i)
    for i in range(2):
        write_dicom_image(root / f"us/{i}.dcm", synthetic_radiograph(32, 32, 50 + i), modality="US", index=50 + i)
    for i in range(3):
        path = write_dicom_image(root / f"cut/{i}.dcm", synthetic_radiograph(40, 40, 60 + i), index=60 + i)
        path.write_bytes(path.read_bytes()[: -200 * (i + 1)])
    return root


def triage_command(inputs: Path, out: Path, model_dir: Path) -> list[str]:
    return [sys.executable, "-m", "medassist.cli", "triage", str(inputs), "--out", str(out),
            "--models-dir", str(model_dir), "--device", "cpu", "--workers", "1", "--batch-size", "1",
            "--explain", "none", "--quiet"]


def journal_lines(out: Path) -> int:
    try:
        return (out / JOURNAL_NAME).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def run_and_kill(command: list[str], out: Path, after_lines: int, extra_delay: float) -> bool:
    """Start triage; SIGKILL its whole process group (main process and decode worker) once the
    journal has ``after_lines`` lines plus ``extra_delay`` seconds. False if it finished first."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        while process.poll() is None and journal_lines(out) < after_lines:
            time.sleep(0.002)
        time.sleep(extra_delay)
        if process.poll() is not None:
            return False
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        return True
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def worklist(out: Path) -> list[dict]:
    return json.loads((out / "worklist.json").read_text())


def test_sigkilled_and_resumed_triage_gives_the_uninterrupted_worklist(tmp_path, inputs, model_dir):
    reference = tmp_path / "reference"
    subprocess.run(triage_command(inputs, reference, model_dir), check=True, capture_output=True, timeout=600)
    expected = worklist(reference)
    total_lines = journal_lines(reference)
    assert len(expected) == N_SERIES + 2 + 3

    input_files = sorted(str(p) for p in inputs.rglob("*") if p.is_file())
    rng = random.Random(SEED)
    out = tmp_path / "killed"
    targets = sorted(rng.sample(range(1, total_lines), N_KILLS))
    kills = 0
    for target in targets:
        kills += run_and_kill(triage_command(inputs, out, model_dir), out, target, rng.uniform(0.0, 0.05))
        if (out / "worklist.json").exists():  # a reader never sees a half-written worklist
            rows = worklist(out)
            keys = [(r["series_uid"], r["model"], r["source_path"]) for r in rows]
            assert len(keys) == len(set(keys))
        if (out / FILES_NAME).exists():  # nor a files.csv missing a file
            assert sorted(e["path"] for e in read_manifest(out / FILES_NAME)) == input_files
    done = subprocess.run(triage_command(inputs, out, model_dir), capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stderr[-2000:]
    assert kills >= N_KILLS - 1, f"only {kills} of {N_KILLS} runs were killed before they finished"
    assert worklist(out) == expected
    assert (out / "quarantine.csv").read_text() == (reference / "quarantine.csv").read_text()
    assert (out / "worklist.csv").read_text() == (reference / "worklist.csv").read_text()
    assert (out / FILES_NAME).read_text() == (reference / FILES_NAME).read_text(), "resumed to the complete list"
    print(f"\nSIGKILL at journal lines {targets} of {total_lines}: {kills} runs killed, resumed to the same worklist")
