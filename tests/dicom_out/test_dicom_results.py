"""SR, secondary capture and SEG from a worklist: contents, references, and round trips through bytes."""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_validators import validator_problems

from medassist.datamodel import WorklistRow, read_worklist
from medassist.dicom_out.results import SourceIndex, write_dicom_results
from medassist.dicom_out.sc import build_saliency_sc
from medassist.dicom_out.seg import build_saliency_seg
from medassist.dicom_out.sr import build_study_sr
from medassist.errors import MedassistError

EXPORT = Path(__file__).resolve().parents[2] / "samples" / "export"
DX = EXPORT / "PAT01/STUDY1/SER1/IM0001"


def content_items(ds):
    """Every SR content item under ``ds`` (depth first)."""
    for item in ds.get("ContentSequence") or []:
        yield item
        yield from content_items(item)


def concept(item) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def roundtrip(ds) -> pydicom.Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def dx_row(**changes) -> tuple[WorklistRow, pydicom.Dataset]:
    header = pydicom.dcmread(DX, stop_before_pixels=True)
    row = WorklistRow(study_uid=header.StudyInstanceUID, series_uid=header.SeriesInstanceUID, modality="DX",
                      model="fracture_xray", model_version="1.0.0", finding="fracture", score=0.83,
                      threshold=0.5, flagged=True, source_path=str(DX))
    return dataclasses.replace(row, **changes), header


def test_sr_round_trip_through_bytes():
    row, header = dx_row()
    sr = build_study_sr([row], {row.series_uid: [header]})
    back = roundtrip(sr)

    # Same study and patient as the source, a new series, an SR of the right class.
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert back.StudyInstanceUID == header.StudyInstanceUID
    assert back.SeriesInstanceUID != header.SeriesInstanceUID
    for keyword in ("PatientID", "PatientName", "PatientSex", "AccessionNumber", "StudyDate", "StudyID"):
        assert back.get(keyword) == header.get(keyword), keyword
    assert back.VerificationFlag == "UNVERIFIED"
    # Evidence lists the source instance.
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID

    # TID 1500 root, TID 4019 algorithm identification, the finding and its values.
    assert concept(back) == ("126000", "DCM")
    items = list(content_items(back))
    texts = {concept(i): i.TextValue for i in items if i.ValueType == "TEXT"}
    assert texts[("111001", "DCM")] == "fracture_xray"
    assert texts[("111003", "DCM")] == "1.0.0"
    numbers = {concept(i): float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM"}
    assert numbers[("MA-SCORE", "99MEDASSIST")] == pytest.approx(0.83)
    assert numbers[("MA-THRESHOLD", "99MEDASSIST")] == pytest.approx(0.5)
    codes = {concept(i): (i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodingSchemeDesignator)
             for i in items if i.ValueType == "CODE"}
    assert codes[("121071", "DCM")] == ("125605004", "SCT")  # Finding = Fracture of bone
    assert codes[("125605004", "SCT")] == ("52101004", "SCT")  # Fracture of bone = Present
    refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items if i.ValueType == "IMAGE"]
    assert refs == [header.SOPInstanceUID]

    # highdicom reads it back as a measurement report with the same content.
    parsed = hd.sr.Comprehensive3DSR.from_dataset(back)
    groups = parsed.content.get_image_measurement_groups()
    assert len(groups) == 1
    assert groups[0].finding_type.value == "125605004"
    assert [m.value for m in groups[0].get_measurements()] == pytest.approx([0.83, 0.5])
    assert groups[0].source_images[0].referenced_sop_instance_uid == header.SOPInstanceUID


