"""What the review app does, as plain functions (the Streamlit script only lays them out).

* the worklist: rows come from ``medassist.datamodel.read_worklist`` (``WorklistRow``);
  :func:`group_studies` groups them into :class:`Study` objects in priority order;
  :func:`filter_studies` and :func:`count_studies` drive the sidebar;
* the image: :func:`open_series` decodes a series once (an LRU cache keyed by source path and
  series UID) and keeps it read-only; :func:`window_presets` offers the windows that make sense
  for the modality; :func:`apply_window` maps physical values to 8-bit grey;
* the overlay: :func:`load_saliency` (cached, read-only) and :func:`saliency_layer` build the
  saliency map as a separate RGBA layer; :func:`composite` blends a copy for display - the
  source pixels are never altered;
* zoom: :func:`zoom_box` crops around a centre; :func:`render` chains crop, window, overlay and
  resize to the display size, and draws the reviewer's marker (a cyan cross) and the model's
  peak on the shown slice (:func:`slice_peak`, a yellow ring).

Nothing here logs patient identifiers: log lines name studies and series by UID only.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from medassist.datamodel import Image, WorklistRow
from medassist.errors import MedassistError
from medassist.explain.output import (COLORMAPS, OVERLAY_CMAP, OVERLAY_OPACITY, colormap_lut, composite,
                                       saliency_layer)
from medassist.review.store import Decision, DecisionStore, FindingKey, status_of

logger = logging.getLogger(__name__)

STATUSES = ("unreviewed", "in progress", "reviewed", "no findings")
# Modalities whose pixel values are physical units (Hounsfield units), where fixed presets hold.
HOUNSFIELD_MODALITIES = frozenset({"CT"})
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "MG", "IO", "PX", "XA", "RF"})
CT_PRESETS = {  # name -> (center, width), HU
    "Bone": (300.0, 1500.0),
    "Brain": (40.0, 80.0),
    "Soft tissue": (40.0, 400.0),
    "Lung": (-600.0, 1500.0),
}
AUTO_PERCENTILES = (0.5, 99.5)
MR_BRAIN_PERCENTILES = (1.0, 99.0)
DEFAULT_MAX_SIDE = 1024
MARKER_COLOR = (0, 255, 255)  # cyan cross: a location a reviewer marked
PEAK_COLOR = (255, 255, 0)  # yellow ring: the saliency peak on the shown slice
PEAK_RADIUS = 10  # display pixels (the cross reaches 8)
_STATS_SAMPLE = 2_000_000


# -- worklist ----------------------------------------------------------------------------------


@dataclass
class Study:
    """The worklist rows of one study and what the reviewer needs to sort and filter them."""

    study_uid: str
    rows: list[WorklistRow]
    status: str = "unreviewed"
    decided: int = 0

    @property
    def patient_id(self) -> str:
        return self.rows[0].patient_id

    @property
    def accession(self) -> str:
        return self.rows[0].accession

    @property
    def findings(self) -> list[WorklistRow]:
        return [row for row in self.rows if row.is_finding]

    @property
    def errors(self) -> list[WorklistRow]:
        """Rows that failed (decoding, inference); "no model applies" is not a failure."""
        return [row for row in self.rows if row.error and not row.not_applicable]

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted({row.modality for row in self.rows if row.modality}))

    @property
    def body_parts(self) -> tuple[str, ...]:
        return tuple(sorted({row.body_part for row in self.rows if row.body_part}))

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(sorted({row.model for row in self.findings}))

    @property
    def series_uids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(row.series_uid for row in self.rows))

    @property
    def flagged(self) -> bool:
        return any(row.flagged for row in self.findings)

    @property
    def max_score(self) -> float | None:
        scores = [row.score for row in self.findings if row.score is not None]
        return max(scores) if scores else None

    def rows_of_series(self, series_uid: str) -> list[WorklistRow]:
        return [row for row in self.rows if row.series_uid == series_uid]

    def label(self) -> str:
        """One line for the study picker: accession, modality, body part, top score (no names;
        no status either, since a picker's shown choice is not redrawn when it changes)."""
        score = "—" if self.max_score is None else f"{self.max_score:.3f}"
        flag = "⚑ " if self.flagged else ""
        ident = self.accession or self.study_uid[-12:] or "(no study UID)"
        parts = [f"{flag}{ident}", "/".join(self.modalities) or "?"]
        if self.body_parts:
            parts.append("/".join(self.body_parts))
        if not self.findings:
            parts.append("error" if self.errors else "not scored")
        else:
            parts.append(f"score {score}")
        return " · ".join(parts)


def resolve_out_dir(argv: Sequence[str], environ: Mapping[str, str]) -> Path | None:
    """The triage output folder: the first argument after ``--`` (streamlit run app.py -- OUT),
    else ``$MEDASSIST_OUT``; None when neither is given."""
    args = [a for a in argv if a and not a.startswith("-")]
    if args:
        return Path(args[0])
    value = environ.get("MEDASSIST_OUT", "").strip()
    return Path(value) if value else None


def group_studies(
    rows: Iterable[WorklistRow], decisions: Mapping[FindingKey, Decision] | None = None
) -> list[Study]:
    """Rows grouped by study, in priority order, each with its review status.

    Priority: studies a model flagged first, then by their highest score (highest first),
    studies without any score (errors, no model applies) last; ties keep worklist order.
    """
    decided = decisions or {}
    by_uid: dict[str, list[WorklistRow]] = {}
    for row in rows:
        by_uid.setdefault(row.study_uid, []).append(row)
    studies = []
    for uid, study_rows in by_uid.items():
        study = Study(study_uid=uid, rows=study_rows)
        keys = {row.key for row in study.findings}
        study.status = status_of(keys, decided)
        study.decided = sum(1 for key in keys if key in decided)
        studies.append(study)
    return sorted(studies, key=_priority)


def _priority(study: Study) -> tuple[int, float]:
    score = study.max_score
    return (0 if study.flagged else 1, -score if score is not None else math.inf)


@dataclass(frozen=True)
class StudyFilter:
    """Sidebar filters; empty tuples mean "any"."""

    flagged_only: bool = False
    modalities: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()

    def matches(self, study: Study) -> bool:
        if self.flagged_only and not study.flagged:
            return False
        if self.modalities and not set(study.modalities) & set(self.modalities):
            return False
        if self.models and not set(study.models) & set(self.models):
            return False
        if self.statuses and study.status not in self.statuses:
            return False
        return True


def filter_studies(studies: Iterable[Study], study_filter: StudyFilter) -> list[Study]:
    """The studies passing the filter, order kept."""
    return [study for study in studies if study_filter.matches(study)]


@dataclass(frozen=True)
class Counts:
    total: int
    shown: int
    flagged: int
    by_status: dict[str, int] = field(default_factory=dict)
    by_modality: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)
    findings: int = 0
    decided: int = 0
    errors: int = 0


