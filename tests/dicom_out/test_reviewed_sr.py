"""The reviewed SR: a new version of the AI SR with the reviewer's decision on one finding
(predecessor, VERIFIED by the named reviewer, the finding as settled, the reviewer's point)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_validators import validator_problems
from review_sr_run import assert_predecessor_is

from medassist.datamodel import WorklistRow
from medassist.dicom_out.results import SourceIndex
from medassist.dicom_out.reviewed_sr import (
    REVIEWED_SR_SERIES_NUMBER,
    build_reviewed_sr,
    character_set,
    decision_tracking_uid,
    dicom_datetime,
)
from medassist.dicom_out.sr import build_study_sr
from medassist.errors import MedassistError
from medassist.review.store import open_store

EXPORT = Path(__file__).resolve().parents[2] / "samples" / "export"
DX = EXPORT / "PAT01/STUDY1/SER1/IM0001"
DECIDED_AT = "2024-05-01T09:30:12.345678Z"


def _bytes_of(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dx_ai_sr(tmp_path: Path) -> tuple[WorklistRow, pydicom.Dataset, pydicom.Dataset]:
    """A flagged radiograph finding with a saliency map, and its AI SR as read back from bytes."""
    header = pydicom.dcmread(DX, stop_before_pixels=True)
    sal = np.zeros((int(header.Rows), int(header.Columns)), np.float32)
    sal[20:30, 40:55] = 0.6
    sal[25, 47] = 1.0
    np.save(tmp_path / "dx_map.npy", sal)
    row = WorklistRow(study_uid=header.StudyInstanceUID, series_uid=header.SeriesInstanceUID, modality="DX",
                      model="fracture_xray", model_version="1.0.0", finding="fracture", score=0.83, threshold=0.5,
                      flagged=True, source_path=str(DX), saliency_path=str(tmp_path / "dx_map.npy"))
    ai_sr = pydicom.dcmread(io.BytesIO(_bytes_of(build_study_sr([row], {row.series_uid: [header]}))))
    return row, header, ai_sr


def _decide(tmp_path: Path, row: WorklistRow, decision: str, **extra):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    store = open_store(out / "decisions.sqlite")
    return store.record_decision(study_uid=row.study_uid, series_uid=row.series_uid, model=row.model,
                                 model_version=row.model_version, finding=row.finding, score=row.score,
                                 threshold=row.threshold, model_flagged=row.flagged, decision=decision,
                                 reviewer=extra.pop("reviewer", "dr.alice"), decided_at=DECIDED_AT, **extra)


def _round_trip(sr, path: Path) -> hd.sr.Comprehensive3DSR:
    path.write_bytes(_bytes_of(sr))
    return hd.sr.srread(io.BytesIO(path.read_bytes()))


def _evaluations(group) -> dict[str, str]:
    """A measurement group's qualitative evaluations: concept name code -> value code (not the
    finding type and category, which highdicom lists with them)."""
    return {e.name.value: e.value.value for e in group.get_qualitative_evaluations()
            if e.name.value not in ("121071", "276214006")}


def _algorithm_names(item) -> list[str]:
    """The TID 4019 Algorithm Name (DCM 111001) items directly under a content item."""
    return [str(c.TextValue) for c in item.get("ContentSequence") or []
            if c.ValueType == "TEXT" and c.ConceptNameCodeSequence[0].CodeValue == "111001"]


def _comments(sr) -> list:
    """The DCM 121106 Comment items anywhere in an SR's content tree."""
    found = []
    for item in sr.ContentSequence:
        found.extend(_comments(item) if "ContentSequence" in item else [])
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106":
            found.append(item)
    return found


