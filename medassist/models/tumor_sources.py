"""The tumour model's training sources besides figshare, as cached network inputs (tumour 2.0.0).

- ``lgg``: every LGG slice (skull on, T1 post-contrast) through ``tumor.prepare_slice``; its
  FLAIR-abnormality mask mapped into the same frame (``tumor.frame_mask``) supervises the cell
  head. Tumour-free slices within ``negative_margin_slices`` of a tumour slice are left out of
  the negatives (the abnormality can reach them below the mask's threshold).
- ``ixi``: healthy IXI T1 volumes (no contrast, skull on) as axial in-brain slices, every
  ``slice_step``-th, in three variants: as given, ``tumor.skull_strip``-ped (like a research
  volume) and ``tumor.thick_slices`` (6 mm averaging, like a 2D clinical acquisition).

Each source becomes a ``SourceSlices``: uint8 inputs, uint8 masks, labels, the patient (or
subject) each row came from, its split (``tumor_data.lgg_split`` / ``ixi_split``: by patient)
and its variant. Cached as ``.npz`` keyed by the file list and input size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from medassist.models import tumor, tumor_data
from medassist.models.spec import PreprocessSpec

log = logging.getLogger(__name__)

IXI_VARIANTS = ("as_given", "skull_stripped", "thick")
IXI_THICK_MM = 6.0


@dataclass(frozen=True)
class SourceSlices:
    """One source's slices as network inputs, row-aligned arrays."""

    origin: str  # "lgg" or "ixi"
    images: np.ndarray  # (n, S, S) uint8
    masks: np.ndarray  # (n, S, S) uint8, 1 inside the tumour (all 0 for negatives)
    labels: np.ndarray  # (n,) 1 = tumour in the slice
    groups: np.ndarray  # (n,) patient or subject id
    splits: np.ndarray  # (n,) "train" or "val"
    variants: np.ndarray  # (n,) "slice" (LGG) or an IXI_VARIANTS entry
    positions: np.ndarray  # (n,) slice number (LGG, from 1) or canonical axial index (IXI)

    def __len__(self) -> int:
        return len(self.labels)


def _to_u8(tensor) -> np.ndarray:
    return np.clip(tensor[0].numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _save(path: Path, key: np.ndarray, size: int, slices: SourceSlices) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    arrays = {f.name: getattr(slices, f.name) for f in fields(slices) if f.name != "origin"}
    np.savez(tmp, keys=key, input_size=np.array(size), origin=np.array(slices.origin), **arrays)
    tmp.replace(path)


def _load(path: Path, key: np.ndarray, size: int) -> SourceSlices | None:
    if not path.exists():
        return None
    data = dict(np.load(path))
    if data["keys"].shape != key.shape or not np.all(data["keys"] == key) or int(data["input_size"]) != size:
        return None
    return SourceSlices(origin=str(data["origin"]), **{f.name: data[f.name] for f in fields(SourceSlices)
                                                        if f.name != "origin"})


def lgg_slices(data_cfg: Mapping | None, pre: PreprocessSpec, cache_path: Path, *,
               negative_margin_slices: int = 1) -> SourceSlices:
    """Every LGG slice as a network input with its mask, split by patient (cached)."""
    from medassist.ingest.images import load_jpeg_grayscale

    slices = tumor_data.read_lgg(tumor_data.source_root(data_cfg, "lgg"))
    split = tumor_data.lgg_split(slices, data_cfg)
    key = np.array([f"{s.patient}/{s.slice}/{split[s.patient]}" for s in slices] + [f"margin={negative_margin_slices}"])
    cached = _load(cache_path, key, pre.input_size)
    if cached is not None:
        return cached
    patients = tumor_data.lgg_patients(slices)
    keep: list[tumor_data.LggSlice] = []
    for group in patients.values():
        tumour_at = np.flatnonzero([s.tumour for s in group])
        for i, s in enumerate(group):
            near = tumour_at.size and np.min(np.abs(tumour_at - i)) <= negative_margin_slices
            if s.tumour or not near:
                keep.append(s)
    size = pre.input_size
    images = np.zeros((len(keep), size, size), np.uint8)
    masks = np.zeros_like(images)
    t0 = time.time()
    for i, s in enumerate(keep):
        tensor, frame = tumor.prepare_slice(load_jpeg_grayscale(s.image).astype(np.float32), pre)
        images[i] = _to_u8(tensor)
        if s.tumour:
            masks[i] = tumor.frame_mask(load_jpeg_grayscale(s.mask) > 127, frame)
        if i % 1000 == 0:
            log.info("preprocessing LGG slices: %d/%d (%.0f s)", i, len(keep), time.time() - t0)
    result = SourceSlices(
        origin="lgg", images=images, masks=masks, labels=np.array([s.tumour for s in keep], np.int64),
        groups=np.array([s.patient for s in keep]), splits=np.array([split[s.patient] for s in keep]),
        variants=np.array(["slice"] * len(keep)), positions=np.array([s.slice for s in keep], np.int64))
    _save(cache_path, key, size, result)
    return result


def ixi_slices(data_cfg: Mapping | None, pre: PreprocessSpec, cache_path: Path, *, slice_step: int = 2,
               variants: tuple[str, ...] = IXI_VARIANTS) -> SourceSlices:
    """Every ``slice_step``-th in-brain axial slice of each IXI subject, per variant (cached)."""
    from medassist.models.tumor_volumes import load_nifti

    subjects = tumor_data.read_ixi(tumor_data.source_root(data_cfg, "ixi"))
    split = tumor_data.ixi_split(subjects, data_cfg)
    key = np.array([f"{s.subject}/{split[s.subject]}" for s in subjects] + [f"step={slice_step}", *variants])
    cached = _load(cache_path, key, pre.input_size)
    if cached is not None:
        return cached
    images, groups, kinds, positions = [], [], [], []
    t0 = time.time()
    for n, subject in enumerate(subjects):
        image = load_nifti(subject.path)
        shown = {"as_given": image, "skull_stripped": tumor.skull_strip(image),
                 "thick": tumor.thick_slices(image, IXI_THICK_MM)}
        for variant in variants:
            step = 1 if variant == "thick" else slice_step
            for k, s in list(tumor_data.axial_slices_of(shown[variant], source=pre.source))[::step]:
                images.append(_to_u8(tumor.prepare_slice(s, pre)[0]))
                groups.append(subject.subject)
                kinds.append(variant)
                positions.append(k)
        log.info("preprocessing IXI volumes: %d/%d (%.0f s)", n + 1, len(subjects), time.time() - t0)
    stack = np.stack(images)
    result = SourceSlices(
        origin="ixi", images=stack, masks=np.zeros_like(stack), labels=np.zeros(len(stack), np.int64),
        groups=np.array(groups), splits=np.array([split[g] for g in groups]), variants=np.array(kinds),
        positions=np.array(positions, np.int64))
    _save(cache_path, key, pre.input_size, result)
    return result
