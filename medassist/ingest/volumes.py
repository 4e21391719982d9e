"""What the single-file volume readers (``nifti``, ``research_volume``) share.

Each reader names its format in the messages (``kind``: "NIfTI", "NRRD", "MetaImage"); the limits
and the checks are the same for all: the declared shape must be a 2D or 3D image, decoding it may
need at most ``MAX_DECODED_BYTES``, the file must be able to hold the declared voxels, and a volume
with no finite voxel, an infinite one or one value throughout is no image.
"""

from __future__ import annotations

import math

import numpy as np

from medassist.datamodel import Geometry, Image
from medassist.ingest.dicom import MAX_DECODED_BYTES
from medassist.ingest.pixels import percentile_scale

# Modality of a volume file whose header does not say (NIfTI never does): these are brain MRIs.
DEFAULT_MODALITY = "MR"
# Deflate's best case is 258 bytes from 2 bits: no stream expands more than 1032 times.
MAX_DEFLATE_RATIO = 1032


def spatial_shape(shape: tuple[int, ...], kind: str) -> tuple[int, int, int] | str:
    """(i, j, k) sizes of a 2D or 3D image (trailing size-1 axes ignored), or why not."""
    trimmed = list(shape)
    while len(trimmed) > 3 and trimmed[-1] == 1:
        trimmed.pop()
    if len(trimmed) > 3:
        return f"4D {kind} ({' x '.join(map(str, shape))}) is not supported; split the volumes first"
    if len(trimmed) < 2 or min(trimmed) < 1:
        return f"{kind} shape {shape} is not an image"
    while len(trimmed) < 3:
        trimmed.append(1)
    return trimmed[0], trimmed[1], trimmed[2]


def declared_size_problem(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """Why the declared voxels are too many to decode (``MAX_DECODED_BYTES``), or None."""
    if not shape or min(shape) < 1:
        return None  # not an image: ``spatial_shape`` says so
    needed = math.prod(shape) * max(4, dtype.itemsize)  # float32 copy or the stored values
    if needed <= MAX_DECODED_BYTES:
        return None
    dims = " x ".join(map(str, shape))
    return (f"declared image size {dims} x {dtype} needs {needed} bytes decoded, over the "
            f"{MAX_DECODED_BYTES} byte limit")


def truncated_problem(kind: str, *, voxel_bytes: int, offset: int, stored: int, holder: str = "the file") -> str | None:
    """Why uncompressed voxels of ``voxel_bytes`` from byte ``offset`` do not fit a file of
    ``stored`` bytes (``holder`` names it in the message), or None."""
    if stored >= offset + voxel_bytes:
        return None
    return (f"{kind} voxel data truncated: the header declares {voxel_bytes} bytes from byte {offset}, "
            f"{holder} holds {max(stored - offset, 0)}")


def deflate_bound_problem(kind: str, *, needed: int, stream_bytes: int, stream: str = "gzip") -> str | None:
    """Why ``needed`` decompressed bytes cannot come from ``stream_bytes`` of deflate data, or None.
    Nothing is decompressed."""
    if needed <= stream_bytes * MAX_DEFLATE_RATIO:
        return None
    return (f"{kind} voxel data truncated: the header declares {needed} bytes, more than a {stream} stream of "
            f"{stream_bytes} bytes can hold")


def voxel_values_problem(data: np.ndarray, kind: str) -> str | None:
    """Why voxel values are no image (none finite, some infinite, all one value with NaN counted
    as 0), or None. Makes no copy of the voxels."""
    infinite = int(np.count_nonzero(np.isinf(data)))
    missing = int(np.count_nonzero(np.isnan(data)))
    if infinite + missing == data.size:
        return f"{kind} volume has no finite voxel (all {data.size} are NaN or infinite)"
    if infinite:
        return f"{kind} volume holds {infinite} infinite voxel value(s): the data or its scaling is corrupt"
    low, high = float(np.nanmin(data)), float(np.nanmax(data))
    if missing:  # NaN voxels become 0
        low, high = min(low, 0.0), max(high, 0.0)
    if low == high:
        return f"{kind} volume is constant (every voxel {low:g}): no image to score"
    return None


def volume_image(pixels: np.ndarray, geometry: Geometry) -> Image:
    """The Image of checked voxels already in (slices, rows, columns) order: float32, NaN as 0
    (common outside a brain mask), displayed by percentiles (volume files carry no window)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    np.nan_to_num(pixels, copy=False, nan=0.0)
    return Image(
        pixels=pixels,
        display=percentile_scale(pixels),
        geometry=geometry,
        window=None,
        photometric="MONOCHROME2",
    )
