"""FracAtlas (Abedeen et al., Sci Data 2023, CC BY 4.0): labels, masks, the block split, a tensor cache.

Consecutive image ids are often views of one patient, so the split is by contiguous blocks of ids:
block = id // block_size; a block goes to validation when block % n_folds == val_fold
(``splits.block_split``, defaults ``splits.FRACATLAS_SPLIT``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw
from tqdm import tqdm

from medassist.ingest.images import load_jpeg_grayscale
from medassist.models.spec import PreprocessSpec
from medassist.models.splits import block_split
from medassist.preprocess.transforms import letterbox_for, prepare_2d


@dataclass(frozen=True)
class FracRecord:
    """One FracAtlas image with its label and factors."""

    image_id: str
    path: Path
    fractured: int
    region: str
    view: str
    hardware: int


def image_number(image_id: str) -> int:
    """IMG0000412.jpg -> 412."""
    return int("".join(ch for ch in Path(image_id).stem if ch.isdigit()))


def split_of(image_id: str, *, block_size: int, n_folds: int, val_fold: int) -> str:
    """'train' or 'val' by contiguous blocks of image ids (``splits.block_split`` of the id's number)."""
    return block_split(image_number(image_id), block_size=block_size, n_folds=n_folds, val_fold=val_fold)


def _first_set(row: dict, names: tuple[str, ...]) -> str:
    hits = [n for n in names if row.get(n, "0") == "1"]
    return "+".join(hits) if hits else "unknown"


def read_records(root: str | Path) -> list[FracRecord]:
    """All images listed in dataset.csv that exist on disk, sorted by id."""
    root = Path(root)
    records = []
    with open(root / "dataset.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            fractured = int(row["fractured"])
            folder = "Fractured" if fractured else "Non_fractured"
            path = root / "images" / folder / row["image_id"]
            if not path.exists():
                continue
            region = _first_set(row, ("hand", "leg", "hip", "shoulder", "mixed"))
            view = _first_set(row, ("frontal", "lateral", "oblique"))
            records.append(FracRecord(row["image_id"], path, fractured, region, view, int(row["hardware"])))
    return sorted(records, key=lambda r: image_number(r.image_id))


def read_polygons(root: str | Path) -> dict[str, list[list[float]]]:
    """file_name -> list of fracture polygons (flat x,y lists) in source pixel coordinates."""
    coco = json.loads((Path(root) / "fracture_masks_coco.json").read_text())
    names = {img["id"]: img["file_name"] for img in coco["images"]}
    polygons: dict[str, list[list[float]]] = {}
    for ann in coco["annotations"]:
        segs = ann.get("segmentation") or []
        if not segs:
            x, y, w, h = ann["bbox"]
            segs = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        polygons.setdefault(names[ann["image_id"]], []).extend(s for s in segs if len(s) >= 6)
    return polygons


def rasterise_mask(polygons: list[list[float]], source_shape: tuple[int, int], input_size: int) -> np.ndarray:
    """The polygons drawn into the letterboxed network-input frame, uint8 0/1 (S, S)."""
    box = letterbox_for(source_shape, input_size)
    sy = box.resized_shape[0] / source_shape[0]
    sx = box.resized_shape[1] / source_shape[1]
    canvas = PILImage.new("L", (input_size, input_size), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        pts = [(x * sx + box.pad_before[1], y * sy + box.pad_before[0]) for x, y in zip(poly[0::2], poly[1::2])]
        draw.polygon(pts, fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8)


def build_cache(records: list[FracRecord], polygons: dict, spec: PreprocessSpec, cache_path: Path) -> dict:
    """Preprocess every image once (uint8 network inputs + masks); reuse the .npz when present."""
    if cache_path.exists():
        data = dict(np.load(cache_path))
        if list(data["ids"]) == [r.image_id for r in records]:
            return data
    size = spec.input_size
    images = np.zeros((len(records), size, size), dtype=np.uint8)
    masks = np.zeros((len(records), size, size), dtype=np.uint8)
    for i, rec in enumerate(tqdm(records, desc="preprocessing FracAtlas", unit="img")):
        gray = load_jpeg_grayscale(rec.path)
        tensor, _ = prepare_2d(gray.astype(np.float32), spec)
        images[i] = np.clip(tensor[0].numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if rec.image_id in polygons:
            masks[i] = rasterise_mask(polygons[rec.image_id], gray.shape, size)
    data = {
        "ids": np.array([r.image_id for r in records]),
        "images": images,
        "masks": masks,
        "labels": np.array([r.fractured for r in records], dtype=np.int64),
    }
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(cache_path)
    return data
