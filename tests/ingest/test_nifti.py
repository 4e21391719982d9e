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
    image = read_series_file(_write(tmp_path / "flat.nii", np.arange(42, dtype=np.float32).reshape(6, 7))).load()
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


# --- the same limits as DICOM: declared sizes, bombs, values that are no image -----------------

import gzip
import json
import struct
import subprocess
import sys
import time

from medassist.errors import MedassistError
from medassist.ingest.dicom import MAX_DECODED_BYTES
from medassist.ingest.nifti import MAX_DEFLATE_RATIO

ZEROS_64_MIB = gzip.compress(bytes(64 * 2**20), compresslevel=9)  # one gzip member: 64 MiB of zeros in 65 kB


def _header_bytes(shape, dtype=np.float32, extension: bytes = b"") -> bytes:
    """A single-file NIfTI-1 header (+ extension flag and extensions) for ``shape``, no voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352 + len(extension)
    return header.binaryblock + (b"\x01\0\0\0" if extension else bytes(4)) + extension


def _bomb(path, head: bytes, members: int):
    """``head`` as one gzip member followed by ``members`` x 64 MiB of zeros (~65 kB each)."""
    path.write_bytes(gzip.compress(head) + ZEROS_64_MIB * members)
    return path


_DISCOVER = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from medassist.ingest import discover_series
started = time.monotonic()
series, problems = discover_series([sys.argv[1]])
loaded = []
for one in series:
    try:
        loaded.append(str(one.load().pixels.shape))
    except Exception as error:
        loaded.append(type(error).__name__ + ": " + str(error))
peak = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({{"problems": [[p.path, p.reason] for p in problems], "loaded": loaded,
                  "seconds": time.monotonic() - started, "peak_kb": peak}}))
"""


def _discover_bounded(path, limit=1536 * 1024**2) -> dict:
    """discover_series + load in a subprocess whose address space is ``limit`` bytes."""
    script = _DISCOVER.format(limit=limit)
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_header_declaring_2_5_gb_in_a_gzip_bomb_is_refused_quickly_in_bounded_memory(tmp_path):
    # 1024 x 1024 x 640 float32 = 2.7 GB declared; the stream really holds 2.5 GB of zeros (2.5 MB file).
    path = _bomb(tmp_path / "bomb.nii.gz", _header_bytes((1024, 1024, 640)), members=38)
    assert path.stat().st_size < 3 * 1024**2

    report = _discover_bounded(path)

    assert report["problems"] == [[str(path), f"declared image size 1024 x 1024 x 640 x float32 needs {2684354560} "
                                              f"bytes decoded, over the {MAX_DECODED_BYTES} byte limit"]]
    assert report["loaded"] == []
    assert report["peak_kb"] < 400 * 1024  # memory stays bounded (speed: benchmarks/, not tests)


def test_a_header_declaring_more_than_its_gzip_stream_can_hold_is_refused_unexpanded(tmp_path):
    # 419 MB declared (under the limit) in a file of a few hundred bytes: no deflate stream holds that.
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(_header_bytes((512, 512, 400)) + bytes(1000)))
    needed = 352 + 512 * 512 * 400 * 4

    report = _discover_bounded(path)

    assert needed > path.stat().st_size * MAX_DEFLATE_RATIO
    assert report["problems"] == [[str(path), f"NIfTI voxel data truncated: the header declares {needed} bytes, "
                                              f"more than a gzip stream of {path.stat().st_size} bytes can hold"]]


def test_an_extension_declaring_2_gib_before_a_gzip_bomb_is_refused_unread(tmp_path):
    # nibabel reads an extension's declared size in one read: 2 GiB of zeros, expanded in memory.
    extension = struct.pack("<ii", 2**31 - 16, 0) + bytes(8)
    path = _bomb(tmp_path / "ext.nii.gz", _header_bytes((8, 8, 4), extension=extension) + bytes(8 * 8 * 4 * 4),
                 members=33)

    report = _discover_bounded(path)

    assert report["problems"] == [[str(path), f"NIfTI header extension of {2**31 - 16} bytes does not fit the 16 "
                                              "bytes left before the voxels"]]
    assert report["peak_kb"] < 400 * 1024  # memory stays bounded (speed: benchmarks/, not tests)


