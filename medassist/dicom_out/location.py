"""Where a finding is, from its saliency map: the peak and the region around it, per image plane.

``finding_location(plane)`` turns one 2D map on the source pixel grid into a ``FindingLocation``:

* ``peak_rc``: (row, column) of the map's maximum, found by the review app's own peak finder
  (``review.logic.saliency_peak``: the first maximum in row order), so the SR and the viewer
  point at the same pixel;
* ``region_polygon``: the bounding box of the connected part (8-neighbours) of the map at or above
  half its peak that holds the peak, as a closed polygon of (column, row) corners on pixel edges
  (the box holds every pixel of that part, the peak's included).

``plane_locations(saliency, slices, n_planes)`` does this for the planes a finding names: the one
plane of a radiograph, or each flagged slice of a volume (the worklist's ``slices``; a triage map
of a volume holds the flagged slices only, ``(k, rows, cols)``, and is laid out on all slices
first with ``review.logic.expand_slice_maps``). A plane whose map has no positive value gives no
location.

Coordinates follow DICOM's 2D image convention (PS3.3 C.18.6.1.2, used by SCOORD): (column, row),
the top-left corner of the top-left pixel at (0, 0), so a pixel's centre is at (c + 0.5, r + 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medassist.review.logic import expand_slice_maps, saliency_peak

REGION_LEVEL = 0.5  # the region: the map at or above this share of its peak


@dataclass(frozen=True)
class FindingLocation:
    """A finding's location on one image plane, in source pixels.

    ``slice_index``: the plane (instance, or frame of a multi-frame instance) in the series'
    slice order; ``peak_rc``: (row, column) of the peak pixel; ``region_polygon``: closed polygon
    ((column, row) pairs, first == last) around the half-peak region holding the peak.
    """

    slice_index: int
    peak_rc: tuple[int, int]
    region_polygon: tuple[tuple[float, float], ...]

    @property
    def peak_point(self) -> tuple[float, float]:
        """The peak pixel's centre as DICOM (column, row) image coordinates."""
        return (self.peak_rc[1] + 0.5, self.peak_rc[0] + 0.5)


def finding_location(plane: np.ndarray, slice_index: int = 0) -> FindingLocation | None:
    """The location on one 2D map (rows, cols); None when the map has no positive value."""
    from scipy import ndimage

    sal = np.nan_to_num(np.asarray(plane, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if sal.ndim != 2 or sal.size == 0:
        raise ValueError(f"a plane's map must be 2D (rows, cols), got shape {sal.shape}")
    _, r, c = saliency_peak(sal[None], slice_index)
    peak = float(sal[r, c])
    if not peak > 0:
        return None
    labels, _ = ndimage.label(sal >= REGION_LEVEL * peak, structure=np.ones((3, 3), dtype=bool))
    rows, cols = np.nonzero(labels == labels[r, c])
    r0, r1, c0, c1 = float(rows.min()), float(rows.max() + 1), float(cols.min()), float(cols.max() + 1)
    polygon = ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))
    return FindingLocation(slice_index=int(slice_index), peak_rc=(int(r), int(c)), region_polygon=polygon)


def plane_locations(saliency: np.ndarray, slices: Sequence[int], n_planes: int) -> list[FindingLocation]:
    """Locations on the planes a finding names, in ascending plane order.

    ``saliency``: (planes, rows, cols), either one map per plane of the series (``n_planes``) or,
    for a volume, one per flagged slice in ``slices`` (ascending). The planes: plane 0 of a single
    image; else the flagged ``slices`` within range, or, when none are listed, the plane where the
    map peaks. Raises ValueError when the map's planes fit neither layout.
    """
    sal = np.asarray(saliency, dtype=np.float32)
    if sal.ndim == 2:
        sal = sal[None]
    if sal.ndim != 3:
        raise ValueError(f"saliency map has shape {sal.shape}; expected (rows, cols) or (planes, rows, cols)")
    sal = expand_slice_maps(sal, slices, n_planes)
    if sal.shape[0] != n_planes:
        raise ValueError(f"saliency map has {sal.shape[0]} planes, the series {n_planes}")
    if n_planes == 1:
        wanted = [0]
    else:
        wanted = sorted({int(i) for i in slices if 0 <= int(i) < n_planes})
        if not wanted:
            wanted = [saliency_peak(sal)[0]]
    found = (finding_location(sal[i], i) for i in wanted)
    return [loc for loc in found if loc is not None]