def count_studies(studies: Sequence[Study], study_filter: StudyFilter | None = None) -> Counts:
    """Counts for the sidebar: over all studies (per status, modality, model) and shown ones."""
    shown = filter_studies(studies, study_filter) if study_filter else list(studies)
    by_status = {status: 0 for status in STATUSES}
    by_modality: dict[str, int] = {}
    by_model: dict[str, int] = {}
    for study in studies:
        by_status[study.status] = by_status.get(study.status, 0) + 1
        for modality in study.modalities:
            by_modality[modality] = by_modality.get(modality, 0) + 1
        for model in study.models:
            by_model[model] = by_model.get(model, 0) + 1
    return Counts(
        total=len(studies),
        shown=len(shown),
        flagged=sum(1 for s in studies if s.flagged),
        by_status=by_status,
        by_modality=dict(sorted(by_modality.items())),
        by_model=dict(sorted(by_model.items())),
        findings=sum(len(s.findings) for s in studies),
        decided=sum(s.decided for s in studies),
        errors=sum(1 for s in studies if s.errors),
    )


def next_unreviewed(studies: Sequence[Study], after: str | None = None) -> Study | None:
    """The next study (in the given order, wrapping) that still has undecided findings."""
    if not studies:
        return None
    uids = [s.study_uid for s in studies]
    start = uids.index(after) + 1 if after in uids else 0
    for offset in range(len(studies)):
        study = studies[(start + offset) % len(studies)]
        if study.status in ("unreviewed", "in progress") and study.study_uid != after:
            return study
    return None


