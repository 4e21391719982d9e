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
value throughout are refused when loaded. These checks are shared with the other volume readers
(``volumes``).
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
from medassist.ingest.dicom import first_line
from medassist.ingest.geometry import affine_geometry
from medassist.ingest.uids import uid_from_path
from medassist.ingest.volumes import (
    DEFAULT_MODALITY,
    MAX_DEFLATE_RATIO,  # noqa: F401 (imported from here by callers)
    declared_size_problem,
    deflate_bound_problem,
    spatial_shape,
    truncated_problem,
    voxel_values_problem,
    volume_image,
)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
KIND = "NIfTI"  # the format's name in messages
# Bytes of header extensions (between the header and the voxels) a file may have.
MAX_EXTENSION_BYTES = 16 * 1024**2
_HEADER_CLASSES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
    spatial = spatial_shape(shape, KIND)
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
        problem = declared_size_problem(layout.shape, layout.dtype) or _offset_problem(layout, size)
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
    if not str(path).lower().endswith(".gz"):
        return truncated_problem(KIND, voxel_bytes=layout.voxel_bytes, offset=layout.vox_offset, stored=stored)
    return deflate_bound_problem(KIND, needed=layout.vox_offset + layout.voxel_bytes, stream_bytes=stored)


def nifti_geometry(ras_affine: np.ndarray, *, n_slices: int) -> Geometry:
    """Geometry for (slice, row, column) = (k, j, i) indices, in LPS millimetres: NIfTI's RAS
    affine with its x and y axes negated."""
    return affine_geometry(_RAS_TO_LPS @ ras_affine, n_slices=n_slices)


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
    problem = voxel_values_problem(data, KIND)
    if problem:
        raise MedassistError(f"{path}: {problem}")
    volume = data.reshape(spatial)  # (i, j, k)
    return volume_image(volume.transpose(2, 1, 0), geometry)