def _checked_common(sr, ai_sr: pydicom.Dataset, header: pydicom.Dataset, path: Path) -> None:
    """What every reviewed SR carries: a new instance in the study, its own series, the predecessor,
    COMPLETE and VERIFIED by the reviewer, the person and the device as observers, valid."""
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.SOPInstanceUID != ai_sr.SOPInstanceUID
    assert sr.StudyInstanceUID == header.StudyInstanceUID == ai_sr.StudyInstanceUID
    assert sr.SeriesInstanceUID not in (ai_sr.SeriesInstanceUID, header.SeriesInstanceUID)
    assert sr.SeriesNumber == REVIEWED_SR_SERIES_NUMBER
    assert sr.PatientID == header.PatientID and sr.PatientName == header.PatientName
    assert_predecessor_is(sr, ai_sr)
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "VERIFIED")
    [verifier] = sr.VerifyingObserverSequence
    assert str(verifier.VerifyingObserverName) == "dr.alice^"
    assert verifier.VerifyingOrganization == "General Hospital"
    assert verifier.VerificationDateTime == "20240501093012.345678+0000" == dicom_datetime(DECIDED_AT)
    context = sr.content.get_observer_contexts()
    persons = [c for c in context if c.observer_type.value == "121006"]  # DCM Person
    devices = [c for c in context if c.observer_type.value == "121007"]  # DCM Device
    assert [str(p.observer_identifying_attributes.name) for p in persons] == ["dr.alice^"]
    assert len(devices) == 1
    problems = validator_problems(path)
    assert all(v == [] for v in problems.values()), problems


def test_accepted_finding_is_kept_with_the_ai_measurements_and_location(tmp_path):
    row, header, ai_sr = _dx_ai_sr(tmp_path)
    decision = _decide(tmp_path, row, "accept")
    sr = _round_trip(build_reviewed_sr(ai_sr=ai_sr, decision=decision, verifying_organization="General Hospital"),
                     tmp_path / "accept.dcm")
    _checked_common(sr, ai_sr, header, tmp_path / "accept.dcm")

    [group] = sr.content.get_image_measurement_groups()
    assert group.tracking_uid == decision_tracking_uid(decision)
    assert group.finding_type.value == "125605004"  # Fracture of bone
    assert [m.value for m in group.get_measurements()] == pytest.approx([0.83, 0.5])  # the AI's score, threshold
    for m in group.get_measurements():
        assert _algorithm_names(m[0]) == ["fracture_xray"]
    assert _evaluations(group) == {"125605004": "52101004", "MA-REVIEW": "MA-ACCEPTED"}  # Present, accepted
    rois = sr.content.get_planar_roi_measurement_groups()  # the AI's saliency peak and region, kept
    assert sorted(r.roi.graphic_type.value for r in rois) == ["POINT", "POLYLINE"]
    assert _comments(sr) == []  # no comment given, no Comment item
    # The same decision again gives the same instance.
    again = build_reviewed_sr(ai_sr=ai_sr, decision=decision, verifying_organization="General Hospital")
    assert again.SOPInstanceUID == sr.SOPInstanceUID


def test_rejected_finding_is_stated_absent_without_a_location(tmp_path):
    row, header, ai_sr = _dx_ai_sr(tmp_path)
    decision = _decide(tmp_path, row, "reject", comment="old healed fracture, nothing acute")
    sr = _round_trip(build_reviewed_sr(ai_sr=ai_sr, decision=decision, verifying_organization="General Hospital"),
                     tmp_path / "reject.dcm")
    _checked_common(sr, ai_sr, header, tmp_path / "reject.dcm")
    [group] = sr.content.get_image_measurement_groups()
    assert _evaluations(group) == {"125605004": "272519000", "MA-REVIEW": "MA-REJECTED"}  # Absent, rejected
    assert [m.value for m in group.get_measurements()] == pytest.approx([0.83, 0.5])
    assert sr.content.get_planar_roi_measurement_groups() == []


def test_corrected_finding_and_location_give_a_point_on_the_source_image(tmp_path):
    row, header, ai_sr = _dx_ai_sr(tmp_path)
    decision = _decide(tmp_path, row, "correct", corrected_finding="pneumothorax",
                       location={"slice": 0, "row": 10, "col": 7})
    sr = _round_trip(build_reviewed_sr(ai_sr=ai_sr, decision=decision, verifying_organization="General Hospital"),
                     tmp_path / "correct.dcm")
    _checked_common(sr, ai_sr, header, tmp_path / "correct.dcm")
    [group] = sr.content.get_image_measurement_groups()
    assert group.finding_type.value == "36118008"  # Pneumothorax
    assert _evaluations(group) == {"36118008": "52101004", "MA-REVIEW": "MA-CORRECTED"}
    [roi] = sr.content.get_planar_roi_measurement_groups()  # the reviewer's point only, not the AI's
    assert roi.roi.graphic_type == hd.sr.GraphicTypeValues.POINT
    assert tuple(roi.roi.value[0]) == (7.5, 10.5)  # (column, row) pixel centre
    assert roi.tracking_uid == group.tracking_uid
    assert _algorithm_names(roi[0]) == []  # marked by the reviewer, not the model
    [image] = roi.roi.ContentSequence
    ref = image.ReferencedSOPSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (header.SOPClassUID, header.SOPInstanceUID)