def test_sr_carries_the_validation_rate_at_the_score_for_a_shipped_version(tmp_path):
    from medassist.models.registry import spec_by_name
    from medassist.review.logic import finding_confidence

    spec = spec_by_name("fracture_xray")
    row, header = dx_row(model_version=spec.version, score=0.9, threshold=spec.threshold)
    expected = finding_confidence(row)
    assert expected is not None
    sr = build_study_sr([row], {row.series_uid: [header]})
    numbers = {concept(i): float(i.MeasuredValueSequence[0].NumericValue)
               for i in content_items(roundtrip(sr)) if i.ValueType == "NUM"}
    assert numbers[("MA-VALRATE", "99MEDASSIST")] == pytest.approx(expected.rate)
    low, high = numbers[("MA-VALRATE-LO", "99MEDASSIST")], numbers[("MA-VALRATE-HI", "99MEDASSIST")]
    assert (low, high) == pytest.approx(expected.ci) and low < expected.rate < high
    old_row, _ = dx_row()  # a version that ships no table: no rate, never a made-up one
    old = {concept(i) for i in content_items(roundtrip(build_study_sr([old_row], {row.series_uid: [header]})))}
    assert ("MA-VALRATE", "99MEDASSIST") not in old
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    dsrdump = shutil.which("dsrdump")
    if dsrdump:
        result = subprocess.run([dsrdump, str(tmp_path / "sr.dcm")], capture_output=True, text=True)
        assert result.returncode == 0 and "Validation positive rate at this score" in result.stdout


def test_sr_absent_when_not_flagged_and_uids_follow_the_results():
    row, header = dx_row(score=0.2, flagged=False)
    sr = build_study_sr([row], {row.series_uid: [header]})
    items = list(content_items(sr))
    evaluation = [i for i in items if i.ValueType == "CODE" and concept(i) == ("125605004", "SCT")][0]
    assert evaluation.ConceptCodeSequence[0].CodeValue == "272519000"  # Absent
    again = build_study_sr([row], {row.series_uid: [header]})
    assert again.SOPInstanceUID == sr.SOPInstanceUID  # same results, same instance
    other_row, _ = dx_row(score=0.9, flagged=True)
    assert build_study_sr([other_row], {row.series_uid: [header]}).SOPInstanceUID != sr.SOPInstanceUID


def test_sr_refuses_rows_from_two_studies():
    row, header = dx_row()
    other, _ = dx_row(study_uid="1.2.3")
    with pytest.raises(ValueError):
        build_study_sr([row, other], {row.series_uid: [header]})


def test_secondary_capture_round_trip(tmp_path):
    row, header = dx_row()
    saliency = np.zeros((1, header.Rows, header.Columns), np.float32)
    saliency[0, 100:150, 200:260] = 1.0
    [sc] = build_saliency_sc(row, SourceIndex(), saliency)
    back = roundtrip(sc)
    assert back.StudyInstanceUID == header.StudyInstanceUID
    assert back.PatientID == header.PatientID
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert back.PhotometricInterpretation == "RGB"
    pixels = back.pixel_array
    assert pixels.shape == (header.Rows, header.Columns, 3)
    outside, inside = pixels[10, 10], pixels[120, 230]
    assert outside[0] == outside[1] == outside[2]  # grey where the map is zero
    assert min(int(inside[0]), int(inside[1])) > int(inside[2]) + 25  # tinted (inferno's pale yellow) where it is high
    assert "fracture_xray" in back.ImageComments


def test_segmentation_round_trip():
    row, header = dx_row()
    saliency = np.zeros((1, header.Rows, header.Columns), np.float32)
    saliency[0, 100:150, 200:260] = 1.0
    saliency[0, 150:160, 200:260] = 0.5
    seg = build_saliency_seg(row, [header], saliency)
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    back = hd.seg.segread(io.BytesIO(buffer.getvalue()))
    assert back.StudyInstanceUID == header.StudyInstanceUID
    assert back.SegmentationType == "FRACTIONAL"
    ref = back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == header.SOPInstanceUID
    description = back.SegmentSequence[0]
    assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == "125605004"
    assert description.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "fracture_xray"
    pixels = back.pixel_array.astype(np.float32) / float(back.MaximumFractionalValue)
    pixels = pixels.reshape(header.Rows, header.Columns)
    assert pixels[120, 230] == pytest.approx(1.0)
    assert pixels[155, 230] == pytest.approx(0.5, abs=1 / 255)
    assert pixels[10, 10] == 0.0


