"""Fixtures for the model tests: a tiny lgg_mri-like folder."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage


def write_lgg(root: Path, patients: dict[str, tuple[str, int, list[int]]]) -> None:
    """patients: id -> (institution, n slices, tumour slice numbers); slice k has grey level 10 k."""
    rows = []
    for patient, (inst, n, tumour) in patients.items():
        (root / patient).mkdir(parents=True)
        for k in range(1, n + 1):
            img = np.zeros((32, 32), np.uint8)
            img[6:26, 8:24] = 10 * k
            mask = np.zeros((32, 32), np.uint8)
            if k in tumour:
                mask[10:14, 10:14] = 255
            PILImage.fromarray(img).save(root / patient / f"{k:03d}_t1c.jpg", quality=100)
            PILImage.fromarray(mask).save(root / patient / f"{k:03d}_mask.png")
            rows.append({"patient": patient, "institution": inst, "slice": k,
                         "mask_pixels": int(mask.astype(bool).sum()), "tumour": int(k in tumour)})
    with open(root / "slices.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def write_lgg_tree():
    """``write_lgg(root, patients)``: slices.csv plus NNN_t1c.jpg / NNN_mask.png per patient."""
    return write_lgg
