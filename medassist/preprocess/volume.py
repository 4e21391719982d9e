"""Volumes for slice-wise 2D models: canonical orientation, acquisition plane, streamed slices,
an in-brain test per slice, and the rule that turns slice scores into one study score.

Index order is (slice, row, column) everywhere, as in ``medassist.datamodel.Image``.

Canonical orientation ("SPL"): axis 0 runs inferior -> superior, axis 1 anterior -> posterior,
axis 2 patient right -> left. An axial slice ``volume[k]`` is then displayed the radiological way
(anterior at the top, the patient's right on the viewer's left), which is how the 2D training
images are stored. Coronal and sagittal slices are cut so that superior is at the top.

Memory: ``reorient_canonical`` returns a strided *view* (no copy); ``iter_slices`` copies one batch
of slices at a time as float32, so a 512 x 512 x 300 volume is never duplicated, and never as
float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from medassist.datamodel import Image

# World axes of DICOM patient space (LPS): index 0 = +L, 1 = +P, 2 = +S.
_WORLD_NAMES = (("R", "L"), ("A", "P"), ("I", "S"))
# Canonical output axis i takes the world axis _CANONICAL_WORLD[i], increasing.
_CANONICAL_WORLD = (2, 1, 0)  # S, P, L
CANONICAL_CODES = ("S", "P", "L")
PLANES = ("axial", "coronal", "sagittal")  # the plane of slices cut across canonical axis 0, 1, 2
_ISOTROPY_TOLERANCE = 1.25  # spacings within this ratio count as isotropic


@dataclass(frozen=True)
class Axes:
    """How a canonical volume relates to the stored (slice, row, column) array.

    ``source_axes[i]``: the stored axis that canonical axis ``i`` comes from.
    ``flipped[i]``: whether that stored axis runs backwards along canonical axis ``i``.
    ``spacing``: millimetres between samples along each canonical axis.
    ``codes``: the direction each canonical axis increases towards ('S', 'P', 'L'), or '?' when
    the source had no usable affine (then the stored order is kept unchanged).
    """

    source_axes: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    codes: tuple[str, str, str] = CANONICAL_CODES

    @property
    def known(self) -> bool:
        """Whether the orientation came from an affine (else the stored order is used as is)."""
        return "?" not in self.codes

    def source_index(self, axis: int, index: int) -> int:
        """The stored index along ``source_axes[axis]`` of canonical index ``index`` on ``axis``."""
        n = self.shape[axis]
        return n - 1 - index if self.flipped[axis] else index

    def source_slice_index(self, axis: int, index: int) -> int | None:
        """The stored *slice* (axis 0) index of canonical slice ``index`` cut across ``axis``.

        None when the cut is not along the stored slice axis (a reformat: a canonical slice then
        spans many stored slices).
        """
        if self.source_axes[axis] != 0:
            return None
        return self.source_index(axis, index)


def world_axes_of(affine: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """For each voxel axis of a (slice,row,col)->LPS affine: its dominant world axis and sign.

    Like nibabel's ``io_orientation``: each voxel axis is assigned a distinct world axis, the one
    its direction vector is most aligned with (greedy on the largest absolute cosines).
    """
    directions = np.asarray(affine, dtype=float)[:3, :3]
    norms = np.linalg.norm(directions, axis=0)
    if np.any(norms <= 0) or not np.all(np.isfinite(directions)):
        raise ValueError("affine has a zero or non-finite axis")
    cosines = np.abs(directions / norms)
    world = [-1, -1, -1]
    taken: set[int] = set()
    for flat in np.argsort(-cosines, axis=None):
        w, v = divmod(int(flat), 3)  # row = world axis, column = voxel axis
        if world[v] < 0 and w not in taken:
            world[v] = w
            taken.add(w)
    negative = tuple(bool(directions[world[v], v] < 0) for v in range(3))
    return tuple(world), negative  # type: ignore[return-value]


def canonical_axes(affine: np.ndarray | None, shape: tuple[int, int, int],
                   spacing: tuple[float, float, float]) -> Axes:
    """The permutation and flips taking a stored array to canonical (S, P, L) order."""
    if affine is None:
        return Axes((0, 1, 2), (False, False, False), tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                    tuple(int(n) for n in shape), ("?", "?", "?"))  # type: ignore[arg-type]
    world, negative = world_axes_of(affine)
    source_axes, flipped = [], []
    for target_world in _CANONICAL_WORLD:
        v = world.index(target_world)
        source_axes.append(v)
        flipped.append(negative[v])
    norms = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return Axes(
        source_axes=tuple(source_axes),  # type: ignore[arg-type]
        flipped=tuple(flipped),  # type: ignore[arg-type]
        spacing=tuple(float(norms[v]) for v in source_axes),  # type: ignore[arg-type]
        shape=tuple(int(shape[v]) for v in source_axes),  # type: ignore[arg-type]
    )


def apply_axes(array: np.ndarray, axes: Axes) -> np.ndarray:
    """A view of ``array`` (slice, row, col) in the canonical order ``axes`` describes (no copy)."""
    view = np.transpose(array, axes.source_axes)
    index = tuple(slice(None, None, -1) if f else slice(None) for f in axes.flipped)
    return view[index]


def reorient_canonical(image: Image, source: str = "display") -> tuple[np.ndarray, Axes]:
    """The image's ``source`` array ('display' or 'pixels') as a canonical (S, P, L) view.

    The result is a strided view of the image's own array (no copy). Without an affine (e.g. a
    DICOM stack with uneven spacing) the stored order is returned with codes ('?', '?', '?').
    """
    array = getattr(image, source)
    if array.ndim != 3:
        raise ValueError(f"expected a (slices, rows, columns) array, got shape {array.shape}")
    axes = canonical_axes(image.geometry.affine, array.shape, image.geometry.spacing)
    return apply_axes(array, axes), axes


def acquisition_plane(axes: Axes) -> int:
    """The canonical axis to cut slices across: the acquisition plane's normal.

    - no affine: the stored slice axis (its position in the canonical order, i.e. 0);
    - anisotropic spacing (largest / smallest > 1.25): the axis with the largest spacing
      (a 5 mm axial stack of 0.5 mm pixels -> axial);
    - isotropic spacing but a much thinner extent on one axis (a slab): the axis with the fewest
      samples;
    - otherwise (an isotropic 3D volume): axial (axis 0).
    """
    if not axes.known:
        return axes.source_axes.index(0)
    spacing = np.asarray(axes.spacing, dtype=float)
    if spacing.max() / max(spacing.min(), 1e-6) > _ISOTROPY_TOLERANCE:
        return int(np.argmax(spacing))
    shape = np.asarray(axes.shape, dtype=float)
    thinnest = int(np.argmin(shape))
    others = np.delete(shape, thinnest)
    if shape[thinnest] < 0.5 * others.min():
        return thinnest
    return 0


def cut_slices(volume: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    """Slices ``start:stop`` across canonical ``axis`` as a view (n, rows, cols), display-oriented.

    Axial: anterior up, patient right on the left. Coronal: superior up, right on the left.
    Sagittal: superior up, anterior on the left.
    """
    if axis == 0:
        return volume[start:stop]
    if axis == 1:
        return np.moveaxis(volume[::-1, start:stop, :], 1, 0)
    if axis == 2:
        return np.moveaxis(volume[::-1, :, start:stop], 2, 0)
    raise ValueError(f"axis must be 0, 1 or 2, not {axis}")


def iter_slices(volume: np.ndarray | Image, axis: int = 0, batch: int = 16
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream (indices, slices) batches across ``axis``; slices are float32 (n, rows, cols) copies.

    ``volume`` is a canonical view (from ``reorient_canonical``) or an Image (then its display
    array is reoriented first). At most ``batch`` slices are copied at a time.
    """
    if isinstance(volume, Image):
        volume, _ = reorient_canonical(volume)
    if batch < 1:
        raise ValueError("batch must be at least 1")
    n = volume.shape[axis]
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        chunk = np.ascontiguousarray(cut_slices(volume, axis, start, stop), dtype=np.float32)
        yield np.arange(start, stop), chunk


