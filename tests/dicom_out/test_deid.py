"""De-identification: nothing the Basic Profile lists survives, UIDs stay consistent, images stay usable."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medassist.dicom_out._basic_profile import BASIC_PROFILE
from medassist.dicom_out.deid import UidMap, deidentify_dataset, export_deidentified, profile_action
from medassist.errors import MedassistError

EXPORT = Path(__file__).resolve().parents[2] / "samples" / "export"
DX = EXPORT / "PAT01/STUDY1/SER1/IM0001"
SECRET = "test-secret"
MARK = "SECRET"
UID_ROOT = "1.2.826.0.1.3680043.10.1999."  # marker UIDs: none may survive


def marker_for(vr: str, n: int):
    """A value of the VR that can be recognised later: text has SECRET-n, numbers/dates are unique."""
    if vr in ("LO", "LT", "SH", "ST", "UC", "UT", "UR", "AE", "CS"):
        return f"{MARK}-{n:04d}"[:16] if vr in ("SH", "AE", "CS") else f"{MARK}-{n:04d} text"
    if vr == "PN":
        return f"{MARK}^N{n:04d}"
    if vr == "DA":
        return f"1977{(n % 12) + 1:02d}{(n % 28) + 1:02d}"
    if vr == "TM":
        return f"23{n % 60:02d}59.{n:06d}"
    if vr == "DT":
        return f"1977010123{n % 60:02d}59.{n:06d}"
    if vr == "UI":
        return f"{UID_ROOT}{n}"
    if vr == "AS":
        return "077Y"
    if vr in ("IS",):
        return str(987650000 + n)
    if vr == "DS":
        return f"98765.{n:04d}"
    if vr in ("OB", "OW", "UN"):
        return f"{MARK}-{n:04d}-bytes".encode()
    return None  # numeric binary VRs and AT: nothing identifying to mark


def item_with_markers(n: int) -> Dataset:
    """A sequence item carrying identifying values (a person's name and an instance UID)."""
    item = Dataset()
    item.PatientName = f"{MARK}^ITEM{n}"
    item.ReferencedSOPClassUID = pydicom.uid.CTImageStorage
    item.ReferencedSOPInstanceUID = f"{UID_ROOT}9{n}"
    return item


def dataset_with_every_profile_attribute() -> tuple[Dataset, list[str]]:
    """PAT01's image with every Table E.1-1 attribute set to a marker; returns (ds, text markers)."""
    ds = pydicom.dcmread(DX)
    ds.PixelSpacing = [0.143, 0.143]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-10.0, 20.0, 30.0]
    values: list[str] = []
    for n, key in enumerate(sorted(BASIC_PROFILE)):
        if "X" in key:
            continue  # repeating groups: set below
        tag = int(key, 16)
        if tag >> 16 in (0x0000, 0x0002, 0xFFFA, 0xFFFC) or tag == 0x7FE00010:
            continue  # command/meta groups, signatures and padding are not data set attributes
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        vr = vr.split(" or ")[0]
        if vr == "SQ":
            ds.add_new(tag, "SQ", Sequence([item_with_markers(n)]))
            values += [f"{MARK}^ITEM{n}", f"{UID_ROOT}9{n}"]
            continue
        value = marker_for(vr, n)
        if value is None:
            continue
        ds.add_new(tag, vr, value)
        values.append(value.decode() if isinstance(value, bytes) else value)
    # SR content that must be cleaned rather than dropped.
    text = Dataset()
    text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
    text.ConceptNameCodeSequence = Sequence([_code("121106", "DCM", "Comment")])
    text.TextValue = f"{MARK}-content text"
    person = Dataset()
    person.RelationshipType, person.ValueType = "HAS OBS CONTEXT", "PNAME"
    person.ConceptNameCodeSequence = Sequence([_code("121008", "DCM", "Person Observer Name")])
    person.PersonName = f"{MARK}^OBSERVER"
    ds.ContentSequence = Sequence([text, person])
    values += [f"{MARK}-content text", f"{MARK}^OBSERVER"]
    # A sequence the table does not list still gets the table applied inside it.
    ds.ReferencedSeriesSequence = Sequence([item_with_markers(9999)])
    values += [f"{MARK}^ITEM9999", f"{UID_ROOT}99999"]
    # Private attributes, curves and overlays.
    block = ds.private_block(0x0011, "ACME SECRETS", create=True)
    block.add_new(0x01, "LO", f"{MARK}-private")
    ds.add_new(0x50000022, "LO", f"{MARK}-curve")
    ds.add_new(0x60004000, "LT", f"{MARK}-overlay comment")
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)
    ds.add_new(0x60000010, "US", 2)
    values += [f"{MARK}-private", f"{MARK}-curve", f"{MARK}-overlay comment"]
    return ds, values


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def all_text(ds: Dataset) -> list[tuple[str, str]]:
    """(tag, text) for every element at every depth, values as text (bytes decoded loosely)."""
    out = []
    for elem in ds.iterall():
        value = elem.value
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("latin-1")
        out.append((str(elem.tag), str(value)))
    return out


