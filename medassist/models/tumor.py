"""Brain-MRI tumour model: presence (primary) and type (glioma, meningioma, pituitary; secondary).

A 2D ``LocalisingResNet`` with four image outputs (presence logit + three type logits) and a cell
head supervised by the tumour boxes, applied slice by slice; a volume is scored by
``medassist.preprocess.volume.aggregate_study_score`` over its in-brain slices.

Data (``/work/shared/data/brain_tumor``):
- glioma / meningioma / pituitary: figshare brain tumour set (Cheng et al., CC BY 4.0), 512x512
  T1 contrast-enhanced slices, a YOLO box each; consecutive file numbers are slices of one patient.
- no_tumor: Br35H slices (licence not verified: used for training here, never redistributed),
  numbered 3065-4564 after the figshare numbers, mixed sizes and colour modes.
The split is by contiguous blocks of file numbers: block = number // block_size, validation when
block % n_folds == val_fold (the same rule for both sources: ``splits.block_split``, defaults
``splits.BRAIN_TUMOR_SPLIT``).

The two sources differ in framing, size, colour mode, compression and background; ``prepare_slice``
removes the cues it can (grey levels, per-image percentile scaling, background outside the head
zeroed, crop to the head, aspect-preserving resize and pad), and ``tumor_train.shortcut_probe`` checks what
is left with a logistic regression on simple image statistics.

They also differ in content, which no preprocessing removes: every tumour slice is T1 contrast-
enhanced and skull-base, sagittal and coronal slices are nearly all tumour slices, while the
no-tumour slices are mostly axial T2/FLAIR at ventricle level. A first model trained without
counter-measures separated the validation set perfectly (AUROC 0.9997) and flagged every normal
T1 volume (skull base read as "pituitary", vertex as "meningioma"). Counter-measures:
``tumor_train.mirror_negative`` makes tumour-free slices from the tumour slices themselves (the tumour
replaced by the mirrored other side of the head: same source, sequence and level), used for
training and validation; grey-level inversion augmentation; box supervision of the cell head.
``evaluate_normal_volumes`` is the check that matters: normal brains from other sources.

This module is the inference side (what triage, the families, audit and explain use): the records and
split, slice preprocessing, volume preparation, slice scores and the study score. Training (cache,
shortcut probe, mirror negatives, augmentation, the epoch loop, threshold choice, writing the model)
is ``medassist.models.tumor_train``, which builds on this module; nothing here imports it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from medassist.errors import MedassistError
from medassist.models.heads import HeadProbabilities, concatenate, head_probabilities, score_probability
from medassist.models.spec import ModelSpec, PreprocessSpec
from medassist.models.splits import block_settings, block_split
from medassist.preprocess import volume as vol
from medassist.preprocess.morphology import close_square, dilate_square, open_square
from medassist.preprocess.transforms import Letterbox, PercentileScale, prepare_2d_array

log = logging.getLogger(__name__)

TYPE_LABELS = ("glioma", "meningioma", "pituitary")
CLASS_FOLDERS = TYPE_LABELS + ("no_tumor",)
# The score heads training reports per epoch and chooses between when the config says score_head: auto.
HEAD_CHOICES = ("image", "cell_max")
# Inference settings that travel in ModelSpec.validation["inference"] (ModelSpec has no field for them).
DEFAULT_INFERENCE = {
    "type_labels": list(TYPE_LABELS),
    "aggregation": {"rule": "max_window_mean_sidak", "extent_mm": 10.0},
    "min_brain_fraction": 0.04,
    "min_relative_brain_fraction": 0.3,
    "plane": "acquisition",
}


# --- records and split ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TumorRecord:
    """One training slice: file number, class folder, path and box (xc, yc, w, h normalised) if any."""

    number: int
    folder: str
    path: Path
    box: tuple[float, float, float, float] | None

    @property
    def tumour(self) -> int:
        return int(self.folder != "no_tumor")

    @property
    def type_index(self) -> int:
        """0..2 for glioma, meningioma, pituitary; -1 without tumour."""
        return TYPE_LABELS.index(self.folder) if self.folder in TYPE_LABELS else -1


def read_records(root: str | Path) -> list[TumorRecord]:
    """Every slice under ``root``, sorted by file number (numbers are unique across folders)."""
    root = Path(root)
    records = []
    for folder in CLASS_FOLDERS:
        for path in (root / folder).glob("*.jpg"):
            box = None
            txt = path.with_suffix(".txt")
            if txt.exists():
                values = txt.read_text().split()
                if len(values) >= 5:
                    box = tuple(float(v) for v in values[1:5])
            if folder != "no_tumor" and box is None:
                log.warning("%s: tumour slice without a box", path)
            records.append(TumorRecord(int(path.stem), folder, path, box))  # type: ignore[arg-type]
    records.sort(key=lambda r: r.number)
    numbers = [r.number for r in records]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"{root}: file numbers repeat across class folders")
    return records


def split_of(number: int, *, block_size: int, n_folds: int, val_fold: int) -> str:
    """'train' or 'val' by contiguous blocks of file numbers (``splits.block_split``)."""
    return block_split(number, block_size=block_size, n_folds=n_folds, val_fold=val_fold)


def split_indices(records: list[TumorRecord], data_cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    settings = block_settings(data_cfg)
    split = np.array([split_of(r.number, **settings) for r in records])
    return np.flatnonzero(split == "train"), np.flatnonzero(split == "val")


# --- one slice -> network input ---------------------------------------------------------------------


@dataclass(frozen=True)
class SliceFrame:
    """Where the network input came from: the head crop in the source slice, then the letterbox."""

    crop: tuple[int, int, int, int]  # row0, row1, col0, col1 in source pixels
    letterbox: Letterbox

    def to_source(self, heatmap: np.ndarray, source_shape: tuple[int, int]) -> np.ndarray:
        """A network-input-sized map back onto the full source slice (zero outside the crop)."""
        r0, r1, c0, c1 = self.crop
        out = np.zeros(source_shape, dtype=np.float32)
        out[r0:r1, c0:c1] = self.letterbox.to_source(heatmap)
        return out


def head_mask(scaled: np.ndarray) -> np.ndarray:
    """The head (or brain, when skull-stripped) in a 0..1 slice: threshold, open, big parts, fill.

    Removes background noise, burnt-in text and rulers, which differ between the data sources.
    Computed on a copy reduced to about 256 pixels (block means), then expanded back. The square
    openings, closings and dilations are ndimage's (``preprocess.morphology``, the same pixels).
    """
    rows, cols = scaled.shape
    k = max(1, int(round(max(rows, cols) / 256)))
    small = block_means(scaled[: rows - rows % k, : cols - cols % k], k)
    otsu = vol.otsu_threshold(small)
    mask = small > max(0.04, 0.35 * otsu)
    mask = open_square(mask, 3)
    mask = keep_large_parts(mask)
    if mask.any():
        mask = close_square(mask, 5, iterations=2)
        mask = fill_holes(mask)
        mask = dilate_square(mask, 3)
    if k > 1:
        mask = np.repeat(np.repeat(mask, k, axis=0), k, axis=1)
    full = np.zeros((rows, cols), dtype=bool)
    full[: mask.shape[0], : mask.shape[1]] = mask
    return full


def block_means(image: np.ndarray, k: int) -> np.ndarray:
    """Means of the k x k blocks of a (rows, cols) float32 image whose sides are multiples of ``k``:
    ``image.reshape(rows // k, k, cols // k, k).mean(axis=(1, 3))``, the same numbers.

    For k = 2 (a 512-pixel slice) the four values of a block are added as numpy's mean adds them,
    (top-left + top-right) + (bottom-left + bottom-right), then divided by 4: six times faster
    than numpy's reduction over two short axes (tests check the two agree to the bit).
    """
    if k == 1:
        return image
    rows, cols = image.shape
    blocks = image.reshape(rows // k, k, cols // k, k)
    if k == 2 and image.dtype == np.float32:
        top = blocks[:, 0, :, 0] + blocks[:, 0, :, 1]
        bottom = blocks[:, 1, :, 0] + blocks[:, 1, :, 1]
        return (top + bottom) / 4
    return blocks.mean(axis=(1, 3))


def keep_large_parts(mask: np.ndarray) -> np.ndarray:
    """The 4-connected parts of ``mask`` of at least 5% of the largest part's area and 0.2% of the
    image (all False when the mask is empty)."""
    labels, n = ndimage.label(mask)
    if not n:
        return mask
    areas = np.bincount(labels.reshape(-1), minlength=n + 1)[1:]
    keep = np.zeros(n + 1, dtype=bool)  # label 0, the background, is never kept
    keep[1:] = areas >= max(0.05 * areas.max(), 0.002 * mask.size)
    return keep[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes(mask)``: background parts (4-connected, as fill_holes' default
    structure) that do not touch the image's edge become foreground. One labelling pass instead of
    fill_holes' dilation repeated until nothing changes (three times faster on a 256 x 256 mask)."""
    labels, _ = ndimage.label(~mask)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    filled = np.ones(labels.max() + 1, dtype=bool)  # label 0 (the mask itself) and the holes
    filled[edge[edge > 0]] = False  # the background reached from the edge
    return filled[labels]


def prepare_slice(image2d: np.ndarray, pre: PreprocessSpec) -> tuple[torch.Tensor, SliceFrame]:
    """One slice (any grey range) -> the (1, S, S) network input and where it came from.

    Percentile scaling -> head mask (background set to 0) -> crop to the head with a 4% margin ->
    ``prepare_2d`` (percentile scaling again, longest-side resize, centred pad).
    """
    array, frame = prepare_slice_array(image2d, pre)
    return torch.from_numpy(array), frame


def prepare_slice_array(image2d: np.ndarray, pre: PreprocessSpec) -> tuple[np.ndarray, SliceFrame]:
    """``prepare_slice`` with the input as a (1, S, S) float32 numpy array (``prepare_volume``
    stacks them with numpy)."""
    scaled = PercentileScale(*pre.percentiles)(image2d)
    mask = head_mask(scaled)
    rows, cols = scaled.shape
    if mask.sum() < 0.002 * mask.size:
        crop = (0, rows, 0, cols)
    else:
        rr, cc = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        margin = int(round(0.04 * max(rr[-1] - rr[0], cc[-1] - cc[0])))
        crop = (max(0, rr[0] - margin), min(rows, rr[-1] + 1 + margin),
                max(0, cc[0] - margin), min(cols, cc[-1] + 1 + margin))
        scaled = scaled * mask
    r0, r1, c0, c1 = crop
    array, letterbox = prepare_2d_array(scaled[r0:r1, c0:c1], pre)
    return array, SliceFrame(crop, letterbox)


def box_mask(box: tuple[float, float, float, float], source_shape: tuple[int, int], frame: SliceFrame) -> np.ndarray:
    """A YOLO box (normalised xc, yc, w, h) as the inscribed ellipse in the network-input frame."""
    rows, cols = source_shape
    xc, yc, w, h = box
    r0, _, c0, _ = frame.crop
    lb = frame.letterbox
    sy = lb.resized_shape[0] / lb.source_shape[0]
    sx = lb.resized_shape[1] / lb.source_shape[1]
    cy = (yc * rows - r0) * sy + lb.pad_before[0]
    cx = (xc * cols - c0) * sx + lb.pad_before[1]
    ry = max(1.0, h * rows * sy / 2)
    rx = max(1.0, w * cols * sx / 2)
    yy, xx = np.mgrid[0 : lb.input_size, 0 : lb.input_size]
    return ((((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2) <= 1.0).astype(np.uint8)


def frame_mask(mask: np.ndarray, frame: SliceFrame) -> np.ndarray:
    """A mask on the source slice (any non-zero = inside) carried into the network-input frame:
    the head crop, then the letterbox's resize (nearest neighbour) and pad."""
    r0, r1, c0, c1 = frame.crop
    lb = frame.letterbox
    crop = torch.from_numpy(np.ascontiguousarray(np.asarray(mask)[r0:r1, c0:c1] > 0, dtype=np.float32))
    resized = F.interpolate(crop[None, None], size=lb.resized_shape, mode="nearest")[0, 0].numpy()
    out = np.zeros((lb.input_size, lb.input_size), np.uint8)
    top, left = lb.pad_before
    out[top : top + resized.shape[0], left : left + resized.shape[1]] = resized > 0.5
    return out


# --- batch scoring of prepared slices ------------------------------------------------------------


@torch.no_grad()
def predict_all(net: nn.Module, images_u8: np.ndarray, batch_size: int = 32) -> tuple[HeadProbabilities, np.ndarray]:
    """Presence probabilities under every score head (numpy) and type probabilities (N, 3), for
    uint8 (N, S, S) inputs (on the network's device)."""
    net.eval()
    device = next(net.parameters()).device
    presence, type_p = [], []
    for start in range(0, len(images_u8), batch_size):
        x = torch.from_numpy(images_u8[start : start + batch_size]).float().div_(255.0)[:, None]
        logits, cells = net.forward_all(x.to(device).contiguous(memory_format=torch.channels_last))
        presence.append(head_probabilities(logits, cells))
        type_p.append(torch.softmax(logits[:, 1:4], dim=1).cpu().numpy())
    return concatenate(presence), np.concatenate(type_p)


# --- inference on slices and volumes -------------------------------------------------------------------


def inference_settings(spec: ModelSpec) -> dict:
    """The volume settings of a shipped tumour model (ModelSpec.validation['inference'], or defaults)."""
    return dict(DEFAULT_INFERENCE, **(spec.validation or {}).get("inference", {}))


@torch.no_grad()
def score_slices(network: nn.Module, spec: ModelSpec, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Presence probabilities (n,) and type probabilities (n, 3) for float slices (n, rows, cols)."""
    return slice_probabilities(network, spec, torch.stack([prepare_slice(s, spec.preprocess)[0] for s in slices]))


@torch.no_grad()
def slice_probabilities(network: nn.Module, spec: ModelSpec, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Presence (the spec's score head) and type probabilities of (k, 1, S, S) network inputs."""
    device = next(network.parameters()).device
    logits, cells = network.forward_all(inputs.to(device).contiguous(memory_format=torch.channels_last))
    presence = score_probability(logits, cells, spec.score_head)
    return presence.cpu().numpy(), torch.softmax(logits[:, 1:4].float(), 1).cpu().numpy()


@dataclass
class PreparedVolume:
    """A volume cut into network inputs, with what the study score needs: made where the volume
    is decoded (a triage worker), scored where the model is (``score_prepared_volume``)."""

    inputs: torch.Tensor  # (k, 1, S, S): the slices with enough foreground to score
    scored: np.ndarray  # (k,) their indices along the plane (canonical order)
    fractions: np.ndarray  # (n,) foreground fraction of every slice along the plane
    axis: int  # the plane's canonical axis
    spacing_mm: float  # between slices along the plane
    stored_index: tuple[int | None, ...]  # stored slice index of each canonical slice (None: a reformat)


NO_BRAIN = "no brain found in this volume"  # the start of every "no silent scores" error


def prepare_volume(spec: ModelSpec, image, *, axis: int | None = None, batch: int = 16) -> PreparedVolume:
    """Reorient ``image`` to the canonical frame, pick the acquisition plane (or ``axis``), measure
    every slice's foreground and prepare those with enough of it (``prepare_slice``), ``batch``
    slices copied at a time.

    A volume that holds no brain (non-finite values, no contrast, no slice with enough solid
    foreground) raises MedassistError ("no brain found in this volume: <why>", see
    ``check_brain_found``) instead of scoring 0: triage makes it an error row."""
    settings = inference_settings(spec)
    volume, axes = vol.reorient_canonical(image, spec.preprocess.source)
    axis = vol.acquisition_plane(axes) if axis is None else axis
    n = volume.shape[axis]
    ref = _intensity_reference_or_raise(volume)
    fractions = np.zeros(n)
    inputs: list[np.ndarray] = []
    fullest, fullest_fraction = np.zeros((0, 0), np.float32), -1.0  # the slice with most foreground
    for idx, chunk in vol.iter_slices(volume, axis, batch):
        finite = np.isfinite(chunk).all(axis=(1, 2))
        if not finite.all():
            raise MedassistError(f"{NO_BRAIN}: it holds NaN or infinite values "
                                 f"({vol.PLANES[axis]} slice {int(idx[np.argmin(finite)])})")
        fractions[idx] = [vol.brain_fraction(s, ref) for s in chunk]
        best = int(np.argmax(fractions[idx]))
        if fractions[idx][best] > fullest_fraction:
            fullest, fullest_fraction = chunk[best].copy(), float(fractions[idx][best])
        inputs += [prepare_slice_array(s, spec.preprocess)[0]
                   for s in chunk[fractions[idx] >= settings["min_brain_fraction"]]]
    check_brain_found(fullest, fullest_fraction, ref, settings["min_brain_fraction"])
    scored = np.flatnonzero(fractions >= settings["min_brain_fraction"])
    size = spec.preprocess.input_size
    return PreparedVolume(
        inputs=torch.from_numpy(np.stack(inputs)) if inputs else torch.zeros((0, 1, size, size)),
        scored=scored, fractions=fractions, axis=axis, spacing_mm=float(axes.spacing[axis]),
        stored_index=tuple(axes.source_slice_index(axis, i) for i in range(n)),
    )


def _intensity_reference_or_raise(volume: np.ndarray) -> vol.IntensityReference:
    """The volume's intensity reference; MedassistError when it is not finite or has no contrast."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN/inf in the sample: reported below
        ref = vol.intensity_reference(volume)
    if not (np.isfinite(ref.low) and np.isfinite(ref.high)):
        raise MedassistError(f"{NO_BRAIN}: it holds NaN or infinite values")
    if ref.threshold >= 1.0:  # intensity_reference's answer for an empty percentile range
        raise MedassistError(f"{NO_BRAIN}: it is empty or constant (its 1st and 99.5th intensity "
                             f"percentiles are both {ref.low:.6g})")
    return ref


def solid_foreground_fraction(slice2d: np.ndarray, reference: vol.IntensityReference) -> float:
    """Share of a slice's pixels above the volume's foreground threshold that survive a 3x3
    opening: a head or brain is solid, noise and speckle are not."""
    if slice2d.size == 0:
        return 0.0
    scaled = (np.asarray(slice2d, np.float32) - reference.low) / (reference.high - reference.low)
    foreground = scaled > reference.threshold
    return float(ndimage.binary_opening(foreground, structure=np.ones((3, 3), bool)).mean())


def check_brain_found(fullest: np.ndarray, fraction: float, reference: vol.IntensityReference,
                      min_fraction: float) -> None:
    """Raise MedassistError unless the fullest slice (its foreground ``fraction``) shows a head:
    at least ``min_fraction`` of it above the foreground threshold, and as solid foreground."""
    if fraction < min_fraction:
        raise MedassistError(f"{NO_BRAIN}: no slice has {min_fraction:.0%} of its pixels above the volume's "
                             f"foreground threshold (fullest slice: {fraction:.1%})")
    solid = solid_foreground_fraction(fullest, reference)
    if solid < min_fraction:
        raise MedassistError(f"{NO_BRAIN}: the fullest slice's foreground is scattered, not a head "
                             f"({solid:.1%} of its pixels in solid regions, {fraction:.1%} above threshold: noise?)")


IndicesAre = Literal["stored", "canonical"]  # the index space of a volume's reported slices


@dataclass(frozen=True, eq=False)  # eq=False: the per-slice arrays have no single truth value
class ScoredVolume:
    """The study score of one volume (``score_prepared_volume``), with what it was made from."""

    score: float
    """The study score (``preprocess.volume.aggregate_study_score`` over the in-brain slices)."""
    threshold: float
    """The model's operating threshold (``spec.threshold``)."""
    flagged: bool
    """``score >= threshold``."""
    slices: tuple[int, ...]
    """The flagged run's slice indices in ``indices_are``'s space; () when not flagged."""
    indices_are: IndicesAre
    """``stored`` when the plane is the stored slice axis (``slices`` are stored slice indices),
    else ``canonical`` (indices along the canonical axis of a reformatted plane)."""
    slice_scores: np.ndarray
    """(n,) float64 score of every slice along the plane, canonical order; 0 outside the brain."""
    in_brain: np.ndarray
    """(n,) bool: the slices counted as in the brain (``preprocess.volume.in_brain``)."""
    type_probabilities: dict[str, float]
    """Type label -> mean type probability over the flagged run (else of the top-scoring slice)."""
    plane: str
    """The plane scored across (one of ``preprocess.volume.PLANES``)."""
    spacing_mm: float
    """The spacing between slices along the plane."""
    window_slices: int
    """How many adjacent slices the aggregation window spans (``preprocess.volume.window_length``)."""


def score_volume(network: nn.Module, spec: ModelSpec, image, *, batch: int = 16, axis: int | None = None
                 ) -> ScoredVolume:
    """Score an Image slice by slice across its acquisition plane and aggregate to one study score
    (``prepare_volume`` then ``score_prepared_volume``)."""
    return score_prepared_volume(network, spec, prepare_volume(spec, image, axis=axis, batch=batch), batch=batch)


def score_prepared_volume(network: nn.Module, spec: ModelSpec, prepared: PreparedVolume, *, batch: int = 16
                          ) -> ScoredVolume:
    """The study score of a prepared volume (a ``ScoredVolume``): score, flagged, the flagged slice
    indices (in the stored slice order when the plane is the stored slice axis, else canonical
    indices, with ``indices_are`` saying which), per-slice scores (0 for slices outside the brain),
    in-brain mask, type probabilities of the flagged run, plane and window settings.
    """
    settings = inference_settings(spec)
    n, axis = prepared.fractions.size, prepared.axis
    slice_scores = np.zeros(n)
    type_probs = np.zeros((n, len(TYPE_LABELS)))
    for start in range(0, len(prepared.scored), batch):
        idx = prepared.scored[start : start + batch]
        slice_scores[idx], type_probs[idx] = slice_probabilities(network, spec, prepared.inputs[start : start + batch])
    inside = vol.in_brain(prepared.fractions, min_fraction=settings["min_brain_fraction"],
                          min_relative=settings["min_relative_brain_fraction"] if n > 1 else 0.0)
    slice_scores = np.where(inside, slice_scores, 0.0)
    threshold = float(spec.threshold)
    null = settings.get("null_logit")
    extent = settings["aggregation"]["extent_mm"]
    score, flagged_idx = vol.aggregate_study_score(
        slice_scores, n, spacing_mm=prepared.spacing_mm, extent_mm=extent,
        null=vol.NullModel(null["mean"], null["std"]) if null else None, threshold=threshold)
    flagged = score >= threshold
    types = type_probs[list(flagged_idx)].mean(0) if flagged_idx else type_probs[int(np.argmax(slice_scores))]
    source_idx = [prepared.stored_index[i] for i in flagged_idx]
    use_source = all(i is not None for i in prepared.stored_index)  # the plane is the stored slice axis
    return ScoredVolume(
        score=float(score), threshold=threshold, flagged=bool(flagged),
        slices=tuple(int(i) for i in (source_idx if use_source else flagged_idx)) if flagged else (),
        indices_are="stored" if use_source else "canonical",
        slice_scores=slice_scores, in_brain=inside,
        type_probabilities=dict(zip(settings["type_labels"], (float(v) for v in types))),
        plane=vol.PLANES[axis], spacing_mm=prepared.spacing_mm,
        window_slices=vol.window_length(n, prepared.spacing_mm, extent),
    )


# --- normal volumes from other sources ------------------------------------------------------------------


def thick_slices(image, thickness_mm: float = 5.0):
    """The image resampled to ``thickness_mm`` axial slices by averaging (partial-volume like a 2D
    acquisition); in-plane sampling unchanged. Returns a new Image with a matching affine."""
    from medassist.datamodel import Geometry, Image as MImage

    volume, axes = vol.reorient_canonical(image, "pixels")
    step = max(1, int(round(thickness_mm / axes.spacing[0])))
    n = volume.shape[0] // step
    thick = np.stack([np.asarray(volume[i * step : (i + 1) * step], dtype=np.float32).mean(0) for i in range(n)])
    spacing = (axes.spacing[0] * step, axes.spacing[1], axes.spacing[2])
    affine = np.diag([0.0, 0.0, 0.0, 1.0])
    affine[2, 0], affine[1, 1], affine[0, 2] = spacing  # slice -> +S, row -> +P, col -> +L
    geometry = Geometry(spacing=spacing, orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), affine=affine)
    return MImage(pixels=thick, display=_unit(thick), geometry=geometry)


def skull_strip(image):
    """A crude brain extraction for tests: Otsu foreground, eroded 4 mm, largest part, dilated back,
    holes filled; voxels outside set to 0. (Already stripped volumes change little.)"""
    from medassist.datamodel import Image as MImage

    pixels = np.asarray(image.pixels, dtype=np.float32)
    ref = vol.intensity_reference(pixels)
    mask = (pixels - ref.low) / (ref.high - ref.low) > ref.threshold
    radius = np.maximum(1, np.round(4.0 / np.asarray(image.geometry.spacing)).astype(int))
    ball = _ellipsoid(radius)
    core = ndimage.binary_erosion(mask, structure=ball)
    labels, n = ndimage.label(core)
    if n:
        sizes = ndimage.sum_labels(core, labels, index=np.arange(1, n + 1))
        core = labels == (int(np.argmax(sizes)) + 1)
    brain = ndimage.binary_dilation(core, structure=ball) & mask
    brain = np.stack([ndimage.binary_fill_holes(s) for s in brain])
    stripped = pixels * brain
    return MImage(pixels=stripped, display=_unit(stripped), geometry=image.geometry)


def _ellipsoid(radius: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    return sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radius)) <= 1.0


def _unit(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, (0.5, 99.5))
    return np.clip((values - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)


def _as_model(model):
    """(network, spec) from a LoadedModel, a (network, spec) pair, or a spec JSON path."""
    if isinstance(model, tuple):
        return model
    if hasattr(model, "network") and hasattr(model, "spec"):
        return model.network, model.spec
    from medassist.models.registry import load_model
    from medassist.models.spec import read_spec

    path = Path(model)
    loaded = load_model(read_spec(path), torch.device("cpu"), weights_dir=path.parent)
    return loaded.network, loaded.spec


def evaluate_normal_volumes(model, paths, *, thick_mm: float = 5.0, variants=("original", "thick", "skull_stripped")
                            ) -> dict:
    """Score normal brain volumes (NIfTI paths, or a name -> path dict) as given, resampled to
    ``thick_mm`` slices, and skull-stripped. Per volume and variant: slices, in-brain slices, share
    of in-brain slices above the slice threshold, study score, flagged, flagged slices.
    ``all_clear`` is True when no variant of any volume is flagged (the target)."""
    from medassist.ingest.nifti import read_nifti_series

    network, spec = _as_model(model)
    network.eval()
    named = dict(paths) if isinstance(paths, dict) else {Path(p).name.split(".")[0]: p for p in paths}
    report: dict = {"model": spec.name, "version": spec.version, "threshold": float(spec.threshold), "volumes": {}}
    for name, path in named.items():
        series = read_nifti_series(str(path))
        if not hasattr(series, "load"):
            report["volumes"][name] = {"error": str(series)}
            continue
        image = series.load()
        results = {}
        for variant in variants:
            img = {"original": lambda: image, "thick": lambda: thick_slices(image, thick_mm),
                   "skull_stripped": lambda: skull_strip(image)}[variant]()
            res = score_volume(network, spec, img)
            inside = res.in_brain
            results[variant] = {
                "shape": list(img.pixels.shape), "plane": res.plane, "spacing_mm": res.spacing_mm,
                "n_slices": int(len(inside)), "n_in_brain": int(inside.sum()),
                "fraction_slices_flagged": float(np.mean(res.slice_scores[inside] >= spec.threshold)) if inside.any() else 0.0,
                "max_slice_score": float(res.slice_scores.max()),
                "study_score": round(res.score, 6), "flagged": res.flagged, "flagged_slices": list(res.slices),
                "window_slices": res.window_slices,
            }
        report["volumes"][name] = results
    report["all_clear"] = not any(v.get("flagged") for r in report["volumes"].values() for v in r.values()
                                  if isinstance(v, dict))
    return report