def stored_plane(plane: np.ndarray, stored_shape: tuple[int, int, int], axes: Axes, axis: int, index: int
                 ) -> tuple[int, np.ndarray]:
    """Put a map drawn on canonical slice ``index`` across ``axis`` (as ``cut_slices`` shows it)
    back on the stored array: (stored slice index, (rows, cols) plane).

    Exact for any permutation and flips: the stored coordinates of every pixel of the canonical
    slice are read through the same views (``apply_axes``, ``cut_slices``) from zero-stride index
    grids, so nothing the size of the volume is allocated. Raises ValueError when the canonical
    slice is a reformat that spans several stored slices.
    """
    coords = []
    for k in range(3):
        shape = [1, 1, 1]
        shape[k] = stored_shape[k]
        grid = np.broadcast_to(np.arange(stored_shape[k]).reshape(shape), stored_shape)
        coords.append(np.asarray(cut_slices(apply_axes(grid, axes), axis, index, index + 1)[0]))
    if plane.shape != coords[0].shape:
        raise ValueError(f"map {plane.shape} does not fit canonical slice {coords[0].shape}")
    stored_slices = np.unique(coords[0])
    if len(stored_slices) != 1:
        raise ValueError("the canonical slice spans several stored slices (a reformat)")
    out = np.zeros(stored_shape[1:], dtype=np.asarray(plane).dtype)
    out[coords[1], coords[2]] = plane
    return int(stored_slices[0]), out