def test_correction_to_a_negative_label_states_the_finding_absent(tmp_path):
    row, _, ai_sr = _dx_ai_sr(tmp_path)
    decision = _decide(tmp_path, row, "correct", corrected_finding="normal")
    sr = _round_trip(build_reviewed_sr(ai_sr=ai_sr, decision=decision, verifying_organization="General Hospital"),
                     tmp_path / "normal.dcm")
    [group] = sr.content.get_image_measurement_groups()
    assert _evaluations(group) == {"125605004": "272519000", "MA-REVIEW": "MA-CORRECTED"}


def test_mr_corrected_location_is_on_the_slice_own_instance(tmp_path, write_axial_series):
    from medassist.ingest import discover_series

    src = tmp_path / "mr"
    src.mkdir()
    write_axial_series(src, modality="MR", n=5, size=24, slice_mm=5.0, pixel_mm=1.0, reverse_names=True)
    [series], _ = discover_series([src])
    row = WorklistRow(study_uid=series.study_uid, series_uid=series.series_uid, modality="MR", model="tumor_mri",
                      model_version="1.0.0", finding="tumor", score=0.91, threshold=0.5, flagged=True,
                      slices=(1,), source_path=series.source_path)
    headers = SourceIndex().headers(row)
    ai_sr = pydicom.dcmread(io.BytesIO(_bytes_of(build_study_sr([row], {row.series_uid: headers}))))
    decision = _decide(tmp_path, row, "correct", location={"slice": 3, "row": 12, "col": 5})
    sr = _round_trip(build_reviewed_sr(ai_sr=ai_sr, decision=decision, verifying_organization="General Hospital"),
                     tmp_path / "mr.dcm")
    _checked_common(sr, ai_sr, headers[0], tmp_path / "mr.dcm")
    [roi] = sr.content.get_planar_roi_measurement_groups()
    assert tuple(roi.roi.value[0]) == (5.5, 12.5)
    [image] = roi.roi.ContentSequence
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == headers[3].SOPInstanceUID
    assert "ReferencedFrameNumber" not in image.ReferencedSOPSequence[0]
    [group] = sr.content.get_image_measurement_groups()
    assert _evaluations(group) == {"tumor": "52101004", "MA-REVIEW": "MA-CORRECTED"}

    beyond = _decide(tmp_path, row, "correct", location={"slice": 5, "row": 1, "col": 1})
    with pytest.raises(MedassistError, match="slice 5, but the series has 5 slices"):
        build_reviewed_sr(ai_sr=ai_sr, decision=beyond, verifying_organization="General Hospital")


def test_refused_without_a_named_reviewer_an_organization_or_the_finding(tmp_path):
    row, _, ai_sr = _dx_ai_sr(tmp_path)
    single_user = _decide(tmp_path, row, "accept", reviewer="(unauthenticated, loopback)")
    with pytest.raises(MedassistError, match="signed-in reviewer"):
        build_reviewed_sr(ai_sr=ai_sr, decision=single_user, verifying_organization="General Hospital")
    decision = _decide(tmp_path, row, "accept")
    with pytest.raises(MedassistError, match="verifying organization"):
        build_reviewed_sr(ai_sr=ai_sr, decision=decision, verifying_organization=" ")
    other = WorklistRow(**{**row.__dict__, "model": "other_model"})
    with pytest.raises(MedassistError, match="no measurement group"):
        build_reviewed_sr(ai_sr=ai_sr, decision=_decide(tmp_path, other, "accept"),
                          verifying_organization="General Hospital")