def test_write_dicom_results_from_a_worklist(triaged, tmp_path):
    results_dir, records = triaged
    rows = read_worklist(results_dir)
    assert len(rows) == 3 and sum(r.is_finding for r in rows) == 2  # the US has an error row
    report = write_dicom_results(results_dir, tmp_path / "dicom", saliency_as=("sc", "seg"))
    assert report.problems == []
    assert (len(report.sr), len(report.sc), len(report.seg)) == (2, 2, 2)
    by_study = {r.study_uid: r for r in rows if r.is_finding}
    for path in report.paths:
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID in by_study
        assert Path(path).parent.name == ds.StudyInstanceUID
    # Writing again gives the same files (UIDs come from the results).
    again = write_dicom_results(results_dir, tmp_path / "dicom", saliency_as=("sc", "seg"))
    assert sorted(map(str, again.paths)) == sorted(map(str, report.paths))


def test_worklist_csv_is_read_like_the_json(triaged, tmp_path):
    results_dir, _ = triaged
    csv_only = tmp_path / "csv"
    csv_only.mkdir()
    (csv_only / "worklist.csv").write_text((results_dir / "worklist.csv").read_text())
    assert read_worklist(csv_only) == read_worklist(results_dir)
    with pytest.raises(MedassistError, match="no worklist"):
        read_worklist(tmp_path / "empty")


def test_saliency_of_the_wrong_shape_is_a_problem_not_a_crash(triaged, tmp_path):
    results_dir, _ = triaged
    rows = [r for r in read_worklist(results_dir) if r.is_finding][:1]
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((7, 9), np.float32))
    rows[0] = dataclasses.replace(rows[0], saliency_path=str(bad))
    report = write_dicom_results(results_dir, tmp_path / "dicom", rows=rows)
    assert len(report.sr) == 1 and report.sc == []
    assert "does not match the source grid" in report.problems[0].reason


def test_multi_slice_series_gives_multiframe_seg_and_one_capture_per_listed_slice(tmp_path, write_axial_series):
    from medassist.ingest import discover_series

    src = tmp_path / "ct"
    src.mkdir()
    write_axial_series(src, modality="CT", n=3, size=16, slice_mm=2.0, pixel_mm=0.5)
    [series], _ = discover_series([src])
    saliency = np.zeros((3, 16, 16), np.float32)
    saliency[2, 4:8, 4:8] = 3.0
    np.save(tmp_path / "map.npy", saliency)
    row = WorklistRow(study_uid=series.study_uid, series_uid=series.series_uid, modality="CT", model="m",
                      model_version="2", finding="nodule", score=0.7, threshold=0.5, flagged=True,
                      saliency_path=str(tmp_path / "map.npy"), source_path=series.source_path)
    report = write_dicom_results(tmp_path, tmp_path / "out", saliency_as=("sc", "seg"), rows=[row])
    assert report.problems == []
    assert len(report.sc) == 1  # no slices listed: the slice where the map peaks
    sc = pydicom.dcmread(report.sc[0])
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(series.paths[2]).SOPInstanceUID
    seg = hd.seg.segread(report.seg[0])
    assert int(seg.NumberOfFrames) == 3
    assert seg.FrameOfReferenceUID == pydicom.dcmread(series.paths[0]).FrameOfReferenceUID
    row = dataclasses.replace(row, slices=(0, 2))
    assert len(write_dicom_results(tmp_path, tmp_path / "out2", rows=[row]).sc) == 2


