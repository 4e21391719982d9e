"""A triage run with one reviewed finding, for the reviewed-SR tests (``medassist review-sr``, the send
to a PACS): the stand-in triage on two radiographs, their AI SRs, one decision in the run's log."""

from __future__ import annotations

from pathlib import Path

from conftest_orthanc import fake_triage
from pydicom import Dataset

from medassist.datamodel import WorklistRow, read_worklist
from medassist.dicom_out.results import write_dicom_results
from medassist.review.store import open_store

EXPORT = Path(__file__).resolve().parents[1] / "samples" / "export"


def assert_predecessor_is(sr: Dataset, ai_sr: Dataset) -> None:
    """``sr``'s Predecessor Documents Sequence names exactly ``ai_sr`` (study, series, instance)."""
    [study] = sr.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == ai_sr.StudyInstanceUID
    [series] = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == ai_sr.SeriesInstanceUID
    [ref] = series.ReferencedSOPSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (ai_sr.SOPClassUID, ai_sr.SOPInstanceUID)


def run_with_decision(tmp_path: Path, reviewer: str = "dr.alice",
                      comment: str | None = None) -> tuple[Path, list[WorklistRow]]:
    """``tmp_path/run``: the stand-in triage of PAT01 (DX) and PAT09 (CR) with its AI SRs written, and
    the first finding corrected by ``reviewer`` to pneumothorax at a marked location (slice 0, row 3,
    column 4), with ``comment``; returns the run folder and its two findings."""
    run = tmp_path / "run"
    fake_triage([EXPORT / "PAT01", EXPORT / "PAT09"], run)
    assert write_dicom_results(run, saliency_as=()).problems == []
    findings = [r for r in read_worklist(run) if r.is_finding]
    assert len(findings) == 2
    row = findings[0]
    open_store(run / "decisions.sqlite").record_decision(
        study_uid=row.study_uid, series_uid=row.series_uid, model=row.model, model_version=row.model_version,
        finding=row.finding, score=row.score, threshold=row.threshold, model_flagged=row.flagged,
        decision="correct", corrected_finding="pneumothorax", location={"slice": 0, "row": 3, "col": 4},
        comment=comment, reviewer=reviewer)
    return run, findings
