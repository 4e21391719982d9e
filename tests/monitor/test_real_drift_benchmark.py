"""benchmarks/monitor_real_drift.py's parts that need no model: the sample and the DICOM wrapping
(scripts/make_sample_data.py's converter, at the JPEG's own size, with the set's body part)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "monitor_real_drift.py"


def _script():
    spec = importlib.util.spec_from_file_location("monitor_real_drift", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sample_is_seeded_keeps_order_and_takes_all_when_short():
    m = _script()
    items = list(range(50))
    picked = m.sample(items, 10, seed=0)
    assert picked == m.sample(items, 10, seed=0) == sorted(picked) and len(set(picked)) == 10
    assert m.sample(items, 80, seed=0) == items
    assert m.parse_args([]).images == 150 and m.parse_args(["-n", "2"]).images == 2


def test_each_jpeg_becomes_a_dx_study_at_its_own_size_with_the_set_body_part(tmp_path):
    m = _script()
    rng = np.random.default_rng(0)
    cases = []
    for i, (shape, part) in enumerate((((700, 600), "FINGER"), ((40, 30), ""))):
        path = tmp_path / f"image{i}_png.rf.{'0123456789abcdef' * 3}.jpg"  # a long Roboflow-style name
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert("RGB").save(path)
        cases.append({"path": path, "id": path.stem, "label": i, "body_part": part, "views": []})

    m.wrap(cases, tmp_path / "dicom", tag="EXT", source="fracture_external_dev")

    files = sorted((tmp_path / "dicom").rglob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    assert [ds.Modality for ds in datasets] == ["DX", "DX"]
    assert [ds.BodyPartExamined for ds in datasets] == ["FINGER", ""]
    assert [ds.pixel_array.shape for ds in datasets] == [(700, 600), (40, 30)]  # not shrunk to 512
    assert len({ds.StudyInstanceUID for ds in datasets}) == 2
    for ds in datasets:
        assert len(ds.SeriesDescription) <= 64
        assert len(ds.StudyTime) == 6 and int(ds.StudyTime[:2]) < 24
