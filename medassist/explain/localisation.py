"""Does the saliency point at the finding? Pointing game and energy inside the annotation.

* ``pointing_game_hit`` (Zhang et al., ECCV 2016): the map's peak lies inside the annotation
  (optionally within ``tolerance_px`` of it).
* ``energy_inside`` (Wang et al., Score-CAM 2020): the share of the map's positive mass inside the
  annotation.

Both are reported next to what a map that knows nothing would score, so the numbers mean
something: a uniform map's energy inside is the annotation's area fraction, and so is a randomly
placed peak's chance of a hit; a peak fixed at the image centre is a second, stronger baseline.

``evaluate_localisation`` works on any (image, mask) pairs in source geometry, each image
prepared the model's way: radiographs by ``prepare_2d`` (maps back through the letterbox), brain
MRI slices by ``tumor.prepare_slice`` (maps back through the head crop and letterbox,
``SliceFrame.to_source``). ``evaluate_fracture_localisation`` feeds it the FracAtlas validation
split's fractured images, ``evaluate_tumour_localisation`` the brain-tumour validation split's
tumour slices with their YOLO boxes, and ``write_localisation_report`` writes the JSON the model
card includes (the dataset follows the model: a volumetric family, brain MR, is the tumour model).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medassist.atomic import write_atomic
from medassist.explain.saliency import DEFAULT_METHOD, METHODS, known_method, saliency_map
from medassist.families import ModelFamily, family_for
from medassist.families.brain_mr import BRAIN_MR
from medassist.families.radiograph import RADIOGRAPH
from medassist.metrics import wilson_interval
from medassist.models import splits
from medassist.models.registry import LoadedModel

# The FracAtlas split the fracture model was trained with (configs/fracture_xray.yaml).
FRACATLAS_SPLIT = splits.FRACATLAS_SPLIT
REPORT_PATH = Path("model_cards/fracture_xray_localisation.json")
# Expensive methods are run on the first N images only, unless told otherwise.
DEFAULT_METHOD_LIMITS = {"integrated_gradients": 40, "occlusion": 40}
# The tumour model on 2 busy CPU cores: integrated gradients 1-25 s and occlusion (32 px window,
# 16 px stride) 3-80 s per 256 px slice, GradCAM well under 1 s. The tumour slices come in
# class-interleaved order, so the first 12 are 4 of each type; occlusion uses non-overlapping 32 px
# windows (4x fewer passes than the default 16 px stride).
TUMOUR_METHOD_LIMITS = {"integrated_gradients": 12, "occlusion": 12}
TUMOUR_METHOD_OPTIONS = {"occlusion": {"window": 32, "stride": 32}}

# A prepared image: its (1, S, S) network input, a function taking an (S, S) input-frame map to
# the source geometry, and the source pixels such a map can reach (None: all of them).
PreparedImage = tuple[torch.Tensor, Callable[[np.ndarray], np.ndarray], "np.ndarray | None"]
# The pointing game's usual tolerance (Zhang et al. 2016), reported beside the strict game.
TOLERANT_PX = 15.0
# A tolerance that scales with the image: the annotation dilated by this share of the longest side
# (``pointing_game_side``; the fracture model's localisation target is stated in it).
TOLERANT_SIDE_FRACTION = 0.05


def _check_pair(saliency: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sal = np.asarray(saliency, dtype=np.float64)
    m = np.asarray(mask).astype(bool)
    if sal.shape != m.shape:
        raise ValueError(f"saliency map {sal.shape} and mask {m.shape} differ in shape")
    return sal, m


def pointing_game_hit(saliency: np.ndarray, mask: np.ndarray, *, tolerance_px: float = 0.0) -> bool:
    """Whether the map's maximum lies inside the mask (or within ``tolerance_px`` pixels of it).

    A map with no positive value points nowhere: a miss. Ties go to the first maximum in row order.
    """
    sal, m = _check_pair(saliency, mask)
    sal = np.nan_to_num(sal, nan=-np.inf)
    if not m.any() or not np.isfinite(sal).any() or sal.max() <= 0:
        return False
    r, c = np.unravel_index(int(np.argmax(sal)), sal.shape)
    if m[r, c]:
        return True
    if tolerance_px <= 0:
        return False
    rows, cols = np.nonzero(m)
    return bool(np.min((rows - r) ** 2 + (cols - c) ** 2) <= tolerance_px**2)


def energy_inside(saliency: np.ndarray, mask: np.ndarray) -> float:
    """The share (0..1) of the map's positive mass that lies inside the mask; 0.0 for an all-zero map."""
    sal, m = _check_pair(saliency, mask)
    pos = np.maximum(np.nan_to_num(sal), 0.0)
    total = float(pos.sum())
    return float(pos[m].sum() / total) if total > 0 else 0.0


