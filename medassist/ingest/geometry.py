"""Patient-space geometry shared by the DICOM and volume readers (DICOM LPS, millimetres).

Index order everywhere is (slice, row, column). DICOM's ImageOrientationPatient gives the row
direction (the way column indices grow) then the column direction (the way row indices grow);
PixelSpacing is (distance between rows, distance between columns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medassist.datamodel import Geometry

Vec3 = tuple[float, float, float]

# Slices count as evenly spaced when every gap is within this fraction of the median gap.
_EVEN_SPACING_TOLERANCE = 0.01
# Column permutation taking our (slice, row, column) indices to a volume file's (i, j, k).
_SRC_TO_IJK = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
)


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of the image plane: cross(row direction, column direction)."""
    row_dir = np.asarray(orientation[:3], dtype=float)
    col_dir = np.asarray(orientation[3:6], dtype=float)
    normal = np.cross(row_dir, col_dir)
    length = np.linalg.norm(normal)
    return normal / length if length > 0 else normal


def position_along_normal(position: Sequence[float], orientation: Sequence[float]) -> float:
    """Where a slice sits along the stack: ImagePositionPatient . slice normal (mm)."""
    return float(np.dot(np.asarray(position, dtype=float), slice_normal(orientation)))


def build_geometry(
    *,
    n_slices: int,
    pixel_spacing: tuple[float, float] | None,
    orientation: Sequence[float] | None,
    positions: Sequence[Vec3 | None] | None,
    nominal_slice_spacing: float | None = None,
) -> Geometry:
    """Geometry of an ordered stack of slices.

    ``positions`` must already be in stack order. The affine is filled only when the orientation
    and every slice position are known and the slices are evenly spaced (a single slice counts).
    Without positions the slice spacing falls back to the size of ``nominal_slice_spacing`` (e.g.
    SpacingBetweenSlices, which some scanners write negative), else 1.0.
    """
    row_spacing, col_spacing = pixel_spacing or (1.0, 1.0)
    fallback = _positive_or_one(nominal_slice_spacing)
    slice_spacing = 1.0 if n_slices == 1 else fallback
    known = (
        orientation is not None
        and positions is not None
        and len(positions) == n_slices
        and all(p is not None for p in positions)
    )
    if not known:
        return Geometry(
            spacing=(slice_spacing, float(row_spacing), float(col_spacing)),
            orientation=tuple(float(v) for v in orientation) if orientation is not None else None,
        )

    pos = np.asarray(positions, dtype=float)
    normal = slice_normal(orientation)  # type: ignore[arg-type]
    step: np.ndarray | None
    if n_slices == 1:
        step = normal * slice_spacing
    else:
        gaps = np.diff(pos @ normal)
        median_gap = float(np.median(np.abs(gaps)))
        if median_gap > 0:
            slice_spacing = median_gap
        even = median_gap > 0 and bool(
            np.all(np.abs(gaps - median_gap) <= _EVEN_SPACING_TOLERANCE * median_gap)
        )
        # The actual first-to-last step (not the normal) keeps tilted-gantry stacks correct.
        step = (pos[-1] - pos[0]) / (n_slices - 1) if even else None

    affine = None
    if step is not None:
        row_dir = np.asarray(orientation[:3], dtype=float)  # type: ignore[index]
        col_dir = np.asarray(orientation[3:6], dtype=float)  # type: ignore[index]
        affine = np.eye(4)
        affine[:3, 0] = step
        affine[:3, 1] = col_dir * row_spacing
        affine[:3, 2] = row_dir * col_spacing
        affine[:3, 3] = pos[0]

    return Geometry(
        spacing=(float(slice_spacing), float(row_spacing), float(col_spacing)),
        orientation=tuple(float(v) for v in orientation),  # type: ignore[union-attr]
        positions=tuple(tuple(float(v) for v in p) for p in pos),  # type: ignore[misc]
        affine=affine,
    )


def affine_geometry(lps_ijk_affine: np.ndarray, *, n_slices: int) -> Geometry:
    """Geometry of a volume file whose 4x4 affine maps its (i, j, k) voxel indices (i varying
    fastest in the file) to LPS millimetres, for our (slice, row, column) = (k, j, i) indices."""
    affine = lps_ijk_affine @ _SRC_TO_IJK
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


def _positive_or_one(spacing: float | None) -> float:
    """|spacing| when it is a usable distance, else 1.0."""
    if spacing is None or not math.isfinite(spacing) or spacing == 0:
        return 1.0
    return abs(float(spacing))
