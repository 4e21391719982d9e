"""NRRD and MetaImage volumes read with SimpleITK: the same Series and geometry as the NIfTI reader
gives for the same voxels, and broken files reported by name while the rest of a folder goes on."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medassist.errors import MedassistError
from medassist.ingest import discover_files, discover_series, read_series_file
from medassist.ingest.dicom import MAX_DECODED_BYTES
from medassist.ingest.discover import volume_reader
from medassist.ingest.research_volume import read_research_volume_series

SHAPE_KJI = (12, 20, 16)  # numpy order (slices, rows, columns): a 16 x 20 x 12 volume (i, j, k)
SPACING = (0.7, 1.3, 2.9)  # i, j, k (mm)
ORIGIN = (12.5, -40.25, 73.0)  # LPS (mm)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rotation() -> np.ndarray:
    """An oblique rotation (every entry non-zero): columns are the i, j, k axis directions in LPS."""
    a, b, c = 0.4, -0.7, 0.25
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTION = _rotation()


def _coded(shape=SHAPE_KJI, dtype=np.int16) -> np.ndarray:
    """data[k, j, i] = i + 16 j + 320 k: every voxel says where it came from."""
    k, j, i = np.indices(shape)
    return (i + 16 * j + 320 * k).astype(dtype)


def _itk_image(data_kji: np.ndarray, direction=DIRECTION, origin=ORIGIN, spacing=SPACING) -> sitk.Image:
    image = sitk.GetImageFromArray(data_kji, isVector=False)
    image.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    return image


def _write(path, data_kji=None, compress=False, **geometry):
    sitk.WriteImage(_itk_image(_coded() if data_kji is None else data_kji, **geometry), str(path),
                    useCompression=compress)
    return path


def _same_as_nifti(tmp_path, data_kji: np.ndarray):
    """The same voxels and geometry written as NIfTI through nibabel (RAS affine, (i, j, k) array)."""
    lps = np.eye(4)
    lps[:3, :3] = DIRECTION * np.asarray(SPACING)
    lps[:3, 3] = ORIGIN
    path = tmp_path / "same.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data_kji.transpose(2, 1, 0)), LPS_TO_RAS @ lps), str(path))
    return path


@pytest.mark.parametrize("name, compress", [("v.nrrd", False), ("v.nrrd", True), ("v.nhdr", False),
                                            ("v.mha", False), ("v.mha", True), ("v.mhd", False)])
def test_geometry_and_voxels_agree_with_the_nifti_reader(tmp_path, name, compress):
    data = _coded()
    path = _write(tmp_path / name, data, compress=compress)
    nifti = read_series_file(_same_as_nifti(tmp_path, data)).load()

    series = read_series_file(path)
    image = series.load()

    assert image.pixels.shape == (12, 20, 16) and image.pixels.dtype == np.float32
    assert np.array_equal(image.pixels, data.astype(np.float32))  # (slice, row, column) = (k, j, i)
    assert np.array_equal(image.pixels, nifti.pixels)
    assert image.pixels[7, 3, 11] == 11 + 16 * 3 + 320 * 7
    assert image.display.min() == 0.0 and image.display.max() == 1.0 and image.window is None
    geometry = image.geometry
    assert geometry.spacing == pytest.approx((2.9, 1.3, 0.7))
    assert geometry.spacing == pytest.approx(nifti.geometry.spacing)
    assert geometry.orientation == pytest.approx(nifti.geometry.orientation, abs=1e-6)
    assert geometry.orientation == pytest.approx((*DIRECTION[:, 0], *DIRECTION[:, 1]))
    assert np.allclose(geometry.positions, nifti.geometry.positions, atol=1e-4)
    itk = _itk_image(data)
    for s, r, c in [(0, 0, 0), (11, 19, 15), (7, 3, 11), (2, 18, 1)]:
        world = geometry.affine @ [s, r, c, 1.0]
        assert world[:3] == pytest.approx(itk.TransformIndexToPhysicalPoint((c, r, s)), abs=1e-4)  # ITK: LPS
        assert world == pytest.approx(nifti.geometry.affine @ [s, r, c, 1.0], abs=1e-4)
    assert (series.modality, series.patient_id, series.n_instances) == ("MR", "", 1)
    assert series.source_path == str(path) and series.description == name


def test_a_detached_header_lists_its_data_file_and_the_folder_walk_finds_it_once(tmp_path):
    path = _write(tmp_path / "scan.mhd")

    found = discover_files([tmp_path])

    (series,) = found.series
    assert series.paths == (str(path), str(tmp_path / "scan.raw"))
    assert found.problems == []
    assert [s.path for s in found.skipped] == [str(tmp_path / "scan.raw")]  # looked at as DICOM: not one


def test_an_nrrd_in_ras_space_is_converted_to_lps_like_nifti(tmp_path):
    # The NRRD says where its voxels are in RAS; ITK reads it into LPS, as the NIfTI reader converts.
    ras = np.array([[2.0, 0.0, 0.0, -50.0], [0.0, 3.0, 0.0, 10.0], [0.0, 0.0, 4.0, 20.0], [0.0, 0.0, 0.0, 1.0]])
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)  # (k, j, i)
    path = tmp_path / "ras.nrrd"
    path.write_bytes(b"NRRD0004\ntype: uchar\ndimension: 3\nspace: right-anterior-superior\nsizes: 4 3 2\n"
                     b"space directions: (2,0,0) (0,3,0) (0,0,4)\nencoding: raw\nspace origin: (-50,10,20)\n\n"
                     + data.tobytes())
    nii = tmp_path / "ras.nii"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), ras), str(nii))

    image, nifti = read_series_file(path).load(), read_series_file(nii).load()

    assert np.array_equal(image.pixels, nifti.pixels)
    assert image.geometry.affine @ [1, 2, 3, 1.0] == pytest.approx([-(-50 + 6), -(10 + 6), 20 + 4, 1.0])
    assert np.allclose(image.geometry.affine, nifti.geometry.affine)


def test_a_2d_image_is_one_slice_like_a_2d_nifti(tmp_path):
    path = tmp_path / "flat.mha"
    flat = _coded((1, 20, 16))[0]
    image2d = sitk.GetImageFromArray(flat)
    image2d.SetSpacing((0.5, 0.25))
    image2d.SetOrigin((3.0, 4.0))
    sitk.WriteImage(image2d, str(path))

    image = read_series_file(path).load()

    assert image.pixels.shape == (1, 20, 16) and image.pixels[0, 5, 9] == flat[5, 9]
    assert image.geometry.spacing == pytest.approx((1.0, 0.25, 0.5))
    assert image.geometry.affine @ [0, 5, 9, 1.0] == pytest.approx([3.0 + 9 * 0.5, 4.0 + 5 * 0.25, 0.0, 1.0])


def test_the_modality_is_the_override_else_the_metaimage_header_else_mr(tmp_path):
    plain = _write(tmp_path / "a.mha")
    ct = tmp_path / "ct.mha"
    text = plain.read_bytes()
    ct.write_bytes(text.replace(b"ElementType", b"Modality = MET_MOD_CT\nElementType", 1))
    nrrd = _write(tmp_path / "b.nrrd")

    assert read_series_file(ct).modality == "CT"
    assert read_series_file(ct, modality_override="mr").modality == "MR"
    assert read_series_file(plain).modality == "MR" and read_series_file(nrrd).modality == "MR"
    assert read_series_file(nrrd, modality_override="ct").modality == "CT"
    assert np.array_equal(read_series_file(ct).load().pixels, _coded().astype(np.float32))


def test_uppercase_suffixes_are_volumes_and_other_names_are_not():
    assert volume_reader("/x/SCAN.NRRD") is read_research_volume_series
    assert volume_reader("/x/a.MHD") is read_research_volume_series
    assert volume_reader("/x/a.nrrd.bak") is None and volume_reader("/x/a.raw") is None


def test_the_loader_pickles_for_worker_processes(tmp_path):
    series = read_series_file(_write(tmp_path / "v.nrrd"))

    loader = pickle.loads(pickle.dumps(series.loader))

    assert np.array_equal(loader().pixels, series.load().pixels)


# --- broken files: each reported with its reason, the rest of the folder goes on ---------------------


def test_broken_files_are_reported_by_name_and_the_good_ones_still_found(tmp_path):
    (tmp_path / "src").mkdir()
    whole = _write(tmp_path / "src" / "whole.mha").read_bytes()
    whole_nrrd = _write(tmp_path / "src" / "whole.nrrd").read_bytes()
    tmp_path = tmp_path / "in"
    tmp_path.mkdir()
    good_nrrd = _write(tmp_path / "good.nrrd")
    good_mhd = _write(tmp_path / "good.mhd")
    cut_mha = tmp_path / "cut.mha"
    cut_mha.write_bytes(whole[: len(whole) - 1000])
    header_bytes = len(whole) - 12 * 20 * 16 * 2  # the voxels are the last bytes
    cut_nrrd = tmp_path / "cut.nrrd"
    cut_nrrd.write_bytes(whole_nrrd[:100])  # inside the header
    four_d = tmp_path / "fmri.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 12, 20, 16), np.float32), isVector=False), str(four_d))
    vector = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((12, 20, 16, 3), np.uint8), isVector=True), str(vector))
    junk = tmp_path / "notes.nrrd"
    junk.write_text("not a volume")
    lost = _write(tmp_path / "lost.nhdr")
    (tmp_path / "lost.raw").unlink()
    listed = tmp_path / "listed.mhd"
    listed.write_text("NDims = 3\nDimSize = 4 4 2\nElementType = MET_SHORT\nElementDataFile = LIST\na.raw\nb.raw\n")
    constant = _write(tmp_path / "constant.mha", np.full(SHAPE_KJI, 7, np.int16))

    found = discover_files([tmp_path])

    problems = {p.path: p for p in found.problems}
    assert {p.path: p.reason for p in found.problems} == {
        str(cut_mha): f"MetaImage voxel data truncated: the header declares 7680 bytes from byte {header_bytes}, "
                      f"the file holds {7680 - 1000}",
        str(cut_nrrd): problems[str(cut_nrrd)].reason,  # ITK's words, checked below
        str(four_d): "4D NRRD (16 x 20 x 12 x 5) is not supported; split the volumes first",
        str(vector): "MetaImage voxels of type vector of 8-bit unsigned integer (3 components) are not supported; "
                     "only scalar volumes are",
        str(junk): "unreadable NRRD: the file does not start with the NRRD magic (NRRD000x)",
        str(lost): f"NRRD data file {tmp_path / 'lost.raw'} named in the header does not exist",
        str(listed): "MetaImage voxels split over several data files are not supported",
    }
    assert problems[str(cut_nrrd)].reason.startswith("unreadable NRRD: ")
    assert str(problems[str(cut_mha)]).startswith(f"{cut_mha}: ")  # the worklist's error names the file
    assert problems[str(four_d)].kind == problems[str(vector)].kind == problems[str(listed)].kind == "unsupported"
    assert problems[str(cut_mha)].kind == problems[str(junk)].kind == "error"

    by_path = {s.source_path: s for s in found.series}
    assert sorted(by_path) == sorted([str(good_nrrd), str(good_mhd), str(constant)])
    assert np.array_equal(by_path[str(good_mhd)].load().pixels, _coded().astype(np.float32))
    with pytest.raises(MedassistError) as raised:
        by_path[str(constant)].load()
    assert str(raised.value) == f"{constant}: MetaImage volume is constant (every voxel 7): no image to score"


def test_voxels_cut_short_inside_a_compressed_stream_fail_when_loaded_naming_the_file(tmp_path):
    noisy = np.random.default_rng(0).normal(size=SHAPE_KJI).astype(np.float32)
    whole = _write(tmp_path / "whole.nrrd", noisy, compress=True).read_bytes()
    path = tmp_path / "cut.nrrd"
    path.write_bytes(whole[: len(whole) // 2])

    series = read_series_file(path)  # the header is whole; half a gzip stream could hold the voxels
    with pytest.raises(MedassistError) as raised:
        series.load()

    assert str(raised.value).startswith(f"{path}: NRRD voxels unreadable: ")


@pytest.mark.parametrize(
    "fill, reason",
    [
        (np.nan, "NRRD volume has no finite voxel (all 3840 are NaN or infinite)"),
        (np.inf, "NRRD volume has no finite voxel (all 3840 are NaN or infinite)"),
        (0.0, "NRRD volume is constant (every voxel 0): no image to score"),
    ],
)
def test_volumes_that_are_no_image_are_refused_when_loaded(tmp_path, fill, reason):
    path = _write(tmp_path / "v.nrrd", np.full(SHAPE_KJI, fill, np.float32))

    with pytest.raises(MedassistError) as raised:
        read_series_file(path).load()

    assert str(raised.value) == f"{path}: {reason}"


def test_nan_voxels_become_zero_and_one_infinite_voxel_is_refused(tmp_path):
    data = _coded(dtype=np.float32)
    data[0, 0, 1] = np.nan
    infinite = _coded(dtype=np.float32)
    infinite[3, 4, 5] = -np.inf
    nan_path, inf_path = _write(tmp_path / "nan.mha", data), _write(tmp_path / "inf.mha", infinite)

    image = read_series_file(nan_path).load()
    with pytest.raises(MedassistError) as raised:
        read_series_file(inf_path).load()

    assert image.pixels[0, 0, 1] == 0.0 and np.isfinite(image.pixels).all()
    assert str(raised.value) == (f"{inf_path}: MetaImage volume holds 1 infinite voxel value(s): the data or its "
                                 "scaling is corrupt")


def test_declared_sizes_the_file_cannot_hold_are_refused_before_anything_is_read(tmp_path):
    huge = tmp_path / "huge.mha"
    huge.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 2048 2048 160\nElementType = MET_FLOAT\n"
                     b"ElementDataFile = LOCAL\n" + bytes(64))
    bomb = tmp_path / "bomb.nrrd"
    bomb.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 512 512 400\nendian: little\nencoding: gzip\n\n" + bytes(100))

    reasons = {p.path: p.reason for p in discover_series([tmp_path])[1]}

    assert reasons == {
        str(huge): f"declared image size 2048 x 2048 x 160 x float32 needs {2048 * 2048 * 160 * 4} bytes decoded, "
                   f"over the {MAX_DECODED_BYTES} byte limit",
        str(bomb): f"NRRD voxel data truncated: the header declares {512 * 512 * 400 * 4} bytes, more than a gzip "
                   "stream of 100 bytes can hold",
    }