def record_for_row(
    store: DecisionStore,
    row: WorklistRow,
    *,
    decision: str,
    reviewer: str,
    corrected_finding: str | None = None,
    location: Mapping[str, int] | None = None,
    comment: str | None = None,
) -> Decision:
    """Record a reviewer's decision on a worklist finding (copies the model's output with it)."""
    if not row.is_finding:
        raise MedassistError(f"series {row.series_uid}: no model finding to decide ({row.error or 'no model'})")
    decision_row = store.record_decision(
        study_uid=row.study_uid,
        series_uid=row.series_uid,
        model=row.model,
        model_version=row.model_version,
        finding=row.finding,
        score=row.score,
        threshold=row.threshold,
        model_flagged=row.flagged,
        decision=decision,
        reviewer=reviewer,
        corrected_finding=corrected_finding,
        location=location,
        comment=comment,
    )
    logger.info("decision %s recorded for series %s (%s %s)", decision, row.series_uid, row.model, row.finding)
    return decision_row


# -- images --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A window (center, width) in the image's pixel units. ``use_display`` means: draw the
    series' own default rendering (``Image.display``: its VOI LUT or window, else percentiles)."""

    center: float
    width: float
    label: str
    use_display: bool = False


@dataclass(frozen=True)
class SeriesView:
    """A decoded series (read-only arrays) with what the viewer needs to know about its values."""

    image: Image
    source_path: str
    series_uid: str
    modality: str
    vmin: float
    vmax: float
    auto_window: tuple[float, float]

    @property
    def n_slices(self) -> int:
        return int(self.image.pixels.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.pixels.shape[1]), int(self.image.pixels.shape[2])

    @property
    def inverted(self) -> bool:
        return self.image.photometric.upper() == "MONOCHROME1"


def _decode(source_path: str, series_uid: str) -> Image:
    """Decode a series through ``medassist.ingest`` (the one place that reads pixels)."""
    from medassist.ingest import find_series  # noqa: PLC0415 - heavy; only when a series is opened

    return find_series(source_path, series_uid).load()