def test_reviewer_comment_is_a_text_item_of_the_finding_group_and_never_logged(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    row, header, ai_sr = _dx_ai_sr(tmp_path)
    decision = _decide(tmp_path, row, "reject", comment="  old healed fracture,\tnothing acute\r\nno follow-up\n")
    sr = _round_trip(build_reviewed_sr(ai_sr=ai_sr, decision=decision, verifying_organization="General Hospital"),
                     tmp_path / "comment.dcm")
    _checked_common(sr, ai_sr, header, tmp_path / "comment.dcm")
    [group] = sr.content.get_image_measurement_groups()
    [comment] = [item for item in group[0].ContentSequence if item.ValueType == "TEXT"
                 and item.ConceptNameCodeSequence[0].CodeValue == "121106"]  # in the finding's TID 1501 group
    assert _comments(sr) == [comment]
    code = comment.ConceptNameCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("121106", "DCM", "Comment")
    assert comment.RelationshipType == "CONTAINS"
    assert comment.TextValue == "old healed fracture, nothing acute\r\nno follow-up"  # tab to space, ends stripped
    assert _evaluations(group) == {"125605004": "272519000", "MA-REVIEW": "MA-REJECTED"}
    assert "healed" not in caplog.text
    blank = _decide(tmp_path, row, "reject", comment=" \t ")
    sr = build_reviewed_sr(ai_sr=ai_sr, decision=blank, verifying_organization="General Hospital")
    assert _comments(sr) == []


def test_character_set_is_latin_1_when_all_text_fits_it_else_utf_8():
    assert character_set([]) == "ISO_IR 100"
    assert character_set(["SAMPLE^FRAC01", "Befund unverändert, Zürich", "ÿ"]) == "ISO_IR 100"
    assert character_set(["SAMPLE^FRAC01", "fracture → none"]) == "ISO_IR 192"
    assert character_set(["骨折なし"]) == "ISO_IR 192"
    assert character_set(["€"]) == "ISO_IR 192"  # not in ISO 8859-1


def test_latin_1_comment_keeps_iso_ir_100(tmp_path):
    row, header, ai_sr = _dx_ai_sr(tmp_path)
    assert ai_sr.SpecificCharacterSet == "ISO_IR 100"
    decision = _decide(tmp_path, row, "reject", comment="Befund unverändert")
    path = tmp_path / "latin1.dcm"
    sr = _round_trip(build_reviewed_sr(ai_sr=ai_sr, decision=decision, verifying_organization="General Hospital"),
                     path)
    _checked_common(sr, ai_sr, header, path)  # both validators: no problem at all
    assert sr.SpecificCharacterSet == "ISO_IR 100"
    assert "Befund unverändert".encode("latin-1") in path.read_bytes()
    assert [c.TextValue for c in _comments(sr)] == ["Befund unverändert"]


def test_comment_beyond_latin_1_switches_to_utf_8(tmp_path):
    row, header, ai_sr = _dx_ai_sr(tmp_path)
    text = "fracture → pneumothorax; 気胸あり"
    decision = _decide(tmp_path, row, "reject", comment=text)
    path = tmp_path / "utf8.dcm"
    sr = _round_trip(build_reviewed_sr(ai_sr=ai_sr, decision=decision, verifying_organization="General Hospital"),
                     path)
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert text.encode("utf-8") in path.read_bytes()
    assert [c.TextValue for c in _comments(sr)] == [text]
    assert sr.PatientName == header.PatientName and sr.VerificationFlag == "VERIFIED"
    # dcmtk's VR checker does not check UTF-8 text and says so; that one warning is accepted here only.
    problems = validator_problems(path)
    if "dsrdump" in problems:
        problems["dsrdump"] = [p for p in problems["dsrdump"]
                               if p != "W: The VR checker does not support this Specific Character Set: ISO_IR 192"]
    assert all(v == [] for v in problems.values()), problems


def test_patient_name_beyond_latin_1_switches_to_utf_8_without_a_comment(tmp_path):
    row, _, ai_sr = _dx_ai_sr(tmp_path)
    ai_sr.SpecificCharacterSet = "ISO_IR 192"
    ai_sr.PatientName = "山田^太郎"
    decision = _decide(tmp_path, row, "accept")
    path = tmp_path / "name.dcm"
    sr = _round_trip(build_reviewed_sr(ai_sr=ai_sr, decision=decision, verifying_organization="General Hospital"),
                     path)
    assert sr.SpecificCharacterSet == "ISO_IR 192" and str(sr.PatientName) == "山田^太郎"
    assert "山田^太郎".encode("utf-8") in path.read_bytes()