def test_no_identifying_attribute_survives():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # markers are not always valid values of their VR
        source, markers = dataset_with_every_profile_attribute()
        assert len(markers) > 300
        original_uids = [str(source.StudyInstanceUID), str(source.SeriesInstanceUID), str(source.SOPInstanceUID)]
        original_id, original_name = "SAMPLE-FRAC-01", "SAMPLE^FRAC01"
        clean = deidentify_dataset(source, UidMap(SECRET))
        buffer = io.BytesIO()
        clean.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    text = all_text(clean)
    forbidden = markers + original_uids + [original_id, original_name]
    for marker in forbidden:
        hits = [tag for tag, value in text if marker in value]
        assert not hits, f"{marker!r} survived in {hits}"
        assert marker.encode() not in raw, f"{marker!r} in the written bytes"
    assert MARK.encode() not in raw
    assert UID_ROOT.encode() not in raw

    assert clean.PatientIdentityRemoved == "YES"
    methods = {item.CodeValue for item in clean.DeidentificationMethodCodeSequence}
    assert methods == {"113100", "113104"}
    assert clean.PatientID.startswith("ANON-") and clean.PatientName == clean.PatientID
    assert not any(elem.tag.is_private for elem in clean.iterall())
    assert not any(0x5000 <= elem.tag.group <= 0x60FF for elem in clean)
    # The SR content is cleaned, not dropped.
    assert [i.ValueType for i in clean.ContentSequence] == ["TEXT", "PNAME"]
    assert clean.ContentSequence[0].TextValue == "REMOVED"


def test_geometry_and_pixels_survive():
    source = pydicom.dcmread(DX)
    source.PixelSpacing = [0.143, 0.143]
    clean = deidentify_dataset(source, UidMap(SECRET))
    back = pydicom.dcmread(io.BytesIO(_bytes(clean)))
    np.testing.assert_array_equal(back.pixel_array, source.pixel_array)
    for keyword in ("Rows", "Columns", "PixelSpacing", "PhotometricInterpretation", "BitsStored", "Modality",
                    "BodyPartExamined", "ViewPosition", "WindowCenter", "WindowWidth", "SOPClassUID"):
        assert back.get(keyword) == source.get(keyword), keyword
    assert back.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID != source.SOPInstanceUID


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def two_file_series() -> list[Dataset]:
    """Two images of one series; the second references the first (Referenced Image Sequence)."""
    first = pydicom.dcmread(DX)
    first.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.1999.55"
    second = pydicom.dcmread(DX)
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1999.56"
    second.FrameOfReferenceUID = first.FrameOfReferenceUID
    second.InstanceNumber = 2
    ref = Dataset()
    ref.ReferencedSOPClassUID = first.SOPClassUID
    ref.ReferencedSOPInstanceUID = first.SOPInstanceUID
    second.ReferencedImageSequence = Sequence([ref])
    return [first, second]


