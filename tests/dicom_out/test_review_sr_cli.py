"""``medassist review-sr``: one reviewed SR per decided finding of a run, undecided ones counted."""

from __future__ import annotations

from pathlib import Path

import pydicom
from review_sr_run import run_with_decision

from medassist.cli import EXIT_RESULTS_FAILED, main


def test_review_sr_writes_the_decided_finding_and_counts_the_rest(tmp_path, capsys):
    run, findings = run_with_decision(tmp_path)
    out = tmp_path / "reviewed"
    assert main(["review-sr", str(run), "--db", str(run / "decisions.sqlite"), "--out", str(out),
                 "--organization", "General Hospital"]) == 0
    captured = capsys.readouterr()
    assert "1 reviewed SR(s) written" in captured.out and "skipped 1 undecided finding(s)" in captured.out
    [path] = list(out.glob("*/SR_*.dcm"))
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == findings[0].study_uid and path.parent.name == ds.StudyInstanceUID
    assert ds.VerificationFlag == "VERIFIED"
    assert ds.VerifyingObserverSequence[0].VerifyingOrganization == "General Hospital"
    [ai] = list((run / "dicom" / ds.StudyInstanceUID).glob("SR_*.dcm"))
    ref = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == pydicom.dcmread(ai).SOPInstanceUID
    for name in (str(ds.PatientName), str(ds.PatientID)):  # no identifiers in what the command prints
        assert name not in captured.out + captured.err
    # Written into the run's own dicom folder, the reviewed SRs are not taken for AI SRs.
    assert main(["review-sr", str(run), "--db", str(run), "--out", str(run / "dicom"),
                 "--organization", "General Hospital"]) == 0
    assert main(["review-sr", str(run), "--db", str(run), "--out", str(run / "dicom"),
                 "--organization", "General Hospital"]) == 0
    assert len(list((run / "dicom").glob("*/SR_*.dcm"))) == 3  # two AI SRs, one reviewed SR (the same twice)


def test_review_sr_errors_name_the_problem(tmp_path, capsys, monkeypatch):
    run, _ = run_with_decision(tmp_path)
    monkeypatch.delenv("MEDASSIST_ORGANIZATION", raising=False)
    assert main(["review-sr", str(run), "--db", str(run), "--out", str(tmp_path / "o")]) == 2
    assert "--organization" in capsys.readouterr().err
    assert main(["review-sr", str(run), "--db", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "o"),
                 "--organization", "X"]) == 2
    assert "none.sqlite: no decisions database there" in capsys.readouterr().err
    for path in (run / "dicom").glob("*/SR_*.dcm"):
        path.unlink()
    monkeypatch.setenv("MEDASSIST_ORGANIZATION", "General Hospital")
    assert main(["review-sr", str(run), "--db", str(run), "--out", str(tmp_path / "o")]) == EXIT_RESULTS_FAILED
    err = capsys.readouterr().err
    assert "no AI SR holds the finding of decision 1" in err and str(run / "dicom") in err


def test_review_sr_skips_single_user_decisions(tmp_path, capsys):
    run, _ = run_with_decision(tmp_path, reviewer="(unauthenticated, loopback)")
    assert main(["review-sr", str(run), "--db", str(run), "--out", str(tmp_path / "o"),
                 "--organization", "General Hospital"]) == 0
    printed = capsys.readouterr().out
    assert "0 reviewed SR(s) written" in printed and "1 decision(s) not made by a signed-in reviewer" in printed
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.dcm"))
