"""N4 bias-field correction of MR volumes (SimpleITK), for measuring it in the tumour model's path.

``n4_correct`` fits the smooth multiplicative bias field on a shrunk copy of the volume (inside a
head mask: Otsu's foreground unless one is given) and divides it out at full resolution (the
standard ``GetLogBiasFieldAsImage`` approach), so the result keeps the volume's grid, shape and
dtype. ``n4_image`` does the same to an ingest ``Image`` (pixels corrected, display rescaled by
percentiles as ingest scales a NIfTI volume, geometry kept). Not part of the shipped
preprocessing: issue 16/19 measured it with ``scripts/tumor_volume_validation.py --n4``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from medassist.errors import MedassistError

WHAT = "N4 bias-field correction"  # the start of every error message here


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - SimpleITK is a dependency of this module
        raise MedassistError(f"{WHAT} needs SimpleITK, which is not installed ({exc})") from exc
    return sitk


def shrink_factors(spacing_mm: Sequence[float], shrink: int) -> tuple[int, ...]:
    """Per-axis shrink factors (array axis order): ``shrink`` along the finest axis, less along
    coarser ones so the shrunk voxels are about as long on every axis (a 7 mm slice axis of a 1 mm
    in-plane stack is not shrunk), never under 1."""
    finest = min(spacing_mm)
    return tuple(max(1, min(shrink, int(round(shrink * finest / s)))) for s in spacing_mm)


def n4_correct(pixels: np.ndarray, spacing_mm: Sequence[float], *, shrink: int = 4,
               iterations: Sequence[int] = (50, 50, 30), mask: np.ndarray | None = None) -> np.ndarray:
    """``pixels`` (2D or 3D, array axis order, e.g. (slices, rows, columns)) divided by their N4
    bias field.

    ``spacing_mm``: voxel spacing in the same axis order. ``shrink``: the fit runs on the volume
    shrunk by up to this factor per axis (``shrink_factors``). ``iterations``: maximum iterations
    per fitting level (their number is the number of levels). ``mask``: where to fit (non-zero =
    inside); default Otsu's foreground. Only voxels with positive values are fitted (N4 works on
    the log). The field is smooth and defined everywhere, so voxels outside the mask are divided
    by it too. Returns an array of ``pixels``' shape and dtype (float32 for integer input).

    Raises MedassistError naming what failed: not 2D/3D, spacing not matching, non-finite values,
    a constant volume (nothing to correct: refused rather than returned unchanged, as ingest refuses
    a constant volume), an empty mask, or SimpleITK failing.
    """
    sitk = _sitk()
    array = np.asarray(pixels)
    if array.ndim not in (2, 3):
        raise MedassistError(f"{WHAT}: expected a 2D or 3D volume, got shape {array.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != array.ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise MedassistError(f"{WHAT}: spacing {spacing} does not fit a volume of shape {array.shape}")
    if int(shrink) < 1 or not iterations or any(int(i) < 1 for i in iterations):
        raise MedassistError(f"{WHAT}: shrink ({shrink}) and every iteration count ({list(iterations)}) "
                             "must be at least 1")
    values = array.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise MedassistError(f"{WHAT}: the volume holds NaN or infinite values")
    if float(values.max()) <= float(values.min()):
        raise MedassistError(f"{WHAT}: the volume is constant ({float(values.min()):.6g}): no bias field to fit")
    out_dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.dtype(np.float32)
    offset = min(float(values.min()), 0.0)
    if offset < 0:
        values = values - np.float32(offset)

    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing[::-1])  # SimpleITK's axis order is (x, y, z): the array's reversed
    try:
        if mask is None:
            head = sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1, 200)).astype(bool)
        else:
            head = np.asarray(mask) != 0
            if head.shape != array.shape:
                raise MedassistError(f"{WHAT}: mask shape {head.shape} does not fit the volume {array.shape}")
        head &= values > 0
        if not head.any():
            raise MedassistError(f"{WHAT}: the mask holds no voxel with a positive value")
        mask_image = sitk.GetImageFromArray(head.astype(np.uint8))
        mask_image.CopyInformation(image)
        factors = shrink_factors(spacing, int(shrink))[::-1]
        small, small_mask = sitk.Shrink(image, factors), sitk.Shrink(mask_image, factors)
        if not sitk.GetArrayViewFromImage(small_mask).any():
            raise MedassistError(f"{WHAT}: the mask vanishes when the volume is shrunk by {factors[::-1]}")
        corrector = sitk.N4BiasFieldCorrectionImageFilter()
        corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
        corrector.Execute(small, small_mask)
        log_bias = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image))
    except RuntimeError as exc:  # SimpleITK reports its failures as RuntimeError
        raise MedassistError(f"{WHAT} failed in SimpleITK: {str(exc).strip().splitlines()[-1]}") from exc
    corrected = values / np.exp(log_bias.astype(np.float32)) + np.float32(offset)
    return corrected.astype(out_dtype, copy=False)


def n4_image(image, *, shrink: int = 4, iterations: Sequence[int] = (50, 50, 30)):
    """An ingest ``Image`` with ``n4_correct``-ed pixels, its display rescaled by percentiles (as
    ingest displays a NIfTI volume) and its geometry, window and photometric kept."""
    from medassist.ingest.pixels import percentile_scale

    pixels = n4_correct(image.pixels, image.geometry.spacing, shrink=shrink, iterations=iterations)
    return dataclasses.replace(image, pixels=pixels, display=percentile_scale(pixels))
