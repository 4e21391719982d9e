"""Where, in the SR: the saliency peak as an SCOORD POINT and the half-peak region as a closed
POLYLINE on the source image (TID 1410), flagged MR slices one by one; no map, no region."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_validators import validator_problems
from matplotlib.path import Path as PolygonPath

from medassist.datamodel import WorklistRow
from medassist.dicom_out.location import FindingLocation, finding_location, plane_locations
from medassist.dicom_out.results import SourceIndex
from medassist.dicom_out.sr import build_study_sr

EXPORT = Path(__file__).resolve().parents[2] / "samples" / "export"
DX = EXPORT / "PAT01/STUDY1/SER1/IM0001"
PEAK_RC = (25, 47)  # where the radiograph's map peaks (row, column)


def _dx_map(header) -> np.ndarray:
    """A map on the DX grid: a half-peak blob around the peak, a weaker patch (below half) joined
    to it, and a separate strong blob away from it."""
    sal = np.zeros((int(header.Rows), int(header.Columns)), np.float32)
    sal[20:30, 40:55] = 0.6  # the region around the peak: columns 40..54, rows 20..29
    sal[30:40, 40:55] = 0.3  # touching, but below half the peak: not in the region
    sal[60:64, 10:14] = 0.9  # above half, but not connected to the peak: not in the region
    sal[PEAK_RC] = 1.0
    return sal


def _dx_row(tmp_path: Path, saliency: np.ndarray | None = None, **changes) -> tuple[WorklistRow, pydicom.Dataset]:
    header = pydicom.dcmread(DX, stop_before_pixels=True)
    path = ""
    if saliency is not None:
        path = str(tmp_path / "dx_map.npy")
        np.save(path, saliency)
    row = WorklistRow(study_uid=header.StudyInstanceUID, series_uid=header.SeriesInstanceUID, modality="DX",
                      model="fracture_xray", model_version="1.0.0", finding="fracture", score=0.83, threshold=0.5,
                      flagged=True, source_path=str(DX), saliency_path=path)
    return dataclasses.replace(row, **changes), header


def _write(sr, path: Path) -> hd.sr.Comprehensive3DSR:
    """Save the SR, read the bytes back with highdicom."""
    sr.save_as(path, enforce_file_format=True)
    return hd.sr.srread(io.BytesIO(path.read_bytes()))


def _scoords(ds) -> list:
    out = []
    for item in ds.get("ContentSequence") or []:
        if item.ValueType == "SCOORD":
            out.append(item)
        out.extend(_scoords(item))
    return out


def _region_source(region) -> tuple[str, str, list[int] | None]:
    """(SOP class, SOP instance, frame numbers) of the image an SCOORD is selected from."""
    [image] = region.ContentSequence
    assert image.RelationshipType == "SELECTED FROM" and image.ValueType == "IMAGE"
    ref = image.ReferencedSOPSequence[0]
    frames = ref.get("ReferencedFrameNumber")
    if frames is not None:
        frames = [int(f) for f in (frames if isinstance(frames, pydicom.multival.MultiValue) else [frames])]
    return str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID), frames


def _geometric_purpose(group) -> tuple[str, str]:
    [item] = [i for i in group[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "130400"]
    code = item.ConceptCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def test_location_of_a_map_peak_and_its_half_peak_region():
    loc = finding_location(_dx_map(pydicom.dcmread(DX, stop_before_pixels=True)))
    assert loc.peak_rc == PEAK_RC
    assert loc.peak_point == (47.5, 25.5)  # pixel centre, (column, row)
    assert loc.region_polygon == ((40, 20), (55, 20), (55, 30), (40, 30), (40, 20))  # pixel edges, closed
    with pytest.raises(dataclasses.FrozenInstanceError):
        loc.peak_rc = (0, 0)
    assert finding_location(np.zeros((8, 8))) is None  # an empty map points nowhere
    assert finding_location(np.full((8, 8), np.nan)) is None


def test_radiograph_sr_has_the_peak_point_and_region_on_the_source_image(tmp_path):
    row, header = _dx_row(tmp_path, _dx_map(pydicom.dcmread(DX, stop_before_pixels=True)))
    sr = _write(build_study_sr([row], {row.series_uid: [header]}), tmp_path / "sr.dcm")

    # The finding's score, threshold and Present stay in their TID 1501 group.
    [group] = sr.content.get_image_measurement_groups()
    assert [m.value for m in group.get_measurements()] == pytest.approx([0.83, 0.5])
    # Two TID 1410 groups: the peak and the region, on the source image, same finding and tracking UID.
    rois = sr.content.get_planar_roi_measurement_groups()
    assert len(rois) == 2
    for roi in rois:
        assert roi.tracking_uid == group.tracking_uid
        assert roi.finding_type.value == "125605004"
        assert _region_source(roi.roi) == (header.SOPClassUID, header.SOPInstanceUID, None)
    by_type = {roi.roi.graphic_type: roi.roi for roi in rois}
    point = by_type[hd.sr.GraphicTypeValues.POINT].value
    polyline = by_type[hd.sr.GraphicTypeValues.POLYLINE].value
    assert point.shape == (1, 2)
    column, row_ = point[0]
    assert abs(column - (PEAK_RC[1] + 0.5)) <= 0.5 and abs(row_ - (PEAK_RC[0] + 0.5)) <= 0.5
    assert np.array_equal(polyline[0], polyline[-1])  # closed
    assert PolygonPath(polyline).contains_point(point[0])
    assert not PolygonPath(polyline).contains_point((12.5, 62.5))  # the separate blob is outside
    assert not PolygonPath(polyline).contains_point((47.5, 35.5))  # so is the weaker patch below
    purposes = {roi.roi.graphic_type: _geometric_purpose(roi) for roi in rois}
    assert purposes == {hd.sr.GraphicTypeValues.POINT: ("128140", "DCM"),  # Representative point
                        hd.sr.GraphicTypeValues.POLYLINE: ("75958009", "SCT")}  # Bounded by

    problems = validator_problems(tmp_path / "sr.dcm")
    assert all(v == [] for v in problems.values()), problems


def test_the_same_map_gives_the_same_instance_a_moved_peak_a_new_one(tmp_path):
    sal = _dx_map(pydicom.dcmread(DX, stop_before_pixels=True))
    row, header = _dx_row(tmp_path, sal)
    first = build_study_sr([row], {row.series_uid: [header]}).SOPInstanceUID
    assert build_study_sr([row], {row.series_uid: [header]}).SOPInstanceUID == first
    sal[PEAK_RC] = 0.6
    sal[22, 41] = 1.0
    np.save(row.saliency_path, sal)
    assert build_study_sr([row], {row.series_uid: [header]}).SOPInstanceUID != first


@pytest.mark.parametrize("case", ["no map", "missing file", "not flagged", "wrong grid", "empty map", "unreadable"])
def test_no_usable_map_means_no_region_and_the_report_is_still_made(tmp_path, case):
    header = pydicom.dcmread(DX, stop_before_pixels=True)
    sal = _dx_map(header)
    row, header = _dx_row(tmp_path, None if case == "no map" else sal)
    if case == "missing file":
        Path(row.saliency_path).unlink()
    elif case == "not flagged":
        row = dataclasses.replace(row, flagged=False, score=0.2)
    elif case == "wrong grid":
        np.save(row.saliency_path, np.ones((7, 9), np.float32))
    elif case == "empty map":
        np.save(row.saliency_path, np.zeros_like(sal))
    elif case == "unreadable":
        Path(row.saliency_path).write_bytes(b"not a numpy file")
    sr = _write(build_study_sr([row], {row.series_uid: [header]}), tmp_path / "sr.dcm")
    assert _scoords(sr) == []
    assert sr.content.get_planar_roi_measurement_groups() == []
    assert len(sr.content.get_image_measurement_groups()) == 1


def test_mr_volume_sr_references_each_flagged_slice_with_its_peak(tmp_path, write_axial_series):
    from medassist.ingest import discover_series

    src = tmp_path / "mr"
    src.mkdir()
    # written in reverse instance order: the slice order must come from the positions
    write_axial_series(src, modality="MR", n=5, size=24, slice_mm=5.0, pixel_mm=1.0, reverse_names=True)
    [series], _ = discover_series([src])
    # As triage writes a volume's map: one plane per flagged slice (1, 3, 4), ascending; slice 4's is empty.
    peaks = {1: (5, 17), 3: (12, 3)}
    maps = np.zeros((3, 24, 24), np.float32)
    for k, s in enumerate((1, 3)):
        maps[k][peaks[s]] = 2.0
        maps[k, 0, 0] = 0.5
    np.save(tmp_path / "mr_map.npy", maps)
    row = WorklistRow(study_uid=series.study_uid, series_uid=series.series_uid, modality="MR", model="tumor_mri",
                      model_version="1.0.0", finding="tumor", score=0.91, threshold=0.5, flagged=True,
                      slices=(3, 1, 4), saliency_path=str(tmp_path / "mr_map.npy"), source_path=series.source_path)
    headers = SourceIndex().headers(row)
    assert [float(h.ImagePositionPatient[2]) for h in headers] == sorted(float(h.ImagePositionPatient[2]) for h in headers)
    sr = _write(build_study_sr([row], {row.series_uid: headers}), tmp_path / "sr.dcm")

    [group] = sr.content.get_image_measurement_groups()
    assert [m.value for m in group.get_measurements()] == pytest.approx([0.91, 0.5])
    rois = sr.content.get_planar_roi_measurement_groups()
    assert [roi.roi.graphic_type for roi in rois] == [hd.sr.GraphicTypeValues.POINT] * 2  # none for the empty slice 4
    assert [_region_source(roi.roi) for roi in rois] == [(h.SOPClassUID, h.SOPInstanceUID, None) for h in headers[1:4:2]]
    for roi, s in zip(rois, (1, 3)):
        column, row_ = roi.roi.value[0]
        assert (row_, column) == (peaks[s][0] + 0.5, peaks[s][1] + 0.5)
        assert roi.tracking_uid == group.tracking_uid

    problems = validator_problems(tmp_path / "sr.dcm")
    assert all(v == [] for v in problems.values()), problems


def test_plane_locations_takes_a_full_volume_map_or_one_plane_per_flagged_slice():
    full = np.zeros((4, 6, 6), np.float32)
    full[2, 1, 4] = 1.0
    full[0, 5, 5] = 0.3
    # No slices listed: the plane where the map peaks.
    assert [(loc.slice_index, loc.peak_rc) for loc in plane_locations(full, (), 4)] == [(2, (1, 4))]
    assert [loc.slice_index for loc in plane_locations(full, (0, 2), 4)] == [0, 2]
    per_slice = full[[0, 2]]
    assert plane_locations(per_slice, (2, 0), 4) == plane_locations(full, (0, 2), 4)
    assert isinstance(plane_locations(full[2], (), 1)[0], FindingLocation)
    with pytest.raises(ValueError):
        plane_locations(full[:3], (0,), 4)  # three planes for a four-slice series and one flagged slice


def test_a_multi_frame_instance_is_referenced_by_frame_number(tmp_path):
    header = pydicom.dcmread(DX, stop_before_pixels=True)
    header.NumberOfFrames = 3
    maps = np.zeros((3, int(header.Rows), int(header.Columns)), np.float32)
    maps[2, 7, 9] = 1.0
    maps[0, 1, 1] = 0.4
    np.save(tmp_path / "mf.npy", maps)
    row, _ = _dx_row(tmp_path, None, saliency_path=str(tmp_path / "mf.npy"), slices=(2,))
    sr = _write(build_study_sr([row], {row.series_uid: [header]}), tmp_path / "sr.dcm")
    [roi] = sr.content.get_planar_roi_measurement_groups()
    assert roi.roi.graphic_type == hd.sr.GraphicTypeValues.POINT
    assert _region_source(roi.roi) == (header.SOPClassUID, header.SOPInstanceUID, [3])
    assert tuple(roi.roi.value[0]) == (9.5, 7.5)
