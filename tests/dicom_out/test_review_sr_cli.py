"""``medassist review-sr``: one reviewed SR per decided finding of a run, undecided ones counted."""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom

from medassist.cli import EXIT_RESULTS_FAILED, main
from medassist.datamodel import read_worklist
from medassist.dicom_out.results import write_dicom_results
from medassist.review.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conftest_orthanc  # noqa: E402

EXPORT = Path(__file__).resolve().parents[2] / "samples" / "export"


def _run_with_decision(tmp_path: Path, reviewer: str = "dr.alice") -> tuple[Path, list]:
    """A stand-in triage run on two radiographs, its AI SRs written, one finding decided."""
    run = tmp_path / "run"
    conftest_orthanc.fake_triage([EXPORT / "PAT01", EXPORT / "PAT09"], run)
    assert write_dicom_results(run, saliency_as=()).problems == []
    findings = [r for r in read_worklist(run) if r.is_finding]
    assert len(findings) == 2
    row = findings[0]
    open_store(run / "decisions.sqlite").record_decision(
        study_uid=row.study_uid, series_uid=row.series_uid, model=row.model, model_version=row.model_version,
        finding=row.finding, score=row.score, threshold=row.threshold, model_flagged=row.flagged,
        decision="correct", corrected_finding="pneumothorax", location={"slice": 0, "row": 3, "col": 4},
        reviewer=reviewer)
    return run, findings


def test_review_sr_writes_the_decided_finding_and_counts_the_rest(tmp_path, capsys):
    run, findings = _run_with_decision(tmp_path)
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
    run, _ = _run_with_decision(tmp_path)
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
    run, _ = _run_with_decision(tmp_path, reviewer="(unauthenticated, loopback)")
    assert main(["review-sr", str(run), "--db", str(run), "--out", str(tmp_path / "o"),
                 "--organization", "General Hospital"]) == 0
    printed = capsys.readouterr().out
    assert "0 reviewed SR(s) written" in printed and "1 decision(s) not made by a signed-in reviewer" in printed
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.dcm"))
