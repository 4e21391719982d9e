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


@pytest.mark.parametrize("command", [[], ["triage"], ["train"], ["models"], ["monitor"], ["adapt"]])
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


def _triage_and_send(tmp_path, models, target, *options):
    """``medassist [OPTIONS] triage IN --send TARGET`` on one radiograph without patient or study type 2 attributes."""
    inputs = tmp_path / "in"
    write_dicom_image(inputs / "bare.dcm", synthetic_radiograph(100, 80, 2), identifiers=False)
    return main([*options, "triage", str(inputs), "--out", str(tmp_path / "out"), "--device", "cpu", "--workers", "0",
                 "--quiet", "--models-dir", str(models), "--send", target])


@pytest.fixture
def pacs_stub(monkeypatch):
    """``pacs.send.send`` replaced: stores everything it is given except the SOP UIDs in ``.refuse``."""
    import importlib

    send_module = importlib.import_module("medassist.pacs.send")  # the package exports a function 'send'
    calls = []

    def fake_send(target, items, **kwargs):
        datasets = send_module._datasets(items)
        calls.append(datasets)
        report = send_module.SendReport(target=target)
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            if fake_send.refuse:
                report.failed[uid] = "C-STORE status 0xA700"
            else:
                report.stored.append(uid)
        return report

    fake_send.calls, fake_send.refuse = calls, False
    monkeypatch.setattr(send_module, "send", fake_send)
    return fake_send


def test_triage_send_builds_an_sr_from_a_source_without_type_2_attributes(tmp_path, capsys, models, pacs_stub):
    """The report: no PatientBirthDate in the radiographs, no SR built, yet 'sent 0, 0 failed' and exit 0."""
    status = _triage_and_send(tmp_path, models, "dicom://PACS@127.0.0.1:4242")
    captured = capsys.readouterr()
    assert status == 0, captured.err
    [sent] = pacs_stub.calls
    [sr] = [ds for ds in sent if ds.Modality == "SR"]
    assert sr.PatientBirthDate in (None, "") and sr.StudyID in (None, "") and "PatientBirthDate" in sr
    assert f"sent {len(sent)} result object(s) to dicom://PACS@127.0.0.1:4242, 0 failed" in captured.out


def test_triage_send_exits_3_when_a_result_cannot_be_built(tmp_path, capsys, models, pacs_stub, monkeypatch):
    from medassist.cli import EXIT_RESULTS_FAILED
    from medassist.dicom_out import sr

    def broken(rows, sources):
        raise ValueError("no SR today")

    monkeypatch.setattr(sr, "build_study_sr", broken)
    status = _triage_and_send(tmp_path, models, "dicom://PACS@127.0.0.1:4242")
    captured = capsys.readouterr()
    assert EXIT_RESULTS_FAILED == 3 and status == EXIT_RESULTS_FAILED
    assert "sent 0 result object(s) to dicom://PACS@127.0.0.1:4242, 1 failed" in captured.out
    assert "not built: " in captured.err and "no SR today" in captured.err


def test_triage_send_exits_3_when_the_pacs_refuses_a_result(tmp_path, capsys, models, pacs_stub):
    from medassist.cli import EXIT_RESULTS_FAILED

    pacs_stub.refuse = True
    status = _triage_and_send(tmp_path, models, "dicom://PACS@127.0.0.1:4242")
    captured = capsys.readouterr()
    n = len(pacs_stub.calls[0])
    assert status == EXIT_RESULTS_FAILED and n >= 1
    assert f"sent 0 result object(s) to dicom://PACS@127.0.0.1:4242, {n} failed" in captured.out
    assert captured.err.count("not stored: ") == n


def test_triage_send_to_an_unreachable_pacs_exits_3_and_never_shows_the_password(tmp_path, capsys, caplog, models):
    from conftest_orthanc import free_port

    from medassist.cli import EXIT_RESULTS_FAILED

    target = f"http://reader:hunter2-secret@127.0.0.1:{free_port()}/dicom-web"
    status = _triage_and_send(tmp_path, models, target, "-v")
    captured = capsys.readouterr()
    assert status == EXIT_RESULTS_FAILED, captured.err
    assert "medassist: error: results not sent: http://***@127.0.0.1:" in captured.err
    assert "PACS unreachable" in captured.err
    assert "hunter2" not in captured.out + captured.err + caplog.text


def test_log_lines_of_any_library_never_show_a_password(caplog):
    import logging

    from medassist.cli import logging_configured

    with logging_configured(0):
        logging.getLogger("some.library").warning("GET %s failed", "http://u:pw-secret@pacs/dicom-web/studies")
    logging.getLogger("some.library").warning("after: %s", "http://u:kept@pacs/")  # filter removed again
    assert "pw-secret" not in caplog.text and "GET http://***@pacs/dicom-web/studies failed" in caplog.text
    assert "http://u:kept@pacs/" in caplog.text


def test_triage_options_are_built_once_from_the_arguments_of_triage_and_listen(tmp_path, caplog):
    from pathlib import Path

    from medassist.cli import build_parser, triage_options
    from medassist.models.registry import WEIGHTS_DIR
    from medassist.triage import TriageOptions

    parser = build_parser()
    args = parser.parse_args(["triage", "in", "--out", "o", "--device", "cpu", "--batch-size", "3", "--workers", "0",
                              "--modality", "mr", "--quiet", "--explain", "all", "--explain-method", "occlusion",
                              "--series-timeout", "0", "--runtime", "auto", "--onnx-dir", "x", "--models-dir", "m"])
    assert triage_options(args) == TriageOptions(
        device="cpu", batch_size=3, num_workers=0, weights_dir=Path("m"), modality_override="MR", progress=False,
        explain="all", explain_method="occlusion", series_timeout=0.0, runtime="auto", onnx_dir=Path("x"))
    defaults = triage_options(parser.parse_args(["triage", "in", "--out", "o", "--workers", "2"]))
    assert defaults == TriageOptions(num_workers=2, weights_dir=WEIGHTS_DIR)  # --series-timeout not given: 120 s
    ray = triage_options(parser.parse_args(["triage", "in", "--out", "o", "--workers", "1", "--backend", "ray",
                                            "--runtime", "auto", "--onnx-dir", "x", "--ray-address", "auto",
                                            "--ray-actors", "2"]))
    assert ray == TriageOptions(weights_dir=WEIGHTS_DIR, ray_address="auto", actors=2)  # ray scores with torch
    assert "--runtime auto: --backend ray scores with torch" in caplog.text
    listen = triage_options(parser.parse_args(["listen", "--out", "o", "--device", "cpu", "--allow-any-ae"]))
    assert listen == TriageOptions(device="cpu", weights_dir=WEIGHTS_DIR, progress=False)