@functools.lru_cache(maxsize=4)
def open_series(source_path: str, series_uid: str = "", modality: str = "") -> SeriesView:
    """Decode a series once (LRU cache of the last 4), arrays made read-only."""
    image = _decode(source_path, series_uid)
    for array in (image.pixels, image.display):
        array.flags.writeable = False
    flat = image.pixels.reshape(-1)
    sample = flat[:: max(1, flat.size // _STATS_SAMPLE)]
    low, high = (float(v) for v in np.percentile(sample, AUTO_PERCENTILES))
    vmin, vmax = float(sample.min()), float(sample.max())
    vmin, vmax = min(vmin, float(flat.min())), max(vmax, float(flat.max()))
    logger.debug("decoded series %s: %s", series_uid, image.pixels.shape)
    return SeriesView(
        image=image,
        source_path=source_path,
        series_uid=series_uid,
        modality=modality.upper(),
        vmin=vmin,
        vmax=vmax,
        auto_window=_window_from_range(low, high),
    )


def _window_from_range(low: float, high: float) -> tuple[float, float]:
    width = max(high - low, 1.0)
    return ((low + high) / 2.0, width)


def window_presets(view: SeriesView) -> dict[str, Window]:
    """The windows worth offering for this series, the default first.

    * Default: the file's own rendering (its VOI LUT or window; percentiles when it has none).
    * CT (Hounsfield units): fixed Bone C 300/W 1500, Brain C 40/W 80, Soft tissue, Lung.
    * MR: Brain as a 1-99 percentile window (MR intensities have no fixed unit).
    * Radiographs and the rest: fixed presets mean nothing in arbitrary units, so the DICOM
      window stays the default and Auto (0.5-99.5 percentiles) and Full range are offered.
    """
    default = view.image.window or view.auto_window
    if view.image.window:
        label = f"DICOM default (C {default[0]:g} / W {default[1]:g})"
    else:
        label = "Default (file display / auto 0.5–99.5 %)"
    presets = {label: Window(default[0], default[1], label, use_display=True)}
    if view.modality in HOUNSFIELD_MODALITIES:
        for name, (center, width) in CT_PRESETS.items():
            title = f"{name} (C {center:g} / W {width:g})"
            presets[title] = Window(center, width, title)
    elif view.modality == "MR":
        flat = view.image.pixels.reshape(-1)
        low, high = np.percentile(flat[:: max(1, flat.size // _STATS_SAMPLE)], MR_BRAIN_PERCENTILES)
        center, width = _window_from_range(float(low), float(high))
        presets["Brain (MR auto 1–99 %)"] = Window(center, width, "Brain (MR auto 1–99 %)")
    if view.image.window:
        presets["Auto (0.5–99.5 %)"] = Window(*view.auto_window, "Auto (0.5–99.5 %)")
    center, width = _window_from_range(view.vmin, view.vmax)
    presets["Full range"] = Window(center, width, "Full range")
    return presets


def apply_window(pixels: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear window (PS3.3 C.11.2.1.2.1) of physical values to uint8 0..255.

    Returns a new array; ``pixels`` is not modified.
    """
    x = np.asarray(pixels, dtype=np.float32)
    if width <= 1.0:
        return np.where(x > center - 0.5, 255, 0).astype(np.uint8)
    scale = np.float32(255.0 / (width - 1.0))
    offset = np.float32(((0.5 - center) / (width - 1.0) + 0.5) * 255.0)
    out = x * scale
    out += offset
    np.clip(out, 0.0, 255.0, out=out)
    return (out + 0.5).astype(np.uint8)


# -- saliency overlay ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def load_saliency(path: str) -> np.ndarray:
    """A saliency map (.npy, float) as read-only float32 (slices, rows, cols) scaled to 0..1 by
    its maximum over the whole map (so slices stay comparable); negative values count as 0."""
    if not path:
        raise MedassistError("no saliency map for this finding")
    try:
        raw = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MedassistError(f"{path}: cannot read the saliency map: {exc}") from exc
    data = np.asarray(raw, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise MedassistError(f"{path}: saliency map has shape {raw.shape}, expected (rows, cols) or (slices, rows, cols)")
    data = np.maximum(np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    peak = float(data.max()) if data.size else 0.0
    if peak > 0:
        data = data / np.float32(peak)
    data.flags.writeable = False
    return data


def expand_slice_maps(saliency: np.ndarray, slices: Sequence[int], n_slices: int) -> np.ndarray:
    """A volume finding's maps of its flagged slices only - (k, rows, cols) for the worklist's
    ``slices`` in ascending order, as triage writes them - laid out as (n_slices, rows, cols) with
    empty planes elsewhere. Maps that are already 2D or per-slice are returned as they are."""
    wanted = sorted(set(int(i) for i in slices))
    if n_slices <= 1 or not wanted or saliency.shape[0] == n_slices or saliency.shape[0] != len(wanted):
        return saliency
    if wanted[0] < 0 or wanted[-1] >= n_slices:
        raise MedassistError(f"saliency map names slices {wanted} outside 0..{n_slices - 1}")
    full = np.zeros((n_slices,) + saliency.shape[1:], dtype=np.float32)
    full[wanted] = saliency
    full.flags.writeable = False
    return full


def saliency_for_slice(saliency: np.ndarray, view: SeriesView, slice_index: int) -> np.ndarray:
    """The map's 2D plane for one image slice; raises when it does not fit the image."""
    if saliency.shape[1:] != view.shape:
        raise MedassistError(
            f"saliency map is {saliency.shape[1]} x {saliency.shape[2]} but the image is "
            f"{view.shape[0]} x {view.shape[1]}: not in the source geometry"
        )
    if saliency.shape[0] == 1:
        return saliency[0]
    if saliency.shape[0] != view.n_slices:
        raise MedassistError(f"saliency map has {saliency.shape[0]} slices, the image {view.n_slices}")
    return saliency[slice_index]


def saliency_peak(saliency: np.ndarray, slice_index: int = 0) -> tuple[int, int, int]:
    """(slice, row, col) of the map's maximum, on ``slice_index`` for a 2D map's single plane,
    else over the whole volume."""
    if saliency.shape[0] == 1:
        row, col = np.unravel_index(int(np.argmax(saliency[0])), saliency.shape[1:])
        return (slice_index, int(row), int(col))
    s, row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    return (int(s), int(row), int(col))


class Peak(NamedTuple):
    """Where a saliency plane is highest, in source pixels."""

    row: int
    col: int


def slice_peak(saliency: np.ndarray, slice_index: int = 0) -> Peak | None:
    """(row, col) of the maximum of a 2D map, or of plane ``slice_index`` of a (slices, rows, cols)
    map (a single-plane map stands for every slice); the first maximum in row order, as
    :func:`saliency_peak`. None when that plane has no saliency (all zero: a slice the model did
    not flag), so that no peak is drawn where there is none."""
    plane = np.asarray(saliency)
    if plane.ndim == 3:
        if plane.shape[0] != 1 and not 0 <= slice_index < plane.shape[0]:
            raise MedassistError(f"slice {slice_index} outside 0..{plane.shape[0] - 1} of the saliency map")
        plane = plane[0 if plane.shape[0] == 1 else slice_index]
    if plane.ndim != 2:
        raise MedassistError(f"saliency map has shape {saliency.shape}, expected (rows, cols) or (slices, rows, cols)")
    if not plane.size or not float(plane.max()) > 0:
        return None
    row, col = np.unravel_index(int(np.argmax(plane)), plane.shape)
    return Peak(int(row), int(col))


def colorbar(colormap: str, height: int = 14, width: int = 256) -> np.ndarray:
    """A horizontal legend strip of the colormap (RGB uint8), low on the left."""
    lut = colormap_lut(colormap)
    index = np.linspace(0, 255, width).round().astype(np.intp)
    return np.ascontiguousarray(np.broadcast_to(lut[index][None], (height, width, 3)))


# -- zoom and rendering --------------------------------------------------------------------------


def zoom_box(
    shape: tuple[int, int], zoom: float = 1.0, center: tuple[float, float] | None = None
) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of a crop ``1/zoom`` of the image around ``center`` (row, col),
    kept inside the image; the whole image for zoom <= 1."""
    rows, cols = shape
    zoom = max(float(zoom), 1.0)
    height, width = max(1, round(rows / zoom)), max(1, round(cols / zoom))
    crow, ccol = center if center is not None else (rows / 2.0, cols / 2.0)
    row0 = int(round(min(max(crow - height / 2.0, 0), rows - height)))
    col0 = int(round(min(max(ccol - width / 2.0, 0), cols - width)))
    return row0, row0 + height, col0, col0 + width


@dataclass(frozen=True)
class Overlay:
    """How to draw the saliency layer: on/off, opacity 0..1, colormap."""

    visible: bool = True
    opacity: float = OVERLAY_OPACITY
    colormap: str = OVERLAY_CMAP


@dataclass(frozen=True)
class Rendered:
    """What the viewer shows: the RGB picture and where it came from in the source."""

    rgb: np.ndarray
    box: tuple[int, int, int, int]
    scale: float  # displayed pixels per source pixel
    overlay_drawn: bool


def render(
    view: SeriesView,
    slice_index: int,
    window: Window,
    *,
    saliency: np.ndarray | None = None,
    overlay: Overlay | None = None,
    zoom: float = 1.0,
    center: tuple[float, float] | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    marker: tuple[int, int] | None = None,
    peak: tuple[int, int] | None = None,
) -> Rendered:
    """Crop (zoom) -> window -> resize to at most ``max_side`` pixels -> overlay on top.

    The grey base is windowed on the crop only and resized before blending, and the last few
    bases are cached, so changing the overlay (toggle, opacity, colormap) redraws in
    milliseconds even for a large radiograph. A ``marker`` (row, col in source pixels) draws a
    small cyan cross, e.g. the location a reviewer marked; a ``peak`` (row, col in source pixels,
    e.g. :func:`slice_peak`) a yellow ring of ``PEAK_RADIUS`` display pixels around it, the cross
    drawn over it. Source arrays are never modified.
    """
    if not 0 <= slice_index < view.n_slices:
        raise MedassistError(f"slice {slice_index} outside 0..{view.n_slices - 1}")
    box = zoom_box(view.shape, zoom, center)
    base, scale = _display_base(view, slice_index, window, box, max_side)
    layer = None
    if saliency is not None and overlay is not None and overlay.visible and overlay.opacity > 0:
        r0, r1, c0, c1 = box
        plane = saliency_for_slice(saliency, view, slice_index)[r0:r1, c0:c1]
        layer = saliency_layer(_resize(plane, base.shape, smooth=True), overlay.colormap)
    rgb = composite(base, layer, overlay.opacity if layer is not None and overlay else 0.0)
    if peak is not None:
        _draw_peak(rgb, _display_point(peak, box, scale))
    if marker is not None:
        _draw_marker(rgb, _display_point(marker, box, scale))
    return Rendered(rgb=rgb, box=box, scale=scale, overlay_drawn=layer is not None)


def _display_point(at: tuple[int, int], box: tuple[int, int, int, int], scale: float) -> tuple[float, float]:
    """A source pixel's centre (row, col) in display coordinates of a render of ``box``."""
    return ((at[0] - box[0] + 0.5) * scale, (at[1] - box[2] + 0.5) * scale)


_BASE_CACHE: dict[tuple, tuple[weakref.ref, np.ndarray, float]] = {}  # no strong refs: views stay evictable
_BASE_CACHE_SIZE = 16
_BASE_LOCK = threading.Lock()  # Streamlit sessions run in threads


def _display_base(
    view: SeriesView, slice_index: int, window: Window, box: tuple[int, int, int, int], max_side: int
) -> tuple[np.ndarray, float]:
    """The windowed grey crop at display size (uint8, read-only) and its scale; cached."""
    key = (id(view), slice_index, window, box, max_side)
    with _BASE_LOCK:
        hit = _BASE_CACHE.pop(key, None)
        if hit is not None and hit[0]() is view:
            _BASE_CACHE[key] = hit  # most recently used last
            return hit[1], hit[2]
    r0, r1, c0, c1 = box
    if window.use_display:
        grey = view.image.display[slice_index, r0:r1, c0:c1] * np.float32(255.0)
        grey = (np.clip(grey, 0.0, 255.0) + 0.5).astype(np.uint8)
    else:
        grey = apply_window(view.image.pixels[slice_index, r0:r1, c0:c1], window.center, window.width)
        if view.inverted:
            np.subtract(255, grey, out=grey)
    scale = display_scale((r1 - r0, c1 - c0), max_side)
    size = (max(1, round((r1 - r0) * scale)), max(1, round((c1 - c0) * scale)))
    grey = _resize(grey, size, smooth=False)
    grey.flags.writeable = False
    with _BASE_LOCK:
        _BASE_CACHE[key] = (weakref.ref(view), grey, scale)
        while len(_BASE_CACHE) > _BASE_CACHE_SIZE:
            _BASE_CACHE.pop(next(iter(_BASE_CACHE)))
    return grey, scale


def display_scale(shape: tuple[int, int], max_side: int) -> float:
    """Displayed pixels per source pixel, so that the longer side is ``max_side`` (enlarging
    uses nearest neighbour, so a zoomed radiograph shows its true pixels, not interpolation)."""
    return max_side / max(shape)


def _resize(plane: np.ndarray, size: tuple[int, int], *, smooth: bool) -> np.ndarray:
    """Resize a 2D plane to (rows, cols): area average when shrinking; when enlarging, pixel
    replication for the image (``smooth`` False) or bilinear for the saliency map."""
    from PIL import Image as PILImage  # noqa: PLC0415

    rows, cols = plane.shape
    if (rows, cols) == tuple(size):
        return np.array(plane)
    enlarging = size[0] > rows
    if enlarging and not smooth and size[0] % rows == 0 and size[1] % cols == 0:
        return np.repeat(np.repeat(plane, size[0] // rows, axis=0), size[1] // cols, axis=1)
    mode = PILImage.Resampling.BILINEAR if enlarging else PILImage.Resampling.BOX
    if not smooth and enlarging:
        mode = PILImage.Resampling.NEAREST
    source = PILImage.fromarray(np.ascontiguousarray(plane))
    return np.array(source.resize((size[1], size[0]), mode))


def _draw_marker(rgb: np.ndarray, at: tuple[float, float], radius: int = 8) -> None:
    rows, cols = rgb.shape[:2]
    r, c = int(at[0]), int(at[1])
    color = np.array(MARKER_COLOR, dtype=np.uint8)
    if 0 <= r < rows:
        rgb[r, max(0, c - radius) : max(0, min(cols, c + radius + 1))] = color
    if 0 <= c < cols:
        rgb[max(0, r - radius) : max(0, min(rows, r + radius + 1)), c] = color


def _ring(shape: tuple[int, int], at: tuple[float, float], radius: float, width: float = 2.0) -> np.ndarray:
    """Boolean (rows, cols) mask of the display pixels whose centres lie within ``width / 2`` of a
    circle of ``radius`` around ``at`` (display coordinates); clipped to the picture."""
    rows, cols = shape
    r = (np.arange(rows, dtype=np.float32) + 0.5 - np.float32(at[0]))[:, None]
    c = (np.arange(cols, dtype=np.float32) + 0.5 - np.float32(at[1]))[None, :]
    return np.abs(np.hypot(r, c) - np.float32(radius)) <= np.float32(width / 2.0)


def _draw_peak(rgb: np.ndarray, at: tuple[float, float], radius: int = PEAK_RADIUS) -> None:
    """A yellow ring around ``at`` (display coordinates), drawn in place; only the ring's bounding
    square is examined, so a large picture costs no more than a small one."""
    rows, cols = rgb.shape[:2]
    reach = radius + 2
    r0, r1 = max(0, int(at[0]) - reach), min(rows, int(at[0]) + reach + 1)
    c0, c1 = max(0, int(at[1]) - reach), min(cols, int(at[1]) + reach + 1)
    if r0 >= r1 or c0 >= c1:
        return
    mask = _ring((r1 - r0, c1 - c0), (at[0] - r0, at[1] - c0), radius)
    rgb[r0:r1, c0:c1][mask] = np.array(PEAK_COLOR, dtype=np.uint8)


def to_png(rgb: np.ndarray, compress_level: int = 1) -> bytes:
    """Lossless PNG bytes of a rendered picture (fast compression; st.image would otherwise
    send numpy arrays as JPEG, which is lossy)."""
    import io  # noqa: PLC0415

    from PIL import Image as PILImage  # noqa: PLC0415

    buffer = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def clear_caches() -> None:
    """Forget decoded images and maps (e.g. after triage rewrote its outputs)."""
    open_series.cache_clear()
    load_saliency.cache_clear()
    with _BASE_LOCK:
        _BASE_CACHE.clear()


@functools.lru_cache(maxsize=8)
def _confidence_tables(weights_dir: str) -> dict[tuple[str, str], object]:
    """Each shipped model version's confidence table (read once per models folder)."""
    from medassist.audit.confidence import ConfidenceTable
    from medassist.models.registry import shipped_specs

    tables = {}
    for spec in shipped_specs(Path(weights_dir)):
        table = ConfidenceTable.from_dict((spec.validation or {}).get("confidence"))
        if table is not None:
            tables[(spec.name, spec.version)] = table
    return tables


def finding_confidence(row: WorklistRow, weights_dir: Path | None = None):
    """How often validation cases scoring like this finding had it (``audit.confidence``), for the
    row's exact model version; None when that version ships no table or the row has no score."""
    from medassist.models.registry import WEIGHTS_DIR

    if row.score is None:
        return None
    try:
        tables = _confidence_tables(str(weights_dir or WEIGHTS_DIR))
    except MedassistError as exc:
        logger.warning("confidence tables unavailable: %s", exc)
        return None
    table = tables.get((row.model, row.model_version))
    return table.at(row.score) if table is not None else None
