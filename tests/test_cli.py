"""The medassist command: help, exit statuses, messages, and the triage/models commands."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medassist.cli import main
from medassist.triage.testing import synthetic_radiograph, write_dicom_image, write_throwaway_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    write_throwaway_model(folder)
    return folder


@pytest.mark.parametrize("command", [[], ["triage"], ["train"], ["models"]])
def test_help_of_every_command(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: medassist")
    assert "--models-dir" not in out


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "medassist.cli", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "triage" in proc.stdout


@pytest.mark.parametrize("argv", [["triage", "x"], ["triage", "--out", "o"], ["bogus"], ["triage", "x", "--out",
                                                                                       "o", "--batch-size", "0"]])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_missing_input_exits_2_with_a_message(tmp_path, capsys, models):
    missing = tmp_path / "no-such-folder"
    status = main(["triage", str(missing), "--out", str(tmp_path / "out"), "--models-dir", str(models)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip() == f"medassist: error: {missing}: no such file or directory"
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_train_with_missing_config_exits_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_triage_with_a_bad_file_exits_0_and_summarises(tmp_path, capsys, models):
    inputs = tmp_path / "in"
    write_dicom_image(inputs / "a.dcm", synthetic_radiograph(100, 80, 1), patient_id="SECRET-1")
    (inputs / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    out = tmp_path / "out"
    status = main(["triage", str(inputs), "--out", str(out), "--device", "cpu", "--workers", "0",
                   "--quiet", "--models-dir", str(models)])
    captured = capsys.readouterr()
    assert status == 0
    assert "1 series, 1 findings, " in captured.out and "1 errors" in captured.out
    assert "SECRET" not in captured.out + captured.err
    assert (out / "worklist.csv").read_text().count("\n") == 3


def test_models_lists_name_version_threshold_and_sha(capsys, models):
    spec_sha = (models / "fracture_xray.json").read_text().split('"sha256": "')[1][:12]
    assert main(["models", "--models-dir", str(models)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("fracture_xray"))
    assert "0.0.1-test" in line and "0.5000" in line and spec_sha in line and "DX,CR,RG" in line


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_cli_asks_openmp_to_sleep_before_torch_loads_unless_told_otherwise(preset):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, sys, medassist.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [preset or "PASSIVE", "False"]
