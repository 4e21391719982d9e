"""medassist.atomic: the one atomic writer."""

from __future__ import annotations

import os
import stat

import pydicom
import pytest

from medassist.atomic import dicom_bytes, write_atomic


def test_text_and_bytes_replace_the_file_with_the_permissions_asked_for(tmp_path):
    target = tmp_path / "out.csv"
    write_atomic(target, "a,b\r\n1,2\n", private=True)
    assert target.read_bytes() == b"a,b\r\n1,2\n"  # newlines as given
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    public = write_atomic(tmp_path / "map.npy", b"\x00\x01")
    assert public.read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(public.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "worklist.json"
    target.write_text("old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["worklist.json"]


def test_dicom_bytes_are_a_readable_part10_file(tmp_path):
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "samples" / "export" / "PAT01" / "STUDY1" / "SER1" / "IM0001"
    ds = pydicom.dcmread(source)
    path = write_atomic(tmp_path / "copy.dcm", dicom_bytes(ds))
    back = pydicom.dcmread(path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID and path.read_bytes()[128:132] == b"DICM"


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    from medassist.atomic import atomic_folder

    target = tmp_path / "models"
    with atomic_folder(target) as tmp:
        (tmp / "a.json").write_text("{}")
        assert not target.exists()  # nothing visible until the block ends
    assert [p.name for p in target.iterdir()] == ["a.json"]
    other = tmp_path / "other"
    with pytest.raises(RuntimeError):
        with atomic_folder(other) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("failed half way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no folder, no temporary left
    with pytest.raises(OSError):
        with atomic_folder(target) as tmp:  # a folder that is not empty is never replaced
            (tmp / "b.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["a.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
