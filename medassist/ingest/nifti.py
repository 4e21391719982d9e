"""NIfTI files (.nii, .nii.gz): one Series per file, read with nibabel.

NIfTI voxels are indexed (i, j, k) with an affine to RAS millimetres. We expose them as
(slices, rows, columns) = (k, j, i) and convert the affine to DICOM's LPS, so Geometry means the
same thing for both formats. No reorientation here: that is the preprocess stage's job.

The same limits as DICOM hold, checked on the header alone before nibabel reads anything
(``nifti_layout``): at most ``MAX_DECODED_BYTES`` decoded, a voxel offset inside the file and header
extensions that end before it (nibabel reads each extension's declared size whole), and voxel data
that the file, or for .nii.gz a deflate stream of the file's size, can hold (deflate never expands
more than ``MAX_DEFLATE_RATIO`` times). nibabel then reads exactly the declared voxels: a gzip
bomb's stream is never expanded past them. Volumes with no finite voxel, an infinite one, or one
value throughout are refused when loaded.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medassist.datamodel import Geometry, Image, IngestProblem, Series
from medassist.errors import MedassistError
from medassist.ingest.dicom import MAX_DECODED_BYTES, first_line
from medassist.ingest.pixels import percentile_scale
from medassist.ingest.uids import uid_from_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DEFAULT_MODALITY = "MR"
# Deflate's best case is 258 bytes from 2 bits: no stream expands more than 1032 times.
MAX_DEFLATE_RATIO = 1032
# Bytes of header extensions (between the header and the voxels) a file may have.
MAX_EXTENSION_BYTES = 16 * 1024**2
_HEADER_CLASSES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Column permutation taking our (slice, row, column) indices to nibabel's (i, j, k).
_SRC_TO_IJK = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
)


@dataclass(frozen=True)
class NiftiLayout:
    """What a NIfTI header declares, read from its first bytes only."""

    header: nib.Nifti1Header
    shape: tuple[int, ...]
    dtype: np.dtype
    vox_offset: int

    @property
    def voxel_bytes(self) -> int:
        """Bytes of stored voxels the header declares."""
        return math.prod(self.shape) * self.dtype.itemsize


def is_nifti_path(path: str | Path) -> bool:
    """True for names ending in .nii or .nii.gz (any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti_series(path: str, *, modality_override: str | None = None) -> Series | IngestProblem:
    """Header-only read of a NIfTI file into a Series (pixels are loaded by ``Series.load``)."""
    try:
        layout = nifti_layout(path)
    except Exception as exc:  # nibabel raises several types for broken headers
        return IngestProblem(path, f"unreadable NIfTI: {first_line(exc)}")
    if isinstance(layout, str):
        return IngestProblem(path, layout)
    shape, dtype = layout.shape, layout.dtype
    try:
        affine = np.asarray(layout.header.get_best_affine(), dtype=float)
    except Exception as exc:
        return IngestProblem(path, f"unreadable NIfTI: {first_line(exc)}")
    if dtype.fields is not None:
        return IngestProblem(path, f"unsupported NIfTI data type {dtype} (colour/structured voxels)", kind="unsupported")
    spatial = _spatial_shape(shape)
    if isinstance(spatial, str):
        return IngestProblem(path, spatial, kind="unsupported" if spatial.startswith("4D") else "error")
    if not np.all(np.isfinite(affine)):
        return IngestProblem(path, "NIfTI affine is not finite")

    geometry = nifti_geometry(affine, n_slices=spatial[2])
    return Series(
        study_uid=uid_from_path("study", path),
        series_uid=uid_from_path("series", path),
        patient_id="",
        accession="",
        modality=(modality_override or DEFAULT_MODALITY).upper(),
        body_part="",
        source_path=path,
        paths=(path,),
        loader=functools.partial(load_nifti_image, path, spatial, geometry),
        description=Path(path).name,
        n_instances=1,
    )


def _open(path: str) -> io.BufferedIOBase:
    """The file's bytes as nibabel reads them: gunzipped for .gz names."""
    return gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")  # type: ignore[return-value]


def nifti_layout(path: str) -> NiftiLayout | str:
    """The header's declarations, or why the file cannot be read safely. Reads (gunzips) the header,
    and its extensions when it has some (at most ``MAX_EXTENSION_BYTES``), nothing more."""
    with _open(path) as fp:
        head = fp.read(544)
        if len(head) < 348:
            return f"unreadable NIfTI: the file ends inside its header ({len(head)} bytes)"
        size = _header_size(head)
        if size is None:
            return "unreadable NIfTI: not a NIfTI-1 or NIfTI-2 header"
        header = _HEADER_CLASSES[size].from_fileobj(io.BytesIO(head[:size] + bytes(4)))
        layout = NiftiLayout(header, tuple(int(n) for n in header.get_data_shape()), header.get_data_dtype(),
                             int(header.get_data_offset()))
        problem = _declared_size_problem(layout) or _offset_problem(layout, size)
        if problem is None and head[size : size + 1] not in (b"", b"\0"):
            extensions = head[size + 4 :] + fp.read(max(0, layout.vox_offset - len(head)))
            problem = _extension_problem(extensions[: layout.vox_offset - size - 4], header.endianness)
    return problem or _stored_size_problem(path, layout) or layout


def _header_size(head: bytes) -> int | None:
    """348 (NIfTI-1) or 540 (NIfTI-2) from sizeof_hdr, in either byte order; None otherwise."""
    for order in ("<", ">"):
        (size,) = struct.unpack(order + "i", head[:4])
        if size in _HEADER_CLASSES and len(head) >= size:
            return size
    return None


def _declared_size_problem(layout: NiftiLayout) -> str | None:
    """Why the declared voxels are too many to decode (``MAX_DECODED_BYTES``), or None."""
    if not layout.shape or min(layout.shape) < 1:
        return None  # not an image: ``_spatial_shape`` says so
    needed = math.prod(layout.shape) * max(4, layout.dtype.itemsize)  # float32 copy or the stored values
    if needed <= MAX_DECODED_BYTES:
        return None
    dims = " x ".join(map(str, layout.shape))
    return (f"declared image size {dims} x {layout.dtype} needs {needed} bytes decoded, over the "
            f"{MAX_DECODED_BYTES} byte limit")


def _offset_problem(layout: NiftiLayout, header_size: int) -> str | None:
    """Why the voxel offset cannot be where the voxels of a single-file NIfTI start, or None."""
    first = header_size + 4
    if layout.vox_offset < first:
        return f"NIfTI voxel offset {layout.vox_offset} lies inside the header (at least {first})"
    if layout.vox_offset - first > MAX_EXTENSION_BYTES:
        return (f"NIfTI voxel offset {layout.vox_offset} leaves {layout.vox_offset - first} bytes of header "
                f"extensions (at most {MAX_EXTENSION_BYTES})")
    return None


def _extension_problem(extensions: bytes, endianness: str) -> str | None:
    """Why the header extensions (the bytes between header and voxels) do not each end before the
    voxels, or None: nibabel reads each extension's declared size in one read."""
    order = "<" if endianness == "<" else ">"
    offset = 0
    while len(extensions) - offset >= 16:
        (esize,) = struct.unpack(order + "i", extensions[offset : offset + 4])
        if esize < 16 or esize > len(extensions) - offset:
            return (f"NIfTI header extension of {esize} bytes does not fit the {len(extensions) - offset} bytes "
                    "left before the voxels")
        offset += esize
    return None


def _stored_size_problem(path: str, layout: NiftiLayout) -> str | None:
    """Why the file cannot hold the declared voxels (a .nii shorter than them; a .nii.gz smaller
    than the deflate stream they would need), or None. Nothing is decompressed."""
    if not layout.shape or min(layout.shape) < 1:
        return None
    stored = os.path.getsize(path)
    needed = layout.vox_offset + layout.voxel_bytes
    if not str(path).lower().endswith(".gz"):
        if stored < needed:
            return (f"NIfTI voxel data truncated: the header declares {layout.voxel_bytes} bytes from byte "
                    f"{layout.vox_offset}, the file holds {max(stored - layout.vox_offset, 0)}")
        return None
    if needed > stored * MAX_DEFLATE_RATIO:
        return (f"NIfTI voxel data truncated: the header declares {needed} bytes, more than a gzip stream of "
                f"{stored} bytes can hold")
    return None


def _spatial_shape(shape: tuple[int, ...]) -> tuple[int, int, int] | str:
    """(i, j, k) sizes of a 2D or 3D image (trailing size-1 axes ignored), or why not."""
    trimmed = list(shape)
    while len(trimmed) > 3 and trimmed[-1] == 1:
        trimmed.pop()
    if len(trimmed) > 3:
        return f"4D NIfTI ({' x '.join(map(str, shape))}) is not supported; split the volumes first"
    if len(trimmed) < 2 or min(trimmed) < 1:
        return f"NIfTI shape {shape} is not an image"
    while len(trimmed) < 3:
        trimmed.append(1)
    return trimmed[0], trimmed[1], trimmed[2]


def nifti_geometry(ras_affine: np.ndarray, *, n_slices: int) -> Geometry:
    """Geometry for (slice, row, column) = (k, j, i) indices, in LPS millimetres."""
    affine = _RAS_TO_LPS @ ras_affine @ _SRC_TO_IJK
    slice_step, row_step, col_step = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    spacing = tuple(float(np.linalg.norm(v)) or 1.0 for v in (slice_step, row_step, col_step))
    row_dir = col_step / spacing[2]  # DICOM "row direction": the way column indices grow
    col_dir = row_step / spacing[1]
    positions = tuple(
        tuple(float(v) for v in affine[:3, 3] + s * slice_step) for s in range(n_slices)
    )
    return Geometry(
        spacing=spacing,  # type: ignore[arg-type]
        orientation=tuple(float(v) for v in (*row_dir, *col_dir)),
        positions=positions,  # type: ignore[arg-type]
        affine=affine,
    )


def load_nifti_image(path: str, spatial: tuple[int, int, int], geometry: Geometry) -> Image:
    """Read the voxels (scl_slope/inter applied), as float32 (slices, rows, columns).

    NaN voxels (common outside a brain mask) become 0 so that models see finite values. A volume
    with no finite voxel, with an infinite one, or with one value throughout is refused: there is
    no image to score (a model would still give a score).
    """
    try:
        data = np.asarray(nib.load(path).get_fdata(dtype=np.float32))
    except Exception as exc:
        raise MedassistError(f"{path}: NIfTI voxels unreadable: {first_line(exc)}") from exc
    if data.size != spatial[0] * spatial[1] * spatial[2]:
        raise MedassistError(f"{path}: NIfTI holds {data.size} voxels, header says {spatial}")
    problem = voxel_values_problem(data)
    if problem:
        raise MedassistError(f"{path}: {problem}")
    volume = data.reshape(spatial)  # (i, j, k)
    pixels = np.ascontiguousarray(volume.transpose(2, 1, 0), dtype=np.float32)
    np.nan_to_num(pixels, copy=False, nan=0.0)
    return Image(
        pixels=pixels,
        display=percentile_scale(pixels),
        geometry=geometry,
        window=None,
        photometric="MONOCHROME2",
    )


def voxel_values_problem(data: np.ndarray) -> str | None:
    """Why NIfTI voxel values are no image (none finite, some infinite, all one value with NaN
    counted as 0), or None. Makes no copy of the voxels."""
    infinite = int(np.count_nonzero(np.isinf(data)))
    missing = int(np.count_nonzero(np.isnan(data)))
    if infinite + missing == data.size:
        return f"NIfTI volume has no finite voxel (all {data.size} are NaN or infinite)"
    if infinite:
        return f"NIfTI volume holds {infinite} infinite voxel value(s): the data or its scaling is corrupt"
    low, high = float(np.nanmin(data)), float(np.nanmax(data))
    if missing:  # NaN voxels become 0
        low, high = min(low, 0.0), max(high, 0.0)
    if low == high:
        return f"NIfTI volume is constant (every voxel {low:g}): no image to score"
    return None