def test_a_volume_map_of_its_flagged_slices_only_gives_capture_and_seg_on_the_full_series(tmp_path, write_axial_series):
    from medassist.ingest import discover_series

    src = tmp_path / "ct"
    src.mkdir()
    write_axial_series(src, modality="CT", n=5, size=16, slice_mm=2.0, pixel_mm=0.5)
    [series], _ = discover_series([src])
    maps = np.zeros((2, 16, 16), np.float32)  # as triage writes a volume: one plane per flagged slice (1, 3)
    maps[0, 2:4, 2:4], maps[1, 9:12, 9:12] = 1.0, 2.0
    np.save(tmp_path / "map.npy", maps)
    row = WorklistRow(study_uid=series.study_uid, series_uid=series.series_uid, modality="CT", model="m",
                      model_version="2", finding="nodule", score=0.7, threshold=0.5, flagged=True, slices=(1, 3),
                      saliency_path=str(tmp_path / "map.npy"), source_path=series.source_path)
    report = write_dicom_results(tmp_path, tmp_path / "out", saliency_as=("sc", "seg"), rows=[row])
    assert report.problems == [] and len(report.sc) == 2 and len(report.seg) == 1
    captured = {pydicom.dcmread(p).SourceImageSequence[0].ReferencedSOPInstanceUID for p in report.sc}
    assert captured == {pydicom.dcmread(series.paths[i]).SOPInstanceUID for i in (1, 3)}
    seg = hd.seg.segread(report.seg[0])
    assert int(seg.NumberOfFrames) == 5  # on the full series, empty planes where nothing was flagged


def _bare_radiograph(folder: Path, **overrides) -> Path:
    """A DX file as a bare export writes it: none of the type 2 patient and study attributes
    (``results.TYPE2_FROM_SOURCE``), or ``overrides`` (keyword -> value) in their place."""
    from medassist.dicom_out.results import TYPE2_FROM_SOURCE
    from medassist.triage.testing import synthetic_radiograph, write_dicom_image

    path = write_dicom_image(folder / "bare.dcm", synthetic_radiograph(48, 40, 3), identifiers=False)
    ds = pydicom.dcmread(path)
    assert not any(keyword in ds for keyword in TYPE2_FROM_SOURCE)
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("overrides", [{}, {"PatientSex": "U", "PatientBirthDate": "1970-01-01", "StudyTime": "noon"}],
                         ids=["missing", "malformed"])
def test_results_from_a_source_without_type_2_attributes(tmp_path, overrides):
    """Real exports leave out birth date, sex, study ID, accession...: SR, SC and SEG are still made,
    with those attributes present and empty (type 2), and the SR is valid (dciodvfy, when installed)."""
    import shutil

    from medassist.dicom_out.results import TYPE2_FROM_SOURCE
    from medassist.ingest import discover_series

    source = _bare_radiograph(tmp_path, **overrides)
    [series], _ = discover_series([source])
    saliency = np.zeros((1, 48, 40), np.float32)
    saliency[0, 10:20, 10:20] = 1.0
    np.save(tmp_path / "map.npy", saliency)
    row = WorklistRow(study_uid=series.study_uid, series_uid=series.series_uid, modality="DX", model="fracture_xray",
                      model_version="1.0.0", finding="fracture", score=0.9, threshold=0.5, flagged=True,
                      saliency_path=str(tmp_path / "map.npy"), source_path=series.source_path)
    report = write_dicom_results(tmp_path, tmp_path / "dicom", saliency_as=("sc", "seg"), rows=[row])

    assert report.problems == []
    assert (len(report.sr), len(report.sc), len(report.seg)) == (1, 1, 1)
    for path in report.paths:
        ds = pydicom.dcmread(path)
        for keyword in TYPE2_FROM_SOURCE:
            assert keyword in ds and ds[keyword].value in (None, ""), (path.name, keyword)
    assert all(k not in pydicom.dcmread(source) for k in TYPE2_FROM_SOURCE if k not in overrides)  # source untouched
    if shutil.which("dciodvfy"):
        assert validator_problems(report.sr[0])["dciodvfy"] == []
