"""NIfTI files (.nii, .nii.gz): one Series per file, read with nibabel.

NIfTI voxels are indexed (i, j, k) with an affine to RAS millimetres. We expose them as
(slices, rows, columns) = (k, j, i) and convert the affine to DICOM's LPS, so Geometry means the
same thing for both formats. No reorientation here: that is the preprocess stage's job.
"""

from __future__ import annotations

import functools
from pathlib import Path

import nibabel as nib
import numpy as np

from medassist.datamodel import Geometry, Image, IngestProblem, Series
from medassist.errors import MedassistError
from medassist.ingest.dicom import first_line
from medassist.ingest.pixels import percentile_scale
from medassist.ingest.uids import uid_from_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DEFAULT_MODALITY = "MR"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Column permutation taking our (slice, row, column) indices to nibabel's (i, j, k).
_SRC_TO_IJK = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
)


def is_nifti_path(path: str | Path) -> bool:
    """True for names ending in .nii or .nii.gz (any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti_series(path: str, *, modality_override: str | None = None) -> Series | IngestProblem:
    """Header-only read of a NIfTI file into a Series (pixels are loaded by ``Series.load``)."""
    try:
        img = nib.load(path)
        shape = tuple(int(n) for n in img.shape)
        affine = np.asarray(img.affine, dtype=float)
        dtype = img.get_data_dtype()
    except Exception as exc:  # nibabel raises several types for broken files
        return IngestProblem(path, f"unreadable NIfTI: {first_line(exc)}")
    if dtype.fields is not None:
        return IngestProblem(path, f"unsupported NIfTI data type {dtype} (colour/structured voxels)")
    spatial = _spatial_shape(shape)
    if isinstance(spatial, str):
        return IngestProblem(path, spatial)
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

    NaN voxels (common outside a brain mask) become 0 so that models see finite values.
    """
    try:
        data = np.asarray(nib.load(path).get_fdata(dtype=np.float32))
    except Exception as exc:
        raise MedassistError(f"{path}: NIfTI voxels unreadable: {first_line(exc)}") from exc
    if data.size != spatial[0] * spatial[1] * spatial[2]:
        raise MedassistError(f"{path}: NIfTI holds {data.size} voxels, header says {spatial}")
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

