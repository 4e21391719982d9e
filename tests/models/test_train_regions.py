"""Leave-one-region-out training: ``train.exclude_regions`` drops every image showing a left-out region."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medassist.models.fracatlas import FracRecord
from medassist.models.train import without_regions


def record(number: int, region: str) -> FracRecord:
    return FracRecord(f"IMG{number:07d}.jpg", Path("x.jpg"), 0, region, "frontal", 0)


def test_images_showing_a_left_out_region_are_dropped_mixed_ones_too():
    records = [record(0, "hand"), record(1, "leg"), record(2, "hand+leg"), record(3, "hip"), record(4, "unknown")]
    kept = without_regions(np.arange(5), records, ["hand"])
    assert kept.tolist() == [1, 3, 4]
    assert without_regions(np.array([1, 3]), records, ["hip", "shoulder"]).tolist() == [1]
    assert without_regions(np.arange(5), records, ["shoulder"]).tolist() == [0, 1, 2, 3, 4]
