"""Training the brain-MRI tumour model (``medassist.models.tumor`` is its inference side).

The slice cache of the figshare / Br35H records, the shortcut probe (a logistic regression on
simple image statistics: what the preprocessing left of the two sources' differences), mirror
negatives (tumour-free slices made from the tumour slices themselves), the tumour-specific
augmentation, the epoch loop, the choice of score head and threshold on validation, the pseudo-
volume calibration of the study rule and writing the shipped model (``train_common``). See
``medassist.models.tumor`` for the data, the split and why these counter-measures exist.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from medassist.models.heads import parse_score_head
from medassist.models.spec import ModelSpec, PreprocessSpec
from medassist.models.splits import BRAIN_TUMOR_SPLIT
from medassist.models.tumor import (DEFAULT_INFERENCE, HEAD_CHOICES, TYPE_LABELS, TumorRecord, _ellipsoid, box_mask,
                                    predict_all, prepare_slice, read_records, split_indices)
from medassist.preprocess import volume as vol

log = logging.getLogger(__name__)


# --- the slice cache ------------------------------------------------------------------------------


def build_cache(records: list[TumorRecord], pre: PreprocessSpec, cache_path: Path) -> dict:
    """Preprocess every slice once (uint8 inputs, box masks, labels); reuse the .npz when current."""
    from medassist.ingest.images import load_jpeg_grayscale

    key = np.array([f"{r.folder}/{r.number}" for r in records])
    if cache_path.exists():
        data = dict(np.load(cache_path))
        if data["keys"].shape == key.shape and np.all(data["keys"] == key) and int(data["input_size"]) == pre.input_size:
            return data
    size = pre.input_size
    images = np.zeros((len(records), size, size), dtype=np.uint8)
    masks = np.zeros((len(records), size, size), dtype=np.uint8)
    shapes = np.zeros((len(records), 2), dtype=np.int32)
    t0 = time.time()
    for i, rec in enumerate(records):
        gray = load_jpeg_grayscale(rec.path)
        tensor, frame = prepare_slice(gray.astype(np.float32), pre)
        images[i] = np.clip(tensor[0].numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
        shapes[i] = gray.shape
        if rec.box is not None:
            masks[i] = box_mask(rec.box, gray.shape, frame)
        if i % 500 == 0:
            log.info("preprocessing brain MRI slices: %d/%d (%.0f s)", i, len(records), time.time() - t0)
    data = {
        "keys": key,
        "input_size": np.array(size),
        "numbers": np.array([r.number for r in records], dtype=np.int64),
        "images": images,
        "masks": masks,
        "labels": np.array([r.tumour for r in records], dtype=np.int64),
        "types": np.array([r.type_index for r in records], dtype=np.int64),
        "source_shapes": shapes,
    }
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(cache_path)
    return data


# --- shortcut probe -------------------------------------------------------------------------------


def image_statistics(images_u8: np.ndarray) -> np.ndarray:
    """Size-free statistics of preprocessed inputs that could betray the source, not the anatomy.

    Per image: 16-bin intensity histogram of the whole input, fraction of exact zeros, fraction of
    foreground, mean/std of the foreground, high-frequency energy (Laplacian), 8x8 JPEG blockiness
    (gradient on 8-pixel block borders over gradient elsewhere), bounding-box fill of the
    foreground, and its aspect ratio.
    """
    feats = []
    for img in images_u8:
        x = img.astype(np.float32) / 255.0
        fg = x > 0
        hist = np.histogram(x, bins=16, range=(0, 1))[0] / x.size
        lap = ndimage.laplace(x)
        hf = float(np.sqrt(np.mean(lap[fg] ** 2))) if fg.any() else 0.0
        dx = np.abs(np.diff(x, axis=1))
        border = dx[:, 7::8].mean()
        inner = np.delete(dx, np.s_[7::8], axis=1).mean()
        blockiness = float(border / (inner + 1e-6))
        rr, cc = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
        if rr.size:
            h, w = rr[-1] - rr[0] + 1, cc[-1] - cc[0] + 1
            fill, aspect = fg.sum() / (h * w), h / w
        else:
            fill, aspect = 0.0, 1.0
        feats.append(np.concatenate([
            hist,
            [np.mean(x == 0), fg.mean(), x[fg].mean() if fg.any() else 0, x[fg].std() if fg.any() else 0,
             hf, blockiness, fill, aspect],
        ]))
    return np.asarray(feats, dtype=np.float64)


STAT_NAMES = [f"hist{i:02d}" for i in range(16)] + [
    "zero_fraction", "foreground_fraction", "foreground_mean", "foreground_std", "highfreq_rms",
    "jpeg_blockiness", "bbox_fill", "bbox_aspect"]


def shortcut_probe(images_u8: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray) -> dict:
    """Train a logistic regression on ``image_statistics`` (train split), report validation AUROC.

    Near 1.0 means the inputs still carry a source cue a network could use instead of the tumour.
    Also reports the AUROC of each statistic alone (symmetric: max(a, 1 - a)).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats = image_statistics(images_u8)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(feats[train_idx], labels[train_idx])
    probe_auc = float(roc_auc_score(labels[val_idx], clf.predict_proba(feats[val_idx])[:, 1]))
    single = {}
    for j, name in enumerate(STAT_NAMES):
        a = float(roc_auc_score(labels[val_idx], feats[val_idx, j]))
        single[name] = round(max(a, 1 - a), 4)
    return {"probe_auroc": round(probe_auc, 4),
            "single_statistic_auroc": dict(sorted(single.items(), key=lambda kv: -kv[1]))}