def test_uids_are_remapped_consistently_across_files_and_runs():
    first, second = two_file_series()
    mapping = UidMap(SECRET)
    a, b = deidentify_dataset(first, mapping), deidentify_dataset(second, mapping)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert a.get(keyword) == b.get(keyword) != first.get(keyword), keyword
        assert str(a.get(keyword)).startswith("2.25.")
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPClassUID == first.SOPClassUID  # classes are kept
    assert a.PatientID == b.PatientID != first.PatientID

    # Another run with the same secret maps the same way; another secret does not.
    again = deidentify_dataset(second, UidMap(SECRET))
    assert again.SOPInstanceUID == b.SOPInstanceUID and again.StudyInstanceUID == b.StudyInstanceUID
    other = deidentify_dataset(second, UidMap("another secret"))
    assert other.SOPInstanceUID != b.SOPInstanceUID and other.PatientID != b.PatientID


def test_a_plain_dict_works_as_the_uid_map():
    first, second = two_file_series()
    mapping: dict[str, str] = {}
    a, b = deidentify_dataset(first, mapping), deidentify_dataset(second, mapping)
    assert a.StudyInstanceUID == b.StudyInstanceUID == mapping[str(first.StudyInstanceUID)]
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID


def test_burned_in_text_is_refused_unless_allowed():
    ds = pydicom.dcmread(DX)
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(MedassistError, match="BurnedInAnnotation"):
        deidentify_dataset(ds, UidMap(SECRET))
    assert deidentify_dataset(ds, UidMap(SECRET), allow_burned_in=True).PatientIdentityRemoved == "YES"
    us = pydicom.dcmread(EXPORT / "PAT11/STUDY1/SER1/IM0001.dcm")  # US without BurnedInAnnotation
    with pytest.raises(MedassistError, match="burned-in"):
        deidentify_dataset(us, UidMap(SECRET))


def test_profile_table_lookups():
    assert profile_action(0x00100010) == "Z"  # Patient's Name
    assert profile_action(0x0020000D) == "U"  # Study Instance UID
    assert profile_action(0x50001234) == "X"  # curve data (repeating group)
    assert profile_action(0x60103000) == "X"  # overlay data, any overlay group
    assert profile_action(0x00280010) is None  # Rows: kept


def test_export_deidentified_images_and_results(tmp_path):
    """Images and the SR/SC made from them come out de-identified and still referencing each other."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import conftest_orthanc

    from medassist.dicom_out.results import write_dicom_results

    inputs = [EXPORT / "PAT01", EXPORT / "PAT09", EXPORT / "PAT11"]
    results = tmp_path / "results"
    conftest_orthanc.fake_triage(inputs, results)
    made = write_dicom_results(results)
    assert len(made.sr) == 2 and len(made.sc) == 2

    out = tmp_path / "export"
    report = export_deidentified(inputs, out, results_dir=results, secret=SECRET)
    assert len(report.written) == 2 + 2 + 2  # two images, two SR, two SC
    assert [Path(p.path).parts[-4] for p in report.problems] == ["PAT11"]  # the US: burned-in risk

    written = [pydicom.dcmread(p) for p in report.written]
    images = {ds.SOPInstanceUID: ds for ds in written if ds.Modality in ("DX", "CR")}
    reports = [ds for ds in written if ds.Modality == "SR"]
    captures = [ds for ds in written if ds.Modality == "OT" or "SecondaryCapture" in ds.SOPClassUID.name.replace(" ", "")]
    assert len(images) == 2 and len(reports) == 2 and len(captures) == 2
    for sr in reports:
        refs = [e.value for e in sr.iterall() if e.keyword == "ReferencedSOPInstanceUID"]
        assert refs and all(r in images for r in refs)
        assert all(images[r].StudyInstanceUID == sr.StudyInstanceUID for r in refs)
        assert sr.PatientID == images[refs[0]].PatientID
        assert any(e.keyword == "TextValue" and e.value == "fracture_xray" for e in sr.iterall())  # algorithm name kept
    for sc in captures:
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in images
    for path in report.written:
        raw = Path(path).read_bytes()
        for secret in (b"SAMPLE-FRAC-01", b"SAMPLE^FRAC01", b"ACCFRAC01", b"2.25.8650711976142466582047757792851209316"):
            assert secret not in raw, (path, secret)
