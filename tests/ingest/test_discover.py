"""Walking inputs, DICOMDIRs, junk, duplicates, and every shared DICOM file (medassist.ingest.discover)."""

from __future__ import annotations

import collections
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from medassist.errors import MedassistError
from medassist.ingest import discover_series, read_series_file

# Every file in shared/data/dicom that must be reported, with (part of) the reason. The first
# ten are broken on purpose; the READMEs are junk that only gets reported when named explicitly.
KNOWN_MALFORMED = {
    "pydicom/MR_truncated.dcm": "pixel data truncated: expected 8192 bytes, found 8130",
    "pydicom/no_meta.dcm": "no DICOM file meta and not parseable",
    "pydicom/badVR.dcm": "invalid NumberOfFrames value '1A'",
    "pydicom/UN_sequence.dcm": "missing pixel data: CT Image Storage has no Pixel Data",
    "pydicom/meta_missing_tsyntax.dcm": "missing image attribute(s): Rows, Columns, BitsAllocated; file meta has no Transfer Syntax UID",
    "pydicom/empty_charset_LEI.dcm": "no SOP Class UID and no Pixel Data",
    "pydicom-data/emri_small_jpeg_2k_lossless_too_short.dcm": "pixel data truncated: encapsulated pixel data ends before its sequence delimiter",
    "pydicom/JPEG2000-embedded-sequence-delimiter.dcm": "JPEG 2000 stream undecodable: ",
    "pylibjpeg-data/RG2_JPLY.dcm": "JPEG extended (12-bit) stream undecodable: ",
    "pylibjpeg-data/JPEGLossless_1s_1f_i_16_16_bad.dcm": "JPEG lossless stream decoded to implausible CT values",
}
EXPECTED_REPORTED = {
    **KNOWN_MALFORMED,
    "pydicom/dicomdirtests/README.txt": "not a DICOM or NIfTI file",
    "pydicom/dicomdirtests/TINY_ALPHA/README": "not a DICOM or NIfTI file",
    "pydicom/dicomdirtests/DICOMDIR-empty.dcm": "DICOMDIR lists no files",
}
# CT Image Storage instances of pydicom's tiny test file-set: headers only, no Pixel Data.
TINY_ALPHA_IMAGES = "pydicom/dicomdirtests/TINY_ALPHA/PT000000/"
# Not image series: skipped without a word even when named.
EXPECTED_SILENT = {
    "pydicom-data/liver.dcm",
    "pydicom-data/liver_deflate.dcm",
    "pydicom-data/liver_j2k.dcm",
    "pydicom-data/liver_rle.dcm",
    "pydicom/rtplan_truncated.dcm",
}
DICOMDIRS = {
    "pydicom/dicomdirtests/DICOMDIR",
    "pydicom/dicomdirtests/DICOMDIR-bigEnd",
    "pydicom/dicomdirtests/DICOMDIR-implicit",
    "pydicom/dicomdirtests/DICOMDIR-nooffset",
    "pydicom/dicomdirtests/DICOMDIR-nopatient",
    "pydicom/dicomdirtests/DICOMDIR-reordered",
    "pydicom/dicomdirtests/TINY_ALPHA/DICOMDIR",
}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_every_shared_file_is_decoded_or_reported_with_a_reason(dicom_data):
    decoded, reported, silent, followed = set(), {}, set(), set()
    for path in _files(dicom_data):
        rel = path.relative_to(dicom_data).as_posix()
        series, problems = discover_series([path])
        if rel in DICOMDIRS:
            assert series or problems, rel
            assert all(str(path) not in s.paths for s in series)
            followed.add(rel)
            continue
        if problems:
            assert len(problems) == 1, (rel, problems)  # exactly one line per bad file
            assert problems[0].path == str(path)
            reported[rel] = problems[0].reason
            continue
        if not series:
            silent.add(rel)
            continue
        (one,) = series
        try:
            image = one.load()
        except MedassistError as error:
            assert str(error).startswith(f"{path}: ")
            reported[rel] = str(error)[len(f"{path}: ") :]
            continue
        assert image.pixels.ndim == 3 and image.pixels.dtype == np.float32, rel
        assert np.isfinite(image.pixels).all(), rel
        assert image.display.shape == image.pixels.shape, rel
        assert 0.0 <= image.display.min() and image.display.max() <= 1.0, rel
        decoded.add(rel)

    tiny = {rel: reason for rel, reason in reported.items() if rel.startswith(TINY_ALPHA_IMAGES)}
    others = {rel: reason for rel, reason in reported.items() if rel not in tiny}
    assert len(tiny) == 50 and set(tiny.values()) == {"missing pixel data: CT Image Storage has no Pixel Data"}
    assert set(others) == set(EXPECTED_REPORTED)
    for rel, reason in others.items():
        assert reason.startswith(EXPECTED_REPORTED[rel]), (rel, reason)
    assert silent == EXPECTED_SILENT
    assert followed == DICOMDIRS
    # What is left decodes: CR, CT, MR, US, NM, OT in every transfer syntax of the set.
    assert len(decoded) == len(_files(dicom_data)) - len(reported) - len(silent) - len(followed)
    assert {
        "pydicom-data/RG1_J2KI.dcm",
        "pylibjpeg-data/RG2_JLSN.dcm",
        "pydicom-data/RG3_J2KR.dcm",
        "pydicom/ExplVR_BigEnd.dcm",
        "pydicom-data/US1_J2KI.dcm",
        "pydicom-data/OBXXXX1A_rle_2frame.dcm",
        "pylibjpeg-data/JPEGBaseline_1s_1f_u_08_08.dcm",
        "pylibjpeg-data/RG2_JPLY_fixed.dcm",
    } <= decoded