# --- in-domain negatives: the tumour replaced by the mirrored opposite side -----------------------


def mirror_negative(image: np.ndarray, mask: np.ndarray, *, margin: float = 0.2, min_symmetry: float = 0.35,
                    feather: float = 3.0) -> np.ndarray | None:
    """A tumour-free version of a tumour slice, or None when it cannot be made.

    The tumour box, enlarged by ``margin`` of its size on each side, is replaced (feathered edges)
    by the mirror image of the same region on the other side of the head's vertical midline. Only
    for slices that are left-right symmetric outside that region (axial and coronal, not
    sagittal: correlation of the smoothed slice with its mirror image >= ``min_symmetry``) and
    whose enlarged box does
    not reach the midline (so midline tumours, most pituitary ones, are never erased).

    Why: every no-tumour slice comes from another source (Br35H: mostly T2/FLAIR, ventricle level)
    while skull-base and vertex slices are nearly all tumour slices, so a network learns the slice
    level and the sequence. These negatives have the tumour slices' own source, sequence and level.
    """
    img = np.asarray(image, dtype=np.float32)
    fg = img > 0
    cols = np.flatnonzero(fg.any(0))
    ys, xs = np.nonzero(mask)
    if cols.size < 16 or ys.size == 0:
        return None
    size = img.shape[1]
    twice_mid = int(cols[0] + cols[-1])  # 2 x the midline column
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    grow = int(round(margin * max(h, w))) + 2
    r0, r1 = max(0, ys.min() - grow), min(img.shape[0], ys.max() + 1 + grow)
    c0, c1 = max(0, xs.min() - grow), min(size, xs.max() + 1 + grow)
    mirrored_c0, mirrored_c1 = twice_mid - (c1 - 1), twice_mid - c0
    if not (c1 - 1 < mirrored_c0 or c0 > mirrored_c1):  # the region reaches the midline
        return None
    if mirrored_c0 < 0 or mirrored_c1 >= size:
        return None
    source = img[:, np.clip(twice_mid - np.arange(size), 0, size - 1)]
    region = np.zeros(img.shape, dtype=bool)
    region[r0:r1, c0:c1] = True
    outside = fg & ~region & (source > 0)
    if outside.sum() < 500:
        return None
    smooth = ndimage.gaussian_filter(img, 4.0)  # coarse anatomy: gyri are not symmetric pixel by pixel
    a, b = smooth[outside], smooth[:, np.clip(twice_mid - np.arange(size), 0, size - 1)][outside]
    if np.corrcoef(a, b)[0, 1] < min_symmetry:
        return None
    if np.mean(source[region] > 0) < 0.95 * np.mean(fg[region]):  # mirrored region leaves the head
        return None
    weight = ndimage.gaussian_filter(region.astype(np.float32), feather)
    out = img * (1 - weight) + source * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mirror_negatives(images_u8: np.ndarray, masks_u8: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror negatives of the given tumour slices: (images, the source indices they came from)."""
    made, sources = [], []
    for i in indices:
        neg = mirror_negative(images_u8[i], masks_u8[i])
        if neg is not None:
            made.append(neg)
            sources.append(i)
    size = images_u8.shape[-1]
    return (np.stack(made) if made else np.zeros((0, size, size), np.uint8)), np.array(sources, dtype=np.int64)


# --- augmentation ---------------------------------------------------------------------------------


def brain_region(slice01: np.ndarray, tumour: np.ndarray, *, erode_px: int = 6,
                 min_share: float = 0.25, max_share: float = 0.85) -> np.ndarray | None:
    """The brain in one head slice (0..1, background 0), as a skull-stripping tool would keep it.

    Tissue brighter than half the Otsu threshold inside the head (and than a third of its median,
    where the skull is a large share of the head), eroded by ``erode_px`` (about
    4 mm at 256 pixels: cuts the scalp off along the dark skull), the largest part, dilated back,
    holes filled, joined with the dilated tumour mask. ``None`` when the result is under
    ``min_share`` or over ``max_share`` of the head (no skull gap found, or not a head slice).
    """
    head = slice01 > 0
    head_area = int(head.sum())
    if head_area < 500:
        return None
    values = slice01[head]
    tissue = slice01 > max(0.5 * vol.otsu_threshold(values), 0.35 * float(np.median(values)))
    disk = _ellipsoid(np.array([erode_px, erode_px]))  # a round structuring element
    core = ndimage.binary_erosion(tissue, structure=disk)
    labels, n = ndimage.label(core)
    if n == 0:
        return None
    areas = ndimage.sum_labels(core, labels, index=np.arange(1, n + 1))
    brain = labels == (int(np.argmax(areas)) + 1)
    brain = ndimage.binary_dilation(brain, structure=disk) & head
    brain = ndimage.binary_fill_holes(brain)
    if tumour.any():
        brain |= ndimage.binary_dilation(tumour, structure=_ellipsoid(np.array([3, 3])))
    share = brain.sum() / head_area
    return brain if min_share <= share <= max_share else None


def _ellipse_keep(x2d: torch.Tensor, m2d: torch.Tensor, grid: torch.Tensor, gen: torch.Generator
                  ) -> torch.Tensor | None:
    """Fallback brain: an ellipse inside the head's bounding box that always holds the tumour."""
    fg = x2d > 0
    rows, cols = torch.nonzero(fg.any(1)).flatten(), torch.nonzero(fg.any(0)).flatten()
    if rows.numel() < 8 or cols.numel() < 8:
        return None
    top, bottom, left, right = grid[rows[0]], grid[rows[-1]], grid[cols[0]], grid[cols[-1]]
    cy, cx = (top + bottom) / 2, (left + right) / 2
    shrink = 0.72 + 0.16 * torch.rand(2, generator=gen)
    ry, rx = (bottom - top) / 2 * shrink[0], (right - left) / 2 * shrink[1]
    r2 = ((grid[:, None] - cy) / ry) ** 2 + ((grid[None, :] - cx) / rx) ** 2
    if m2d.any():
        need = float(r2[m2d > 0].max().sqrt()) * 1.05
        if need > 1:
            r2 = r2 / need**2
    return r2 <= 1


def simulate_skull_strip(x: torch.Tensor, m: torch.Tensor, p: float, gen: torch.Generator):
    """On a random share ``p`` of the batch: keep the brain (``brain_region``; an ellipse inside
    the head where no brain is found), zero the rest, rescale intensities, and zoom so the kept
    part fills the frame (as the head crop does at inference). The kept part always holds the
    tumour mask."""
    n, _, s, _ = x.shape
    chosen = torch.rand(n, generator=gen) < p
    if not chosen.any():
        return x, m
    x, m = x.clone(), m.clone()
    grid = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2 - 1  # normalised coordinates
    for i in torch.nonzero(chosen).flatten().tolist():
        region = brain_region(x[i, 0].numpy(), m[i, 0].numpy() > 0)
        keep = torch.from_numpy(region) if region is not None else _ellipse_keep(x[i, 0], m[i, 0], grid, gen)
        if keep is None:
            continue
        rows, cols = torch.nonzero(keep.any(1)).flatten(), torch.nonzero(keep.any(0)).flatten()
        brain = x[i, 0] * keep.float()
        values = brain[brain > 0]
        if values.numel() > 100:
            top_value = torch.quantile(values[:: max(1, values.numel() // 20000)], 0.995)
            brain = (brain / top_value.clamp(min=0.05)).clamp(0, 1)
        # zoom: the kept part's bounding box becomes the frame (aspect kept)
        cy, cx = (grid[rows[0]] + grid[rows[-1]]) / 2, (grid[cols[0]] + grid[cols[-1]]) / 2
        half = float(max(grid[rows[-1]] - grid[rows[0]], grid[cols[-1]] - grid[cols[0]])) / 2 * 1.04 + 1.0 / s
        theta = torch.tensor([[[half, 0.0, float(cx)], [0.0, half, float(cy)]]])
        g = F.affine_grid(theta, [1, 1, s, s], align_corners=False)
        x[i] = F.grid_sample(brain[None, None], g, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        m[i] = F.grid_sample(m[i : i + 1], g, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    return x, m


def degrade(x: torch.Tensor, aug: dict, gen: torch.Generator) -> torch.Tensor:
    """Lower in-plane resolution (thick/low-resolution slices) and add noise inside the head."""
    n, _, s, _ = x.shape
    fg = (x > 0).float()
    if aug.get("lowres_p", 0) > 0:
        factor = 1.0 + float(torch.rand(1, generator=gen)) * (aug.get("lowres_max", 2.5) - 1.0)
        small = max(8, int(round(s / factor)))
        low = F.interpolate(F.interpolate(x, size=(small, small), mode="area"), size=(s, s),
                            mode="bilinear", align_corners=False)
        pick = (torch.rand(n, 1, 1, 1, generator=gen) < aug["lowres_p"]).float()
        x = pick * low + (1 - pick) * x
    if aug.get("noise_p", 0) > 0:
        sigma = torch.rand(n, 1, 1, 1, generator=gen) * aug.get("noise_max", 0.04)
        pick = (torch.rand(n, 1, 1, 1, generator=gen) < aug["noise_p"]).float()
        x = x + pick * sigma * torch.randn(x.shape, generator=gen) * fg
    return (x * fg).clamp(0, 1)


def augment_tumor_batch(x: torch.Tensor, m: torch.Tensor, aug: dict, gen: torch.Generator):
    """Skull-strip simulation -> geometric and intensity jitter (train.augment_batch) -> degrade
    -> grey-level inversion."""
    from medassist.models.augment import augment_batch

    x, m = simulate_skull_strip(x, m, aug.get("skull_strip_p", 0.0), gen)
    x, m = augment_batch(x, m, aug, gen)
    x = degrade(x, aug, gen)
    if aug.get("invert_p", 0) > 0:
        # Grey-level inversion inside the head: T1-like slices look T2-like and vice versa, so the
        # sequence (all tumours are T1 CE, many normals T2/FLAIR) stops predicting the label.
        pick = (torch.rand(x.shape[0], 1, 1, 1, generator=gen) < aug["invert_p"]) & (x > 0)
        x = torch.where(pick, 1.0 - x, x)
    return x, m


# --- training -------------------------------------------------------------------------------------


def _preprocess_spec(config: dict) -> PreprocessSpec:
    p = config["preprocess"]
    return PreprocessSpec(input_size=p["input_size"], source=p.get("source", "display"),
                          percentiles=tuple(p.get("percentiles", (0.5, 99.5))))


@dataclass
class TrainingData:
    """Every training and validation slice as a network input, with split indices.

    ``kinds``: 0 = an original slice, 1 = a mirror negative (tumour erased); ``source`` = the
    original row a row came from. ``origins``: "figshare" (tumour slices), "br35h" (no-tumour
    slices), "lgg", "ixi" (``tumor_sources``); a mirror row keeps its source's origin, numbers,
    folders and groups. ``numbers``/``folders``: figshare file number and class folder, LGG slice
    number and patient, IXI axial index and subject/variant (runs of consecutive numbers in one
    folder are one patient's adjacent slices). ``groups``: the patient (figshare: the block).
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    types: np.ndarray
    kinds: np.ndarray
    source: np.ndarray
    numbers: np.ndarray
    folders: np.ndarray
    origins: np.ndarray
    groups: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray

    def strata(self) -> np.ndarray:
        """The sampling stratum of each row: "mirror_negative", else "<origin>_tumour" or "<origin>_negative"."""
        own = np.char.add(self.origins.astype(str), np.where(self.labels == 1, "_tumour", "_negative"))
        return np.where(self.kinds == 1, "mirror_negative", own)


def training_data(cache: dict, records: list[TumorRecord], train_idx: np.ndarray, val_idx: np.ndarray,
                  use_mirror: bool = True, extra: Sequence = (), block_size: int = BRAIN_TUMOR_SPLIT["block_size"]) -> TrainingData:
    """The figshare cache, plus the ``extra`` sources (``tumor_sources.SourceSlices``, split by
    patient), plus mirror negatives made from the train (resp. validation) tumour slices of all."""
    n0 = len(cache["images"])
    folders0 = np.array([r.folder for r in records])
    parts = {
        "images": [cache["images"]] + [e.images for e in extra],
        "masks": [cache["masks"]] + [e.masks for e in extra],
        "labels": [cache["labels"]] + [e.labels for e in extra],
        "types": [cache["types"]] + [np.full(len(e), -1, np.int64) for e in extra],
        "numbers": [cache["numbers"]] + [e.positions for e in extra],
        "folders": [folders0] + [np.char.add(np.char.add(e.groups.astype(str), "/"), e.variants.astype(str))
                                 for e in extra],
        "origins": [np.where(folders0 == "no_tumor", "br35h", "figshare")] + [np.full(len(e), e.origin) for e in extra],
        "groups": [np.char.add("figshare:", (cache["numbers"] // block_size).astype(str))] + [e.groups for e in extra],
    }
    base = {k: np.concatenate([np.asarray(v).astype(str) if k in ("folders", "origins", "groups") else v
                               for v in vals]) for k, vals in parts.items()}
    offsets = np.cumsum([n0] + [len(e) for e in extra])
    train, val = [np.asarray(train_idx)], [np.asarray(val_idx)]
    for e, offset in zip(extra, offsets[:-1]):
        train.append(offset + np.flatnonzero(e.splits == "train"))
        val.append(offset + np.flatnonzero(e.splits == "val"))
    train_idx, val_idx = np.concatenate(train), np.concatenate(val)
    n_base, labels = len(base["labels"]), base["labels"]
    images, source = [base["images"]], [np.arange(n_base)]
    new_train, new_val = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if use_mirror:
        neg_tr, src_tr = mirror_negatives(base["images"], base["masks"], train_idx[labels[train_idx] == 1])
        neg_va, src_va = mirror_negatives(base["images"], base["masks"], val_idx[labels[val_idx] == 1])
        images += [neg_tr, neg_va]
        source += [src_tr, src_va]
        new_train = n_base + np.arange(len(src_tr))
        new_val = n_base + len(src_tr) + np.arange(len(src_va))
    source_all = np.concatenate(source)
    n_new = len(source_all) - n_base
    kinds = np.concatenate([np.zeros(n_base, np.int64), np.ones(n_new, np.int64)])
    masks = base["masks"]
    return TrainingData(
        images=np.concatenate(images) if n_new else base["images"],
        masks=np.concatenate([masks, np.zeros((n_new,) + masks.shape[1:], masks.dtype)]) if n_new else masks,
        labels=np.where(kinds == 1, 0, labels[source_all]),
        types=np.where(kinds == 1, -1, base["types"][source_all]),
        kinds=kinds, source=source_all, numbers=base["numbers"][source_all], folders=base["folders"][source_all],
        origins=base["origins"][source_all], groups=base["groups"][source_all],
        train_idx=np.concatenate([train_idx, new_train]), val_idx=np.concatenate([val_idx, new_val]),
    )


def stratified_sampler(strata: np.ndarray, fractions: Mapping[str, float], n: int, gen: torch.Generator
                       ) -> torch.Tensor:
    """Draw ``n`` row indices, each stratum with its share of ``fractions`` (uniform within it).
    Strata without a share are never drawn; shares of strata with no rows are dropped and the
    rest renormalised."""
    weights = np.zeros(len(strata))
    present = {k: v for k, v in fractions.items() if v > 0 and np.any(strata == k)}
    if not present:
        raise ValueError(f"no rows in any sampled stratum {sorted(fractions)}; strata: {sorted(set(strata))}")
    total = sum(present.values())
    for name, share in present.items():
        rows = strata == name
        weights[rows] = share / total / rows.sum()
    return torch.multinomial(torch.as_tensor(weights), n, replacement=True, generator=gen)


def epoch_sampler(labels: np.ndarray, kinds: np.ndarray, positive_fraction: float, mirror_fraction: float,
                  gen: torch.Generator) -> torch.Tensor:
    """Draw an epoch (len(labels) indices): tumour slices, mirror negatives and other negatives in
    the given shares (mirror share 0 or no mirrors: plain balanced sampling)."""
    mirror = (kinds == 1) & (labels == 0)
    if not mirror.any():
        mirror_fraction = 0.0
    strata = np.where(labels == 1, "tumour", np.where(mirror, "mirror", "other"))
    fractions = {"tumour": positive_fraction, "mirror": mirror_fraction,
                 "other": 1 - positive_fraction - mirror_fraction}
    return stratified_sampler(strata, fractions, len(labels), gen)


def train_tumor(config: dict, device: torch.device = torch.device("cpu")) -> ModelSpec:
    """Train the tumour model end to end from its config; returns the written ModelSpec.

    ``config["train"]["max_steps"]`` (optional) stops each epoch early: for smoke runs only.
    """
    from medassist.models.networks import build_network
    from medassist.models.train_common import cell_targets, initial_weights, log_progress, optimise, resolve

    cfg = config["train"]
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(cfg.get("threads", 2))
    pre = _preprocess_spec(config)
    records = read_records(resolve(config["data"]["root"]))
    cache = build_cache(records, pre, resolve(config["output"]["cache"]))
    train_idx, val_idx = split_indices(records, config["data"])
    fractions = cfg.get("source_fractions")
    use_mirror = (fractions or {}).get("mirror_negative", cfg.get("mirror_fraction", 0)) > 0
    data = training_data(cache, records, train_idx, val_idx, use_mirror=use_mirror,
                         extra=extra_sources(config, pre), block_size=config["data"]["block_size"])
    labels, types, kinds = data.labels, data.types, data.kinds
    strata = data.strata()
    for name, idx in (("train", data.train_idx), ("validation", data.val_idx)):
        counts = dict(zip(*np.unique(strata[idx], return_counts=True)))
        log.info("%s: %d slices %s", name, len(idx), {str(k): int(v) for k, v in counts.items()})

    log.info("training on %s", device)
    net = build_network(config["network"]["name"], config["network"]["args"])
    if cfg.get("init_from"):  # fine-tuning weights trained here earlier (e.g. the released version)
        net.load_state_dict(initial_weights(cfg["init_from"]))
    net = net.to(device).to(memory_format=torch.channels_last)
    epochs, batch_size = cfg["epochs"], cfg["batch_size"]
    steps_per_epoch = int(cfg.get("steps_per_epoch") or len(data.train_idx) // batch_size)
    if cfg.get("max_steps"):
        steps_per_epoch = min(steps_per_epoch, int(cfg["max_steps"]))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["learning_rate"],
                                                total_steps=epochs * steps_per_epoch, pct_start=0.15)
    ckpt_dir = resolve(config["output"]["checkpoints"])
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, history = 0, []
    last = ckpt_dir / "last.pt"
    # Resume only a run of the same config: a checkpoint of another config is set aside, not reused.
    config_text = json.dumps(config, sort_keys=True, default=str)
    config_file = ckpt_dir / "config.json"
    if last.exists() and (not config_file.exists() or config_file.read_text() != config_text):
        stale = ckpt_dir / f"stale-{int(time.time())}"
        stale.mkdir()
        for f in ("last.pt", "history.json", "config.json"):
            if (ckpt_dir / f).exists():
                (ckpt_dir / f).replace(stale / f)
        log.warning("checkpoint in %s is from another config: moved to %s, starting afresh", ckpt_dir, stale)
    config_file.write_text(config_text)
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start_epoch = int(state["epoch"]) + 1
        history = json.loads((ckpt_dir / "history.json").read_text())
        log.info("resuming after epoch %d", start_epoch)

    gen = torch.Generator().manual_seed(cfg["seed"])
    image_bce = nn.BCEWithLogitsLoss()
    cell_bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(cfg["cell_pos_weight"], device=device))
    type_ce = nn.CrossEntropyLoss()
    tr = data.train_idx
    for epoch in range(start_epoch, epochs):
        gen.manual_seed(cfg["seed"] * 1000 + epoch)
        if fractions:
            order = tr[stratified_sampler(strata[tr], fractions, steps_per_epoch * batch_size, gen).numpy()]
        else:
            order = tr[epoch_sampler(labels[tr], kinds[tr], cfg["positive_fraction"], cfg.get("mirror_fraction", 0.0),
                                     gen).numpy()]
        net.train()
        t0, running = time.time(), 0.0
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * batch_size : (step + 1) * batch_size])
            x = torch.from_numpy(data.images[idx]).float().div_(255.0)[:, None]
            m = torch.from_numpy(data.masks[idx]).float()[:, None]
            x, m = augment_tumor_batch(x, m, cfg["augment"], gen)  # on the CPU, from the seeded generator
            x, m = x.to(device, non_blocking=True), m.to(device, non_blocking=True)
            y = torch.from_numpy(labels[idx]).float().to(device)
            t = torch.from_numpy(types[idx]).to(device)
            logits, cells = net.forward_all(x.contiguous(memory_format=torch.channels_last))
            loss = image_bce(logits[:, 0], y) + cfg["cell_loss_weight"] * cell_bce(cells, cell_targets(m, cells.shape[-2:]))
            if (t >= 0).any():
                loss = loss + cfg["type_loss_weight"] * type_ce(logits[t >= 0, 1:4], t[t >= 0])
            running += optimise(opt, sched, loss)
            log_progress(epoch, step, steps_per_epoch, running, batch_size, t0, log)
        va = data.val_idx
        val, val_types = predict_all(net, data.images[va])
        aurocs = {k: _auroc(labels[va], val.of(k)) for k in HEAD_CHOICES}
        in_domain = (kinds[va] == 1) | (labels[va] == 1)
        aurocs_in = {k: _auroc(labels[va][in_domain], val.of(k)[in_domain]) for k in HEAD_CHOICES}
        by_stratum = {k: m["auroc"] for k, m in source_metrics(labels[va], val.cell_max, data.origins[va],
                                                                strata[va], 0.5).items()}
        history.append({"epoch": epoch, "loss": running / steps_per_epoch, "val_auroc": aurocs,
                        "val_auroc_tumour_vs_mirror": aurocs_in, "val_auroc_cell_max_by_source": by_stratum,
                        "type_accuracy": _type_accuracy(val_types, types[va]), "seconds": time.time() - t0})
        log.info("epoch %d done: loss %.4f val AUROC %s, tumour vs mirror negatives %s, cell_max by source %s "
                 "(%.0f s)", epoch, running / steps_per_epoch, {k: round(v, 4) for k, v in aurocs.items()},
                 {k: round(v, 4) for k, v in aurocs_in.items()}, {k: round(v, 3) for k, v in by_stratum.items()},
                 time.time() - t0)
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch}, ckpt_dir / "last.tmp")
        (ckpt_dir / "last.tmp").replace(last)
        (ckpt_dir / "history.json").write_text(json.dumps(history, indent=1))

    return finish_tumor(config, net, pre, data, history)


# --- threshold, validation report, writing the model ----------------------------------------------


def source_metrics(labels: np.ndarray, scores: np.ndarray, origins: np.ndarray, strata: np.ndarray,
                   threshold: float) -> dict[str, dict]:
    """Validation metrics per source: each tumour source's slices against the negatives from the
    same source (its tumour-free slices and its mirror negatives: "<origin>_same_source"), and all
    tumour slices against each negative stratum ("vs_<stratum>")."""
    from medassist.metrics import binary_metrics

    out = {}
    for origin in sorted(set(origins[labels == 1])):
        rows = origins == origin
        if len(set(labels[rows])) == 2:
            out[f"{origin}_same_source"] = binary_metrics(labels[rows], scores[rows], threshold)
    pos = labels == 1
    for name in sorted(set(strata[~pos])):
        rows = pos | (strata == name)
        out[f"vs_{name}"] = binary_metrics(labels[rows], scores[rows], threshold)
    return out


def extra_sources(config: dict, pre: PreprocessSpec) -> list:
    """The LGG and IXI training sources named in the config's data section (``data.lgg``,
    ``data.ixi``; absent: not used), as ``tumor_sources.SourceSlices``, cached beside the figshare cache."""
    from medassist.models import tumor_sources
    from medassist.models.train_common import resolve

    data_cfg, cfg = config["data"], config["train"]
    cache = resolve(config["output"]["cache"])
    found = []
    if data_cfg.get("lgg"):
        found.append(tumor_sources.lgg_slices(data_cfg, pre, cache.with_name(f"lgg_{pre.input_size}.npz"),
                                              negative_margin_slices=int(cfg.get("lgg_negative_margin_slices", 1))))
    if data_cfg.get("ixi"):
        found.append(tumor_sources.ixi_slices(data_cfg, pre, cache.with_name(f"ixi_{pre.input_size}.npz"),
                                              slice_step=int(cfg.get("ixi_slice_step", 2))))
    return found


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from medassist.metrics import binary_metrics

    return binary_metrics(labels, scores, 0.5)["auroc"]


def _type_accuracy(type_probs: np.ndarray, types: np.ndarray) -> float:
    pos = types >= 0
    return float(np.mean(type_probs[pos].argmax(1) == types[pos])) if pos.any() else float("nan")


def choose_threshold(labels: np.ndarray, scores: np.ndarray, rule: dict) -> float:
    """The slice threshold: ``{"sensitivity": s}`` (highest threshold keeping it) or ``{"youden": true}``."""
    from medassist.metrics import threshold_for_sensitivity, youden_threshold

    if "sensitivity" in rule:
        return threshold_for_sensitivity(labels, scores, float(rule["sensitivity"]))
    return youden_threshold(labels, scores)


def patient_runs(numbers: np.ndarray, folders: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Positions of runs of consecutive file numbers in one class (about one patient each), cut to ``max_len``."""
    runs: list[list[int]] = []
    for i in range(len(numbers)):
        if runs and folders[i] == folders[runs[-1][-1]] and numbers[i] == numbers[runs[-1][-1]] + 1 \
                and len(runs[-1]) < max_len:
            runs[-1].append(i)
        else:
            runs.append([i])
    return [np.array(r) for r in runs]


def pseudo_volume_calibration(scores: np.ndarray, labels: np.ndarray, numbers: np.ndarray, folders: np.ndarray,
                              threshold: float, extent_mm: float, null: vol.NullModel | None, seed: int = 0) -> dict:
    """How the study rule behaves with the slice count, on validation slices.

    Negatives: pseudo-volumes of N validation negative slices drawn at random (independent scores:
    the case where max-over-slices inflates most), N in 1, 5, 15, 50, 150, at 1 mm and 5 mm
    spacing; share flagged by the shipped rule (window + correction), the window alone, and plain max.
    Positives: runs of up to 8 consecutive numbers of one tumour class (about one patient, 7 mm
    apart as in the figshare acquisitions), padded with N - len(run) negative slices on both sides;
    share flagged. ``numbers``/``folders`` are used for positives only.
    """
    rng = np.random.default_rng(seed)
    neg = scores[labels == 0]
    pos_idx = np.flatnonzero(labels == 1)
    order = pos_idx[np.argsort(numbers[pos_idx], kind="stable")]
    pos_runs = [order[r] for r in patient_runs(numbers[order], folders[order], 8) if len(r) >= 3]
    out: dict = {"threshold": float(threshold), "extent_mm": extent_mm, "negatives": {}, "positives": {}}
    for spacing in (1.0, 5.0):
        for n in (1, 5, 15, 50, 150):
            if n > len(neg):
                continue
            flags_rule, flags_win, flags_max = [], [], []
            for _ in range(300):
                s = rng.choice(neg, size=n, replace=False)
                flags_rule.append(vol.aggregate_study_score(s, spacing_mm=spacing, extent_mm=extent_mm, null=null)[0]
                                  >= threshold)
                flags_win.append(vol.aggregate_study_score(s, spacing_mm=spacing, extent_mm=extent_mm)[0] >= threshold)
                flags_max.append(s.max() >= threshold)
            out["negatives"][f"n{n}_{spacing:g}mm"] = {"shipped_rule": float(np.mean(flags_rule)),
                                                        "window_only": float(np.mean(flags_win)),
                                                        "max_rule": float(np.mean(flags_max))}
    for n_pad in (0, 10, 40):
        flags = []
        for r in pos_runs:
            pad = rng.choice(neg, size=2 * n_pad, replace=True) if n_pad else np.zeros(0)
            s = np.concatenate([pad[:n_pad], scores[r], pad[n_pad:]])
            flags.append(vol.aggregate_study_score(s, spacing_mm=7.0, extent_mm=extent_mm, null=null)[0] >= threshold)
        out["positives"][f"run_plus_{2 * n_pad}_normal_slices"] = {
            "n_runs": len(pos_runs), "flagged": float(np.mean(flags)) if flags else float("nan")}
    out["single_slice"] = {"specificity": float(np.mean(neg < threshold)),
                           "sensitivity": float(np.mean(scores[labels == 1] >= threshold))}
    return out


def finish_tumor(config, net, pre, data: TrainingData, history) -> ModelSpec:
    """Pick the score head and slice threshold on validation (other-source negatives and mirror
    negatives together), measure the study rule, write the model."""
    from medassist.metrics import binary_metrics, threshold_for_sensitivity
    from medassist.models.train_common import write_shipped_model

    va = data.val_idx
    labels, types, kinds = data.labels[va], data.types[va], data.kinds[va]
    val, val_types = predict_all(net, data.images[va])
    head = config.get("score_head", "auto")
    if head == "auto":
        head = max(HEAD_CHOICES, key=lambda k: _auroc(labels, val.of(k)))
    head = parse_score_head(head).value
    scores = val.of(head)
    threshold = choose_threshold(labels, scores, config.get("threshold_rule", {"youden": True}))
    inference = dict(DEFAULT_INFERENCE, **config.get("inference", {}))
    extent = float(inference["aggregation"]["extent_mm"])
    # The null models real normal slices: mirror negatives are made, and score nearly like tumours.
    null = vol.NullModel.fit(scores[(labels == 0) & (kinds == 0)])
    calibration = pseudo_volume_calibration(scores, labels, data.numbers[va], data.folders[va],
                                            threshold, extent, null, seed=config["train"]["seed"])
    tr = data.train_idx
    train_sub = tr[:: max(1, len(tr) // 800)]
    train_scores = predict_all(net, data.images[train_sub])[0].of(head)
    pos = types >= 0
    confusion = np.zeros((3, 3), dtype=int)
    for true, pred in zip(types[pos], val_types[pos].argmax(1)):
        confusion[true, pred] += 1
    other_source = kinds == 0
    in_domain = (kinds == 1) | (labels == 1)
    by_type = {name: float(np.mean(scores[types == k] >= threshold)) for k, name in enumerate(TYPE_LABELS)}
    orig_tr, orig_va = tr[data.kinds[tr] == 0], va[kinds == 0]
    validation = {
        "validation": binary_metrics(labels, scores, threshold),
        "validation_other_source_negatives": binary_metrics(labels[other_source], scores[other_source], threshold),
        "validation_tumour_vs_mirror_negatives": binary_metrics(labels[in_domain], scores[in_domain], threshold),
        "validation_by_source": source_metrics(labels, scores, data.origins[va], data.strata()[va], threshold),
        "auroc_by_head": {k: {"all": _auroc(labels, val.of(k)),
                              "tumour_vs_mirror": _auroc(labels[in_domain], val.of(k)[in_domain])}
                          for k in HEAD_CHOICES},
        "sensitivity_by_type": by_type,
        "type": {"labels": list(TYPE_LABELS), "accuracy": _type_accuracy(val_types, types),
                 "confusion_rows_true": confusion.tolist()},
        "training_subset": binary_metrics(data.labels[train_sub], train_scores, threshold),
        "operating_points": {f"sensitivity_{int(s * 100)}": threshold_for_sensitivity(labels, scores, s)
                             for s in (0.9, 0.95, 0.99)},
        "study_rule_calibration": calibration,
        "shortcut_probe": {
            "tumour_vs_other_source": shortcut_probe(data.images[: len(data.kinds) - int(data.kinds.sum())],
                                                     data.labels[: len(data.kinds) - int(data.kinds.sum())],
                                                     orig_tr, orig_va),
            "tumour_vs_all_negatives": shortcut_probe(data.images, data.labels, tr, va),
        },
        "inference": dict(inference, slice_threshold=round(float(threshold), 6),
                          null_logit={"mean": null.logit_mean, "std": null.logit_std}),
        "split": dict(config["data"], rule="figshare and Br35H: block = number // block_size; val if block % "
                      "n_folds == val_fold; LGG (by patient, stratified by institution) and IXI (by subject): "
                      "tumor_data.hash_split"),
        "validation_counts": {str(k): int(v) for k, v in zip(*np.unique(data.strata()[va], return_counts=True))},
        "mirror_negatives": {"train": int(data.kinds[tr].sum()), "validation": int(kinds.sum())},
        "history": history,
    }
    return write_shipped_model(config, net, pre, threshold=threshold, score_head=head, validation=validation)