def area_fraction(mask: np.ndarray) -> float:
    """The mask's share of the image: a uniform map's energy inside and a random peak's hit chance."""
    m = np.asarray(mask).astype(bool)
    return float(m.mean()) if m.size else 0.0


def centre_hit(mask: np.ndarray) -> bool:
    """Whether the image centre lies inside the mask (the 'always point at the middle' baseline)."""
    m = np.asarray(mask).astype(bool)
    return bool(m[(m.shape[0] - 1) // 2, (m.shape[1] - 1) // 2])


def _prepared_image(family: ModelFamily, image: np.ndarray, pre) -> PreparedImage:
    plane = family.prepare_plane(image, pre)
    return plane.input, plane.to_source, plane.support


def prepare_radiograph(image: np.ndarray, spec) -> PreparedImage:
    """A radiograph as inference prepares it (``prepare_2d``); maps go back through the letterbox,
    which covers the whole image (``RadiographFamily.prepare_plane``)."""
    return _prepared_image(RADIOGRAPH, image, spec)


def prepare_mri_slice(image: np.ndarray, spec) -> PreparedImage:
    """A brain MRI slice as the tumour model prepares it (``tumor.prepare_slice``: head mask, crop,
    letterbox); maps go back through the letterbox and the crop (``SliceFrame.to_source``) and are
    zero outside the head crop, which is their support (``BrainMRFamily.prepare_plane``)."""
    return _prepared_image(BRAIN_MR, image, spec)


def preparer_for(spec) -> Callable[[np.ndarray, object], PreparedImage]:
    """The model's own input path, its family's (``ModelFamily.prepare_plane``): volume models
    (brain MRI) read slices, others radiographs."""
    family = family_for(spec)
    return lambda image, pre: _prepared_image(family, image, pre)


@dataclass(frozen=True)
class LocalisationCase:
    """One image in source geometry (rows, cols) with its annotation mask (same shape)."""

    case_id: str
    image: np.ndarray
    mask: np.ndarray


def _mean_ci(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")]}
    mean = float(v.mean())
    half = 1.96 * float(v.std(ddof=1)) / math.sqrt(v.size) if v.size > 1 else float("nan")
    # a share lies in 0..1: the normal-approximation interval is clipped to that range
    return {"mean": mean, "ci95": [max(0.0, mean - half), min(1.0, mean + half)]}


def _batches(cases: Iterable[LocalisationCase], size: int) -> Iterator[list[LocalisationCase]]:
    batch: list[LocalisationCase] = []
    for case in cases:
        batch.append(case)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def dilate(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """The pixels within ``radius_px`` (Euclidean) of the mask."""
    from scipy.ndimage import distance_transform_edt

    m = np.asarray(mask).astype(bool)
    if radius_px <= 0 or not m.any():
        return m
    return distance_transform_edt(~m) <= radius_px


def _pointing_block(per_image: list[dict], suffix: str, tolerance_px: float) -> dict:
    n = len(per_image)
    hits = sum(int(r["hit" + suffix]) for r in per_image)
    centre = sum(int(r["centre_hit" + suffix]) for r in per_image)
    areas = [r["area_fraction" + suffix] for r in per_image]
    return {
        "hit_rate": hits / n if n else float("nan"),
        "hits": hits,
        "ci95": list(wilson_interval(hits, n)),
        "tolerance_px": tolerance_px,
        "baseline_random_peak": float(np.mean(areas)) if n else float("nan"),
        "baseline_centre_peak": centre / n if n else float("nan"),
    }


def summarise(per_image: list[dict], *, tolerance_px: float = 0.0, tolerant_px: float | None = None) -> dict:
    """Hit rate and mean energy inside, with the uniform/random and centre baselines on the same images.

    With ``tolerant_px``, a second pointing game (``pointing_game_tolerant``) counts a peak within
    that many pixels of the annotation as a hit; its baselines use the same dilated annotation.
    Rows with ``area_fraction_support`` (the annotation's share of the pixels a map can reach) add
    the random-peak and uniform-map baselines within that support.
    """
    n = len(per_image)
    areas = [r["area_fraction"] for r in per_image]
    out = {
        "n_images": n,
        "pointing_game": _pointing_block(per_image, "", tolerance_px),
        "energy_inside": {
            **_mean_ci([r["energy_inside"] for r in per_image]),
            "baseline_uniform_map": float(np.mean(areas)) if n else float("nan"),
        },
        "mask_area_fraction": {"mean": float(np.mean(areas)) if n else float("nan"),
                               "median": float(np.median(areas)) if n else float("nan")},
    }
    if tolerant_px is not None:
        out["pointing_game_tolerant"] = _pointing_block(per_image, "_tolerant", tolerant_px)
    if n and all("hit_side" in r for r in per_image):
        out["pointing_game_side"] = _pointing_block(per_image, "_side", 0.0)
        out["pointing_game_side"].pop("tolerance_px")
        out["pointing_game_side"]["tolerance_side_fraction"] = TOLERANT_SIDE_FRACTION
    if n and all("area_fraction_support" in r for r in per_image):
        # where the map can reach (a brain slice's head crop): a peak placed at random there, a
        # uniform map there
        in_support = float(np.mean([r["area_fraction_support"] for r in per_image]))
        out["pointing_game"]["baseline_random_peak_in_support"] = in_support
        out["energy_inside"]["baseline_uniform_map_in_support"] = in_support
    return out


def evaluate_localisation(
    model: LoadedModel,
    cases: Iterable[LocalisationCase],
    methods: Sequence[str] = (DEFAULT_METHOD,),
    *,
    limit: int | None = None,
    method_limits: dict[str, int] | None = None,
    batch_size: int = 8,
    tolerance_px: float = 0.0,
    tolerant_px: float | None = TOLERANT_PX,
    method_options: dict[str, dict] | None = None,
    keep_per_image: bool = False,
    prepare: Callable[[np.ndarray, object], PreparedImage] | None = None,
    group_of: Callable[[str], str] | None = None,
) -> dict:
    """Pointing game and energy inside per method over (image, mask) cases in source geometry.

    Each image is preprocessed the model's way (``prepare``, default ``preparer_for(model.spec)``),
    explained in the input frame and mapped back to its source geometry, where it is scored against
    its mask. ``limit`` caps the number of cases; ``method_limits`` caps individual (expensive)
    methods further, always taking the first cases, so a limited method is scored on a prefix of
    the images the others saw. ``tolerant_px`` adds the pointing game with that tolerance (Zhang et
    al. used 15 px); None leaves it out. GradCAM reuses the batch's scoring-pass feature map
    (``saliency_map(features=...)``, the same map). ``group_of(case_id)`` adds the summaries per
    group (``by_group``, e.g. per tumour type).
    """
    for method in methods:
        known_method(method)
    method_limits = dict(method_limits or {})
    method_options = dict(method_options or {})
    results: dict[str, list[dict]] = {m: [] for m in methods}
    seconds: dict[str, float] = {m: 0.0 for m in methods}
    spec = model.spec.preprocess
    prepare = prepare or preparer_for(model.spec)
    seen = 0
    for batch in _batches(cases, batch_size):
        if limit is not None:
            batch = batch[: max(0, limit - seen)]
            if not batch:
                break
        prepared = [prepare(np.asarray(c.image, dtype=np.float32), spec) for c in batch]
        masks = [np.asarray(c.mask).astype(bool) for c in batch]
        near = [dilate(m, tolerant_px) for m in masks] if tolerant_px is not None else masks
        near_side = [dilate(m, TOLERANT_SIDE_FRACTION * max(m.shape)) for m in masks]
        inputs = torch.stack([p[0] for p in prepared])
        for method in methods:
            cap = method_limits.get(method)
            take = len(batch) if cap is None else max(0, min(len(batch), cap - seen))
            if take == 0:
                continue
            t0 = time.perf_counter()
            options = dict(method_options.get(method, {}))
            if method == "gradcam" and not options:
                options["features"] = model.scores_and_features(inputs[:take])[1]
            maps = saliency_map(model, inputs[:take], method=method, **options)
            seconds[method] += time.perf_counter() - t0
            for i, (case, (_, to_source, support), m) in enumerate(zip(batch[:take], prepared[:take], maps)):
                src = to_source(m)
                mask = masks[i]
                row = {
                    "case_id": case.case_id,
                    "hit": pointing_game_hit(src, mask, tolerance_px=tolerance_px),
                    "energy_inside": energy_inside(src, mask),
                    "area_fraction": area_fraction(mask),
                    "centre_hit": centre_hit(mask),
                }
                if support is not None:
                    row["area_fraction_support"] = float(mask[support].mean()) if support.any() else 0.0
                if tolerant_px is not None:
                    row.update(hit_tolerant=pointing_game_hit(src, near[i]),
                               area_fraction_tolerant=area_fraction(near[i]),
                               centre_hit_tolerant=centre_hit(near[i]))
                row.update(hit_side=pointing_game_hit(src, near_side[i]),
                           area_fraction_side=area_fraction(near_side[i]), centre_hit_side=centre_hit(near_side[i]))
                results[method].append(row)
        seen += len(batch)
        if limit is not None and seen >= limit:
            break
    out: dict = {}
    for method in methods:
        summary = summarise(results[method], tolerance_px=tolerance_px, tolerant_px=tolerant_px)
        summary["seconds_per_image"] = seconds[method] / max(1, len(results[method]))
        if method in method_limits:
            summary["limited_to_first"] = method_limits[method]
        if method_options.get(method):
            summary["options"] = method_options[method]
        if group_of is not None:
            groups: dict[str, list[dict]] = {}
            for row in results[method]:
                groups.setdefault(group_of(row["case_id"]), []).append(row)
            summary["by_group"] = {g: summarise(rows, tolerance_px=tolerance_px, tolerant_px=tolerant_px)
                                   for g, rows in sorted(groups.items())}
        if keep_per_image:
            summary["per_image"] = results[method]
        out[method] = summary
    return out


# --- FracAtlas --------------------------------------------------------------------------------


def polygon_mask(polygons: Sequence[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """COCO polygons (flat x, y lists; pixel i spans [i, i + 1)) -> a (rows, cols) bool mask of the
    pixels whose centres lie inside any polygon."""
    from matplotlib.path import Path as PolyPath

    rows, cols = shape
    mask = np.zeros((rows, cols), dtype=bool)
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(xy) < 3:
            continue
        c0, r0 = np.floor(xy.min(axis=0)).astype(int)
        c1, r1 = np.ceil(xy.max(axis=0)).astype(int)
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, cols), min(r1, rows)
        if c1 <= c0 or r1 <= r0:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1]
        centres = np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])
        inside = PolyPath(xy).contains_points(centres).reshape(yy.shape)
        mask[r0:r1, c0:c1] |= inside
    return mask


def fracture_validation_cases(data_root: str | Path, *, limit: int | None = None) -> Iterator[LocalisationCase]:
    """The FracAtlas validation split's fractured images that have fracture polygons, by image id."""
    from medassist.ingest.images import load_jpeg_grayscale
    from medassist.models import fracatlas

    records = fracatlas.read_records(data_root)
    polygons = fracatlas.read_polygons(data_root)
    count = 0
    for rec in records:
        if not rec.fractured or fracatlas.split_of(rec.image_id, **FRACATLAS_SPLIT) != "val":
            continue
        polys = polygons.get(rec.image_id)
        if not polys:
            continue
        if limit is not None and count >= limit:
            return
        gray = load_jpeg_grayscale(rec.path)
        mask = polygon_mask(polys, gray.shape)
        if not mask.any():
            continue
        count += 1
        yield LocalisationCase(rec.image_id, gray, mask)


def fracture_validation_counts(data_root: str | Path) -> dict:
    """How many validation images are fractured, and how many of those have polygons."""
    from medassist.models import fracatlas

    records = [r for r in fracatlas.read_records(data_root)
               if fracatlas.split_of(r.image_id, **FRACATLAS_SPLIT) == "val"]
    polygons = fracatlas.read_polygons(data_root)
    fractured = [r for r in records if r.fractured]
    return {"validation_images": len(records), "fractured": len(fractured),
            "fractured_with_polygons": sum(1 for r in fractured if polygons.get(r.image_id))}


def evaluate_fracture_localisation(
    model: LoadedModel,
    data_root: str | Path,
    methods: Sequence[str] = METHODS,
    limit: int | None = None,
    *,
    method_limits: dict[str, int] | None = None,
    batch_size: int = 8,
    tolerance_px: float = 0.0,
    tolerant_px: float | None = TOLERANT_PX,
    method_options: dict[str, dict] | None = None,
) -> dict:
    """Pointing game and energy inside per method on FracAtlas validation fractures (source geometry)."""
    cases = fracture_validation_cases(data_root, limit=limit)
    return evaluate_localisation(
        model, cases, methods, limit=limit, method_limits=method_limits, batch_size=batch_size,
        tolerance_px=tolerance_px, tolerant_px=tolerant_px, method_options=method_options,
    )


# --- brain-tumour slices ------------------------------------------------------------------------


def yolo_box_mask(box: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """A YOLO box (normalised x centre, y centre, width, height) -> a (rows, cols) bool mask of the
    source pixels whose centres lie inside it (pixel i spans [i, i + 1))."""
    rows, cols = shape
    xc, yc, w, h = (float(v) for v in box)
    x0, x1 = (xc - w / 2) * cols, (xc + w / 2) * cols
    y0, y1 = (yc - h / 2) * rows, (yc + h / 2) * rows
    centres_r, centres_c = np.arange(rows) + 0.5, np.arange(cols) + 0.5
    return ((centres_r >= y0) & (centres_r <= y1))[:, None] & ((centres_c >= x0) & (centres_c <= x1))[None, :]


def _tumour_split(spec) -> dict:
    from medassist.audit.evaluation import brain_tumor_split

    return brain_tumor_split(spec)


def tumour_validation_records(data_root: str | Path, split: dict) -> list:
    """The validation split's tumour slices with a box, in class-interleaved order (glioma,
    meningioma, pituitary in turn, each by file number), so any prefix is balanced by type."""
    from medassist.audit.evaluation import interleave_by_class
    from medassist.models import tumor

    records = [r for r in tumor.read_records(data_root)
               if r.tumour and r.box is not None and tumor.split_of(r.number, **split) == "val"]
    return interleave_by_class(records)


def tumour_validation_cases(data_root: str | Path, split: dict, *, limit: int | None = None
                            ) -> Iterator[LocalisationCase]:
    """The brain-tumour validation split's tumour slices (grey 0..1, source pixels) with their YOLO
    box as the annotation mask, class-interleaved; case ids are ``<type>/<file number>``."""
    from medassist.ingest.images import load_jpeg_grayscale

    for count, rec in enumerate(tumour_validation_records(data_root, split)):
        if limit is not None and count >= limit:
            return
        gray = load_jpeg_grayscale(rec.path).astype(np.float32) / 255.0
        yield LocalisationCase(f"{rec.folder}/{rec.number}", gray, yolo_box_mask(rec.box, gray.shape))


def tumour_validation_counts(data_root: str | Path, split: dict) -> dict:
    """Validation slices, tumour slices, and tumour slices with a box, by type."""
    from medassist.models import tumor

    val = [r for r in tumor.read_records(data_root) if tumor.split_of(r.number, **split) == "val"]
    tumours = [r for r in val if r.tumour]
    return {"validation_slices": len(val), "tumour_slices": len(tumours),
            "tumour_slices_with_box": sum(r.box is not None for r in tumours),
            "by_type": {t: sum(r.folder == t for r in tumours) for t in tumor.TYPE_LABELS}}


def evaluate_tumour_localisation(
    model: LoadedModel,
    data_root: str | Path,
    methods: Sequence[str] = METHODS,
    limit: int | None = None,
    *,
    method_limits: dict[str, int] | None = None,
    batch_size: int = 8,
    tolerance_px: float = 0.0,
    tolerant_px: float | None = TOLERANT_PX,
    method_options: dict[str, dict] | None = None,
) -> dict:
    """Pointing game and energy inside per method on the brain-tumour validation slices (source
    pixels; boxes as masks), the maps made from ``tumor.prepare_slice`` inputs; also per tumour type
    (``by_group``: pituitary tumours sit near the slice centre, which the centre baseline rewards)."""
    split = _tumour_split(model.spec)
    return evaluate_localisation(
        model, tumour_validation_cases(data_root, split, limit=limit), methods, limit=limit,
        method_limits=method_limits, batch_size=batch_size, tolerance_px=tolerance_px, tolerant_px=tolerant_px,
        method_options=method_options, prepare=prepare_mri_slice, group_of=lambda case_id: case_id.split("/")[0],
    )


@dataclass(frozen=True)
class _LocalisationData:
    """What a localisation report runs on: a model's validation annotations."""

    cases: Callable[[int | None], Iterator[LocalisationCase]]
    evaluate: Callable[..., dict]
    description: dict
    method_limits: dict
    method_options: dict
    metrics: dict


def _localisation_data(model: LoadedModel, data_root: str | Path) -> _LocalisationData:
    if family_for(model.spec).volumetric:  # the tumour model's validation slices
        split = _tumour_split(model.spec)
        return _LocalisationData(
            cases=lambda n: tumour_validation_cases(data_root, split, limit=n),
            evaluate=evaluate_tumour_localisation,
            description={
                "dataset": "Brain-tumour validation split, figshare tumour slices with their YOLO boxes",
                "split": split,
                **tumour_validation_counts(data_root, split),
                "order": ("class-interleaved (glioma, meningioma, pituitary in turn, each by file number): "
                          "a method limited to the first N slices sees N/3 of each type"),
                "geometry": ("source pixels: maps mapped back through the letterbox and the head crop "
                             "(SliceFrame.to_source, zero outside the crop); masks = the YOLO box "
                             "(pixel centres inside it)"),
            },
            method_limits=TUMOUR_METHOD_LIMITS,
            method_options=TUMOUR_METHOD_OPTIONS,
            metrics={
                "pointing_game": "share of slices whose saliency maximum lies inside the tumour box",
                "pointing_game_tolerant": (f"the same, counting a maximum within {TOLERANT_PX:g} source pixels "
                                           "of the box as a hit"),
                "energy_inside": "share of positive saliency inside the tumour box, averaged over slices",
                "baselines": ("random peak / uniform map = box area fraction of the slice; in support = of the "
                              "head crop the map can reach; centre peak = slice centre inside the box"),
            },
        )
    return _LocalisationData(
        cases=lambda n: fracture_validation_cases(data_root, limit=n),
        evaluate=evaluate_fracture_localisation,
        description={
            "dataset": "FracAtlas validation split, fractured images with fracture polygons",
            "split": FRACATLAS_SPLIT,
            **fracture_validation_counts(data_root),
            "geometry": "source pixels: maps mapped back through the letterbox, masks drawn from the COCO polygons",
        },
        method_limits=DEFAULT_METHOD_LIMITS,
        method_options={},
        metrics={
            "pointing_game": "share of images whose saliency maximum lies inside the fracture annotation",
            "pointing_game_tolerant": (f"the same, counting a maximum within {TOLERANT_PX:g} source pixels "
                                       "of the annotation as a hit"),
            "pointing_game_side": (f"the same, counting a maximum within {TOLERANT_SIDE_FRACTION:.0%} of the "
                                   "image's longest side of the annotation as a hit"),
            "energy_inside": "share of positive saliency inside the annotation, averaged over images",
            "baselines": ("random peak / uniform map = annotation area fraction; "
                          "centre peak = image centre inside the annotation"),
        },
    )


def _json_safe(value):
    """NaN/inf -> None, numpy scalars -> Python numbers, tuples -> lists (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _merge_previous(report: dict, path: Path) -> None:
    """Carry over another run's methods (and sanity check) for the same weights into ``report``."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if (old.get("model") or {}).get("sha256") != report["model"]["sha256"]:
        return
    for method, result in (old.get("methods") or {}).items():
        report["methods"].setdefault(method, result)
    report["methods"] = {m: report["methods"][m] for m in METHODS if m in report["methods"]}
    limits = dict((old.get("data") or {}).get("method_limits") or {})
    limits.update(report["data"]["method_limits"])
    report["data"]["method_limits"] = {m: v for m, v in limits.items() if m in report["methods"]}
    if report.get("sanity_randomisation") is None and old.get("sanity_randomisation"):
        report["sanity_randomisation"] = old["sanity_randomisation"]
    report["wall_seconds"] = round(float(old.get("wall_seconds") or 0) + report["wall_seconds"], 1)


@dataclass(frozen=True)
class _ToSource:
    """Adapts a prepared image's map-to-source function to the ``letterbox.to_source`` interface."""

    to_source: Callable[[np.ndarray], np.ndarray]


def _sanity_on_cases(model: LoadedModel, cases: Iterable[LocalisationCase], n: int) -> dict:
    from medassist.explain.sanity import randomisation_check

    cases = [c for _, c in zip(range(n), cases)]
    prepare = preparer_for(model.spec)
    prepared = [prepare(np.asarray(c.image, dtype=np.float32), model.spec.preprocess) for c in cases]
    result = randomisation_check(model, torch.stack([p[0] for p in prepared]), [_ToSource(p[1]) for p in prepared])
    result["images"] = len(cases)
    result["test"] = ("Adebayo et al. 2018 model-parameter randomisation: Spearman rank correlation of "
                      "GradCAM maps (source geometry, 64 px) between the trained and fully re-initialised "
                      "weights; low means the maps depend on what the model learned")
    return result


def write_localisation_report(
    model: LoadedModel,
    data_root: str | Path,
    out_path: str | Path | None = None,
    *,
    methods: Sequence[str] = METHODS,
    limit: int | None = None,
    method_limits: dict[str, int] | None = None,
    method_options: dict[str, dict] | None = None,
    tolerance_px: float = 0.0,
    batch_size: int = 8,
    sanity_images: int = 16,
    merge: bool = False,
) -> dict:
    """Evaluate the model's saliency on its validation annotations and write the model card's JSON
    atomically (default ``model_cards/<model>_localisation.json``).

    The data follow the model: FracAtlas fractures (polygons) for radiograph models, the
    brain-tumour slices (YOLO boxes) for the volume (tumour) model. ``method_limits`` defaults to
    ``DEFAULT_METHOD_LIMITS`` (IG and occlusion on the first 40 images) for the fracture model and
    ``TUMOUR_METHOD_LIMITS`` (12 slices, 4 per type) for the tumour model; pass ``{}`` to run every
    method on every image. ``method_options`` defaults to the model's (tumour: 32 px occlusion
    stride). ``sanity_images`` > 0 adds the model-randomisation check (GradCAM, trained vs.
    re-initialised weights) on that many of the same images. ``merge=True`` keeps the results of
    methods (and the sanity check) not run this time from an existing report for the same weights
    (sha256), so expensive methods can be added in a later run.
    """
    data = _localisation_data(model, data_root)
    limits = data.method_limits if method_limits is None else method_limits
    limits = {k: v for k, v in limits.items() if k in methods}
    options = data.method_options if method_options is None else method_options
    options = {k: v for k, v in options.items() if k in methods}
    t0 = time.time()
    results = data.evaluate(
        model, data_root, methods, limit, method_limits=limits, batch_size=batch_size,
        tolerance_px=tolerance_px, method_options=options,
    )
    report = {
        "model": {"name": model.spec.name, "version": model.spec.version, "sha256": model.spec.sha256,
                  "score_head": model.spec.score_head, "input_size": model.spec.preprocess.input_size},
        "data": {**data.description, "limit": limit, "method_limits": limits,
                 **({"method_options": options} if options else {})},
        "metrics": data.metrics,
        "methods": results,
        "sanity_randomisation": _sanity_on_cases(model, data.cases(sanity_images), sanity_images)
        if sanity_images > 0 else None,
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(model.device),
        "wall_seconds": round(time.time() - t0, 1),
    }
    path = Path(out_path) if out_path is not None else Path("model_cards") / f"{model.spec.name}_localisation.json"
    if merge and path.is_file():
        _merge_previous(report, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    return _json_safe(report)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medassist.explain.localisation --model tumor_mri [--data-root ../shared/data/brain_tumor]``"""
    import argparse

    from medassist.models.registry import choose_device, load_model, spec_by_name

    parser = argparse.ArgumentParser(description="Localisation of a model's saliency on its validation "
                                     "annotations (model card JSON)")
    parser.add_argument("--data-root", default=None,
                        help="FracAtlas or brain_tumor folder (default: found as the audit finds it)")
    parser.add_argument("--model", default="fracture_xray")
    parser.add_argument("--out", default=None, help="default: model_cards/<model>_localisation.json")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--limit", type=int, default=None, help="images for every method")
    parser.add_argument("--expensive-limit", type=int, default=None,
                        help="images for IG and occlusion (0: all; default: 40 fracture, 12 tumour)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = spec_by_name(args.model)
    data_root = args.data_root
    if data_root is None:
        from medassist.audit.evaluation import find_brain_tumor, find_fracatlas

        data_root = (find_brain_tumor if family_for(spec).volumetric else find_fracatlas)(spec)
        if data_root is None:
            parser.error(f"no data found for {spec.name}: give --data-root")
    model = load_model(spec, choose_device(args.device))
    limits = None
    if args.expensive_limit is not None:
        limits = {} if args.expensive_limit == 0 else {m: args.expensive_limit for m in DEFAULT_METHOD_LIMITS}
    report = write_localisation_report(model, data_root, args.out, methods=args.methods,
                                       limit=args.limit, method_limits=limits)
    for method, r in report["methods"].items():
        pg, ei = r["pointing_game"], r["energy_inside"]
        print(f"{method}: n={r['n_images']} pointing game {pg['hit_rate']:.3f} "
              f"(random {pg['baseline_random_peak']:.3f}, centre {pg['baseline_centre_peak']:.3f}); "
              f"energy inside {ei['mean']:.3f} (uniform {ei['baseline_uniform_map']:.3f})")
    print(f"wrote {args.out or Path('model_cards') / f'{spec.name}_localisation.json'} "
          f"in {report['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