# --- which slices show brain --------------------------------------------------------------------


@dataclass(frozen=True)
class IntensityReference:
    """A volume's intensity scale, so that empty slices are judged against the whole volume."""

    low: float
    high: float
    threshold: float  # Otsu threshold on the 0..1 scale


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of values in 0..1 (a float in 0..1)."""
    hist, edges = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    if hist.sum() == 0:
        return 0.5
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def intensity_reference(volume: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.5),
                        max_samples: int = 2_000_000) -> IntensityReference:
    """Percentile range and Otsu threshold of a volume, from a strided subsample (bounded memory)."""
    flat = np.asarray(_sample_view(volume, max_samples), dtype=np.float32)
    low, high = (float(v) for v in np.percentile(flat, percentiles))
    if high <= low:
        return IntensityReference(low, low + 1.0, 1.0)
    scaled = (flat - low) / (high - low)
    return IntensityReference(low, high, otsu_threshold(scaled))


def _sample_view(volume: np.ndarray, max_samples: int) -> np.ndarray:
    """A strided subsample of a non-contiguous view without copying it whole."""
    per_axis = max(1, int(math.ceil((volume.size / max_samples) ** (1 / volume.ndim))))
    return volume[(slice(None, None, per_axis),) * volume.ndim].reshape(-1)


def brain_fraction(slice2d: np.ndarray, reference: IntensityReference | None = None) -> float:
    """Fraction of the slice's pixels above the Otsu foreground threshold.

    With a ``reference`` (from ``intensity_reference`` of the whole volume) the scale and threshold
    are the volume's, so an empty slice or a thin skull ring scores near 0. Without one (a lone
    2D image) the slice's own 1-99.5 percentile range and Otsu threshold are used, and a slice
    with no contrast scores 0.
    """
    img = np.asarray(slice2d, dtype=np.float32)
    if img.size == 0:
        return 0.0
    if reference is None:
        low, high = (float(v) for v in np.percentile(img, (1.0, 99.5)))
        if high - low <= 1e-6 * max(1.0, abs(high)):
            return 0.0
        scaled = (img - low) / (high - low)
        threshold = otsu_threshold(scaled)
    else:
        scaled = (img - reference.low) / (reference.high - reference.low)
        threshold = reference.threshold
    return float(np.count_nonzero(scaled > threshold)) / img.size


def in_brain(fractions: np.ndarray, *, min_fraction: float, min_relative: float) -> np.ndarray:
    """Slices that show enough tissue: an absolute floor and a floor relative to the fullest slice.

    The relative test drops the caps of a volume (vertex, skull base, neck) whatever the field of
    view; for a single slice it is always met.
    """
    fractions = np.asarray(fractions, dtype=float)
    if fractions.size == 0:
        return fractions.astype(bool)
    top = float(fractions.max())
    return (fractions >= min_fraction) & (fractions >= min_relative * top)


# --- slice scores -> one study score --------------------------------------------------------------


def window_length(n_slices: int, spacing_mm: float | None, extent_mm: float) -> int:
    """How many adjacent slices span ``extent_mm`` (at least 1, at most ``n_slices``).

    Unknown spacing counts as 5 mm (typical of clinical 2D stacks).
    """
    spacing = spacing_mm if spacing_mm and spacing_mm > 0 else 5.0
    return int(max(1, min(n_slices, round(extent_mm / spacing))))


@dataclass(frozen=True)
class NullModel:
    """Scores of normal slices, modelled as logit-normal (fitted on validation slices without tumour).

    Used to correct the study score for the number of places a false positive could come from.
    """

    logit_mean: float
    logit_std: float

    @classmethod
    def fit(cls, normal_scores: np.ndarray) -> "NullModel":
        logits = _logit(np.asarray(normal_scores, dtype=np.float64))
        return cls(float(np.mean(logits)), float(max(np.std(logits), 1e-3)))

    def tail(self, score: float) -> float:
        """P(a normal slice scores at least ``score``)."""
        from scipy.special import ndtr

        return float(ndtr(-(_logit(np.float64(score)) - self.logit_mean) / self.logit_std))

    def score_at_tail(self, tail: float) -> float:
        """The score a single normal slice exceeds with probability ``tail``."""
        from scipy.special import expit, ndtri

        tail = min(max(tail, 1e-300), 1.0 - 1e-16)
        return float(expit(self.logit_mean - self.logit_std * ndtri(tail)))


def _logit(p):
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def aggregate_study_score(
    slice_scores: np.ndarray,
    n_slices: int | None = None,
    *,
    spacing_mm: float | None = None,
    extent_mm: float = 10.0,
    null: NullModel | None = None,
    threshold: float | None = None,
    max_flagged: int = 10,
) -> tuple[float, tuple[int, ...]]:
    """One study score from per-slice probabilities, and the slices to show.

    Two steps, so that one threshold means the same on a 1-slice series and a 150-slice volume:

    1. Sustained evidence: the highest mean slice score over any run of ``w`` adjacent slices,
       ``w`` = the number of slices spanning ``extent_mm`` (10 mm: the smallest lesion the model
       should call). Skipped slices (outside the brain) count as 0. A real lesion spans adjacent
       slices and keeps its score; an isolated high slice in a thin-slice volume is diluted.
    2. Multiplicity correction (when a ``null`` model of normal-slice scores is given): a study
       offers ``m`` = ceil(n_scored / w) roughly independent places for a false positive, so the
       run's score ``s`` is replaced by the score whose single-slice tail probability equals the
       study's, 1 - (1 - tail(s)) ** m (Sidak). For ``m`` = 1 the score is unchanged; for normal
       volumes the study score is then distributed like one normal slice's score, whatever the
       slice count, while a tumour run (tail ~ 1e-6 or less) stays far above the threshold.

    A 1-slice series scores exactly its slice score; a volume whose slices all score ``s`` scores
    ``s`` before correction. ``n_slices`` is the stack length (default ``len(slice_scores)``).
    ``flagged``: the slices whose own score reaches ``threshold`` (the best run when ``threshold``
    is None), highest first, at most ``max_flagged``: what a reader should look at.
    """
    scores = np.nan_to_num(np.asarray(slice_scores, dtype=np.float64).reshape(-1), nan=0.0)
    n = int(n_slices) if n_slices is not None else scores.size
    if scores.size != n:
        raise ValueError(f"{scores.size} slice scores for {n} slices")
    if n == 0:
        return 0.0, ()
    w = window_length(n, spacing_mm, extent_mm)
    csum = np.concatenate([[0.0], np.cumsum(scores)])
    means = (csum[w:] - csum[:-w]) / w
    start = int(np.argmax(means))
    score = float(means[start])
    if null is not None:
        m = max(1, math.ceil(int(np.count_nonzero(scores > 0)) / w))
        if m > 1:
            tail = null.tail(score)
            study_tail = -math.expm1(m * math.log1p(-min(tail, 1 - 1e-16)))
            score = null.score_at_tail(study_tail)
    shown = np.arange(start, start + w) if threshold is None else np.flatnonzero(scores >= threshold)
    order = shown[np.argsort(-scores[shown], kind="stable")][:max_flagged]
    return score, tuple(int(i) for i in order)