def test_walking_the_shared_folder_reports_each_bad_file_once(dicom_data):
    series, problems = discover_series([dicom_data])

    counts = collections.Counter(p.path for p in problems)
    assert max(counts.values()) == 1
    for rel, reason in KNOWN_MALFORMED.items():
        if "undecodable" in reason or "implausible" in reason:
            continue  # found only when decoding, by Series.load()
        assert any(p.path == str(dicom_data / rel) and p.reason.startswith(reason) for p in problems), rel
    # Junk met while walking is skipped quietly; SEG and RT plan too.
    quiet = [p for p in problems if "README" in p.path or "liver" in p.path or "rtplan" in p.path]
    assert quiet == []
    all_paths = [p for s in series for p in s.paths]
    assert len(all_paths) == len(set(all_paths))


def test_folder_walk_finds_files_without_suffix_and_skips_junk(tmp_path, write_dicom):
    write_dicom(tmp_path / "PAT1/STUDY/SER/IM0001", np.zeros((2, 2)), position=(0.0, 0.0, 0.0))
    write_dicom(tmp_path / "PAT1/STUDY/SER2/IM0002", np.zeros((2, 2)), position=(0.0, 0.0, 1.0))
    (tmp_path / "README.txt").write_text("exported by PACS\n")
    (tmp_path / "PAT1/thumb.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "PAT1/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")

    (series,), problems = discover_series([tmp_path])

    assert problems == []
    assert series.n_instances == 2
    assert series.source_path == str(tmp_path / "PAT1/STUDY")


def test_named_junk_is_reported(tmp_path):
    readme = tmp_path / "README.txt"
    readme.write_text("hello\n")

    series, problems = discover_series([readme, tmp_path / "nowhere"])

    assert series == []
    assert [(p.path, p.reason) for p in problems] == [
        (str(tmp_path / "nowhere"), "no such file or folder"),
        (str(readme), "not a DICOM or NIfTI file"),
    ]


def test_broken_file_with_dicom_suffix_is_reported_in_a_walk(tmp_path):
    (tmp_path / "broken.dcm").write_bytes(b"\x20" + b"\x00" * 300)

    _, problems = discover_series([tmp_path])

    assert [p.reason for p in problems] == ["no DICOM file meta and not parseable"]


def test_dicomdir_records_are_followed(dicom_data):
    root = dicom_data / "pydicom/dicomdirtests"
    expected = {str(p) for p in _files(root) if p.parent.parent.name in {"77654033", "98892001", "98892003"}}

    for name in ("DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-implicit", "DICOMDIR-nooffset", "DICOMDIR-reordered", "DICOMDIR-nopatient"):
        series, problems = discover_series([root / name])
        assert problems == [], name
        assert {p for s in series for p in s.paths} == expected, name


def test_folder_and_its_dicomdir_are_not_double_counted(dicom_data):
    root = dicom_data / "pydicom/dicomdirtests"

    series, problems = discover_series([root, root / "DICOMDIR", root / "TINY_ALPHA/DICOMDIR"])

    paths = [p for s in series for p in s.paths] + [p.path for p in problems]
    assert len(paths) == len(set(paths))
    assert sum(s.n_instances for s in series) == 31
    assert len(problems) == 50  # TINY_ALPHA's 50 instances without pixel data, once each


def test_dicomdir_missing_file_is_reported(tmp_path, dicom_data):
    root = tmp_path / "media"
    shutil.copytree(dicom_data / "pydicom/dicomdirtests/77654033", root / "77654033")
    shutil.copy(dicom_data / "pydicom/dicomdirtests/DICOMDIR", root / "DICOMDIR")

    series, problems = discover_series([root / "DICOMDIR"])

    missing = {p.path for p in problems}
    assert len(missing) == 24 and all("/9889200" in p for p in missing)
    assert all(p.reason == f"listed in DICOMDIR {root / 'DICOMDIR'} but not found" for p in problems)
    assert sum(s.n_instances for s in series) == 7


def test_duplicate_instances_are_counted_once(dicom_data):
    folder = dicom_data / "pydicom-data"
    files = sorted(folder.glob("emri_small*.dcm"))

    series, problems = discover_series(files)

    assert [s.paths for s in series] == [(str(folder / "emri_small.dcm"),)]
    reasons = sorted(p.reason.split(";")[0] for p in problems)
    assert reasons[:4] == [f"duplicate instance: same SOPInstanceUID as {folder / 'emri_small.dcm'}"] * 4
    assert reasons[4].startswith("pixel data truncated")


def test_duplicate_is_the_fallback_when_the_first_copy_fails(dicom_data):
    broken = dicom_data / "pylibjpeg-data/RG2_JPLY.dcm"
    fixed = dicom_data / "pylibjpeg-data/RG2_JPLY_fixed.dcm"

    (series,), problems = discover_series([fixed, broken])

    assert series.paths == (str(broken),)
    assert [p.path for p in problems] == [str(fixed)]
    assert series.load().pixels.shape == (1, 2140, 1760)


def test_read_series_file_raises_with_the_reason(dicom_data):
    path = dicom_data / "pydicom/badVR.dcm"
    with pytest.raises(MedassistError, match=r"badVR\.dcm: invalid NumberOfFrames value '1A'"):
        read_series_file(path)


def test_patient_data_never_reaches_logs_or_warnings(tmp_path, write_dicom, caplog):
    # pydicom quotes malformed values in its warnings and log lines; ingest must keep them quiet.
    def write(path):
        write_dicom(path, np.zeros((4, 4)), PatientName="SECRET^NAME", instance=999999)
        raw = path.read_bytes()
        assert raw.count(b"999999") == 1
        path.write_bytes(raw.replace(b"999999", b"SECRET"))  # an InstanceNumber (IS) pydicom rejects
        return path

    good = write(tmp_path / "a/good.dcm")
    bad = write(tmp_path / "b/bad.dcm")
    bad.write_bytes(bad.read_bytes()[:-10])
    caplog.clear()

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series, problems = discover_series([tmp_path])
        series[0].load()

    assert series[0].paths == (str(good),)
    assert [p.path for p in problems] == [str(bad)]
    assert "secret" not in caplog.text.lower() and "TEST-PATIENT" not in caplog.text
    assert not any("secret" in str(w.message).lower() for w in caught)


def test_a_file_both_named_and_walked_counts_as_named(tmp_path, write_dicom):
    write_dicom(tmp_path / "IM1", np.zeros((2, 2)))
    (tmp_path / "notes.txt").write_text("not an image\n")

    series, problems = discover_series([tmp_path, tmp_path / "notes.txt", tmp_path / "IM1"])

    assert [s.paths for s in series] == [(str(tmp_path / "IM1"),)]
    assert [(p.path, p.reason) for p in problems] == [(str(tmp_path / "notes.txt"), "not a DICOM or NIfTI file")]


# --- one file's or one series' failure stays its own ------------------------------------------


def test_an_unexpected_exception_reading_one_file_is_that_files_problem(tmp_path, write_dicom, monkeypatch):
    from medassist.ingest import discover as discover_module

    good = write_dicom(tmp_path / "a.dcm", np.zeros((2, 2)), series_uid="1.2.1")
    bad = write_dicom(tmp_path / "b.dcm", np.zeros((2, 2)), series_uid="1.2.2")
    real = discover_module.read_dicom_header

    def flaky(path, **kwargs):
        if path == str(bad):
            raise RuntimeError("a bug nobody foresaw\nsecond line")
        return real(path, **kwargs)

    monkeypatch.setattr(discover_module, "read_dicom_header", flaky)
    series, problems = discover_series([tmp_path])

    assert [s.paths for s in series] == [(str(good),)]
    assert [(p.path, p.reason) for p in problems] == [
        (str(bad), "could not read the file's header (RuntimeError: a bug nobody foresaw)")]


def test_an_unexpected_exception_grouping_one_series_is_a_problem_of_each_of_its_files(tmp_path, write_dicom,
                                                                                       monkeypatch):
    from medassist.ingest import series as series_module

    for z in range(2):
        write_dicom(tmp_path / f"bad{z}.dcm", np.zeros((2, 2)), series_uid="1.2.2", position=(0.0, 0.0, float(z)))
    good = write_dicom(tmp_path / "good.dcm", np.zeros((2, 2)), series_uid="1.2.1")
    real = series_module._make_series

    def flaky(study_uid, series_uid, *args):
        if series_uid == "1.2.2":
            raise ZeroDivisionError("float division by zero")
        return real(study_uid, series_uid, *args)

    monkeypatch.setattr(series_module, "_make_series", flaky)
    series, problems = discover_series([tmp_path])

    assert [s.paths for s in series] == [(str(good),)]
    assert sorted((p.path, p.reason) for p in problems) == [
        (str(tmp_path / f"bad{z}.dcm"), "could not group into a series (ZeroDivisionError: float division by zero)")
        for z in range(2)]


def test_a_header_that_takes_too_long_to_read_is_refused_and_the_walk_goes_on(tmp_path, write_dicom, monkeypatch):
    # An undefined-length sequence of 200,000 items: pydicom builds each one as it reads the header.
    import struct

    from medassist.ingest import discover as discover_module
    from medassist.ingest.fuzz import FuzzSource, read_base, replace_elements

    path = write_dicom(tmp_path / "slow.dcm", np.zeros((2, 2)), series_uid="1.2.2")
    good = write_dicom(tmp_path / "good.dcm", np.zeros((2, 2)), series_uid="1.2.1")
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    element = (struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF) + item * 200_000
               + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    base = read_base(FuzzSource(path))
    path.write_bytes(replace_elements(base.data, base, {}, raw={"ReferencedImageSequence": element}))
    monkeypatch.setattr(discover_module, "HEADER_TIMEOUT_S", 0.5)

    series, problems = discover_series([tmp_path])

    assert [(p.path, p.reason) for p in problems] == [(str(path), "reading the header took longer than 0.5 s")]
    assert [s.paths for s in series] == [(str(good),)]


def test_every_walked_file_is_in_exactly_one_of_series_problems_and_skipped(dicom_data):
    from medassist.ingest import discover_files

    found = discover_files([dicom_data])

    placed = ([p for s in found.series for p in s.paths] + [p.path for p in found.problems]
              + [s.path for s in found.skipped])
    assert sorted(placed) == sorted(str(p) for p in _files(dicom_data) if not p.name.startswith("."))
    kinds = {s.path.rsplit("/", 1)[-1]: s.kind for s in found.skipped}
    assert kinds["rtplan_truncated.dcm"] == "non-image" and kinds["README.txt"] == "not-dicom"
    assert kinds["DICOMDIR"] == "dicomdir"
    duplicates = [p for p in found.problems if p.kind == "duplicate"]
    assert duplicates and all(p.series_uid for p in duplicates)


def test_find_series_goes_back_from_a_row_to_its_series_or_says_it_is_gone(tmp_path):
    from medassist.ingest import find_series

    source = Path(__file__).resolve().parents[2] / "samples" / "export" / "PAT01" / "STUDY1" / "SER1"
    [series], _ = discover_series([source])
    assert find_series(source, series.series_uid).series_uid == series.series_uid
    assert find_series(source).series_uid == series.series_uid  # no UID given: the only one there
    with pytest.raises(MedassistError, match="is not there"):
        find_series(source, "1.2.3.4.5")  # another series' UID is never answered with this one
    with pytest.raises(MedassistError, match="is not there"):
        find_series(tmp_path / "moved-away")
