"""NIfTI series: identifiers, (slices, rows, columns) pixels and the RAS -> LPS affine."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medassist.ingest import discover_series, read_series_file

RAS_AFFINE = np.array(
    [[2.0, 0.0, 0.0, -50.0], [0.0, 3.0, 0.0, 10.0], [0.0, 0.0, 4.0, 20.0], [0.0, 0.0, 0.0, 1.0]]
)


def _write(path, data, affine=RAS_AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def _coded_volume(shape=(5, 4, 3)):
    """data[i, j, k] = i + 10 j + 100 k, so every voxel says where it came from."""
    i, j, k = np.indices(shape)
    return (i + 10 * j + 100 * k).astype(np.float32)


def test_nifti_series_identifiers_are_deterministic(tmp_path):
    path = _write(tmp_path / "brain.nii.gz", _coded_volume())

    first = read_series_file(path)
    again = read_series_file(path)
    other = read_series_file(_write(tmp_path / "other.nii", _coded_volume()))

    assert (first.study_uid, first.series_uid) == (again.study_uid, again.series_uid)
    assert first.series_uid != other.series_uid and first.study_uid != first.series_uid
    assert first.series_uid.startswith("2.25.") and len(first.series_uid) <= 64
    assert (first.modality, first.patient_id, first.accession) == ("MR", "", "")
    assert first.source_path == str(path) and first.paths == (str(path),)


def test_modality_override(tmp_path):
    _write(tmp_path / "ct.nii", _coded_volume())

    (series,), _ = discover_series([tmp_path], modality_override="ct")

    assert series.modality == "CT"


def test_pixels_are_slices_rows_columns(tmp_path):
    data = _coded_volume()
    image = read_series_file(_write(tmp_path / "v.nii.gz", data)).load()

    assert image.pixels.shape == (3, 4, 5) and image.pixels.dtype == np.float32
    assert image.pixels[2, 1, 4] == data[4, 1, 2]  # (slice, row, column) = (k, j, i)
    assert image.display.min() == 0.0 and image.display.max() == 1.0
    assert image.window is None


def test_affine_is_converted_to_lps(tmp_path):
    image = read_series_file(_write(tmp_path / "v.nii", _coded_volume())).load()
    geometry = image.geometry

    for s, r, c in [(0, 0, 0), (2, 3, 4), (1, 2, 0)]:
        ras = RAS_AFFINE @ [c, r, s, 1.0]
        lps = geometry.affine @ [s, r, c, 1.0]
        assert lps[:3] == pytest.approx([-ras[0], -ras[1], ras[2]])
    assert geometry.spacing == pytest.approx((4.0, 3.0, 2.0))
    assert geometry.orientation == pytest.approx((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    assert geometry.positions[1] == pytest.approx((50.0, -10.0, 24.0))


def test_2d_nifti_is_one_slice(tmp_path):
    image = read_series_file(_write(tmp_path / "flat.nii", np.ones((6, 7), dtype=np.float32))).load()
    assert image.pixels.shape == (1, 7, 6)


def test_nan_voxels_become_zero(tmp_path):
    data = _coded_volume()
    data[0, 0, 0] = np.nan
    image = read_series_file(_write(tmp_path / "nan.nii", data)).load()
    assert np.isfinite(image.pixels).all() and image.pixels[0, 0, 0] == 0.0


def test_4d_and_corrupt_files_are_reported(tmp_path):
    four_d = _write(tmp_path / "fmri.nii.gz", np.zeros((4, 4, 3, 5), dtype=np.float32))
    corrupt = tmp_path / "broken.nii"
    corrupt.write_bytes(b"not a nifti header at all" * 20)

    series, problems = discover_series([tmp_path])

    assert series == []
    reasons = {p.path: p.reason for p in problems}
    assert reasons[str(four_d)] == "4D NIfTI (4 x 4 x 3 x 5) is not supported; split the volumes first"
    assert reasons[str(corrupt)].startswith("unreadable NIfTI: ")