@pytest.mark.parametrize("esize", [-16, 0, 8])
def test_an_extension_too_small_to_be_one_is_refused(tmp_path, esize):
    # A negative size made nibabel read to the end of the stream.
    extension = struct.pack("<ii", esize, 0) + bytes(8)
    path = tmp_path / "ext.nii"
    path.write_bytes(_header_bytes((4, 4, 2), extension=extension) + np.arange(32, dtype=np.float32).tobytes())

    (problem,) = discover_series([path])[1]

    assert problem.reason == f"NIfTI header extension of {esize} bytes does not fit the 16 bytes left before the voxels"


def test_voxel_offsets_outside_the_file_layout_are_refused(tmp_path):
    inside = tmp_path / "inside.nii"
    header = nib.Nifti1Header()
    header.set_data_shape((4, 4, 2))
    header["vox_offset"] = 100
    inside.write_bytes(header.binaryblock + bytes(4) + bytes(4 * 4 * 2 * 4))
    far = tmp_path / "far.nii"
    header["vox_offset"] = 2**30  # a float32 in NIfTI-1: a power of two stays exact
    far.write_bytes(header.binaryblock + bytes(4) + bytes(128))

    reasons = {p.path: p.reason for p in discover_series([tmp_path])[1]}

    assert reasons[str(inside)] == "unreadable NIfTI: vox offset 100 too low for single file nifti1"  # nibabel's check
    assert reasons[str(far)] == (f"NIfTI voxel offset {2**30} leaves {2**30 - 352} bytes of header extensions "
                                 "(at most 16777216)")


def test_a_truncated_nii_is_refused_before_reading(tmp_path):
    path = tmp_path / "cut.nii"
    path.write_bytes(_header_bytes((16, 16, 8)) + bytes(100))

    (problem,) = discover_series([path])[1]

    assert problem.reason == "NIfTI voxel data truncated: the header declares 8192 bytes from byte 352, the file holds 100"


@pytest.mark.parametrize(
    "fill, reason",
    [
        (np.nan, "NIfTI volume has no finite voxel (all 60 are NaN or infinite)"),
        (0.0, "NIfTI volume is constant (every voxel 0): no image to score"),
        (3.5, "NIfTI volume is constant (every voxel 3.5): no image to score"),
    ],
)
def test_volumes_that_are_no_image_are_refused_when_loaded(tmp_path, fill, reason):
    path = _write(tmp_path / "v.nii.gz", np.full((5, 4, 3), fill, dtype=np.float32))

    with pytest.raises(MedassistError) as raised:
        read_series_file(path).load()

    assert str(raised.value) == f"{path}: {reason}"


def test_infinite_voxels_and_nan_around_zeros_are_refused(tmp_path):
    infinite = _coded_volume()
    infinite[1, 1, 1] = np.inf
    masked_zeros = np.zeros((5, 4, 3), dtype=np.float32)
    masked_zeros[0] = np.nan  # NaN becomes 0: still one value throughout
    paths = [_write(tmp_path / "inf.nii", infinite), _write(tmp_path / "masked.nii", masked_zeros)]

    messages = []
    for path in paths:
        with pytest.raises(MedassistError) as raised:
            read_series_file(path).load()
        messages.append(str(raised.value))

    assert messages == [
        f"{paths[0]}: NIfTI volume holds 1 infinite voxel value(s): the data or its scaling is corrupt",
        f"{paths[1]}: NIfTI volume is constant (every voxel 0): no image to score",
    ]


def test_a_nifti_2_volume_reads_like_nifti_1(tmp_path):
    data = _coded_volume()
    path = tmp_path / "two.nii"
    nib.save(nib.Nifti2Image(data, RAS_AFFINE), str(path))

    image = read_series_file(path).load()

    assert image.pixels.shape == (3, 4, 5) and image.pixels[2, 1, 4] == data[4, 1, 2]


def test_discovery_of_a_refused_header_reads_only_the_header(tmp_path):
    path = _bomb(tmp_path / "bomb.nii.gz", _header_bytes((2048, 2048, 160)), members=40)

    (problem,) = discover_series([path])[1]

    assert problem.reason.startswith("declared image size 2048 x 2048 x 160 x float32 needs ")
