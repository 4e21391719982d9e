"""Binary morphology with square structuring elements, as ``scipy.ndimage`` computes it, faster.

``ndimage.binary_erosion`` / ``binary_dilation`` visit every element of the structuring element
for every pixel; a square is separable (a row of ``size`` then a column of ``size``), so each
pass here is ``size - 1`` shifted AND / OR of whole arrays. The results are the same to the pixel
as ndimage's with ``structure=np.ones((size, size), bool)`` and its default ``border_value=0``
(outside the image counts as background: erosion clears a border, dilation adds nothing from
outside); tests compare the two. The tumour model's head mask (``tumor.head_mask``) runs an
opening, a closing and a dilation on every slice of a volume: ndimage took ~7 ms a slice.
"""

from __future__ import annotations

import numpy as np


def _index(axis: int, part: slice) -> tuple[slice, ...]:
    """The index selecting ``part`` along ``axis`` of a 2D array."""
    return (part, slice(None)) if axis == 0 else (slice(None), part)


def _square_pass(mask: np.ndarray, size: int, axis: int, erode: bool) -> np.ndarray:
    """One line of ``size`` pixels along ``axis``: AND (erosion) or OR (dilation) of the pixels
    within ``size // 2`` of each pixel, outside the image counting as False."""
    radius = size // 2
    out = mask.copy()
    n = mask.shape[axis]
    for d in range(1, radius + 1):
        if d >= n:
            break
        ahead, behind = _index(axis, slice(None, n - d)), _index(axis, slice(d, None))
        if erode:
            out[ahead] &= mask[behind]
            out[behind] &= mask[ahead]
        else:
            out[ahead] |= mask[behind]
            out[behind] |= mask[ahead]
    if erode and radius:
        out[_index(axis, slice(None, radius))] = False
        out[_index(axis, slice(max(n - radius, 0), None))] = False
    return out


def _square(mask: np.ndarray, size: int, iterations: int, erode: bool) -> np.ndarray:
    if size % 2 != 1:
        raise ValueError(f"size must be odd (a centred square), not {size}")
    out = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        out = _square_pass(_square_pass(out, size, 1, erode), size, 0, erode)
    return out


def erode_square(mask: np.ndarray, size: int, iterations: int = 1) -> np.ndarray:
    """``ndimage.binary_erosion(mask, np.ones((size, size), bool), iterations)`` of a 2D mask."""
    return _square(mask, size, iterations, erode=True)


def dilate_square(mask: np.ndarray, size: int, iterations: int = 1) -> np.ndarray:
    """``ndimage.binary_dilation(mask, np.ones((size, size), bool), iterations)`` of a 2D mask."""
    return _square(mask, size, iterations, erode=False)


def open_square(mask: np.ndarray, size: int, iterations: int = 1) -> np.ndarray:
    """``ndimage.binary_opening(mask, np.ones((size, size), bool), iterations)``: erosion, then dilation."""
    return dilate_square(erode_square(mask, size, iterations), size, iterations)


def close_square(mask: np.ndarray, size: int, iterations: int = 1) -> np.ndarray:
    """``ndimage.binary_closing(mask, np.ones((size, size), bool), iterations)``: dilation, then erosion."""
    return erode_square(dilate_square(mask, size, iterations), size, iterations)
