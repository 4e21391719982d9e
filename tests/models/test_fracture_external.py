"""The other-source radiograph reader (YOLO labels) and the cross-source threshold rule."""

import numpy as np
from PIL import Image

from medassist.models.fracture_external import read_external
from medassist.models.train import threshold_across_sources


def _image(folder, name):
    Image.fromarray(np.full((20, 30), 128, np.uint8)).convert("RGB").save(folder / f"{name}.jpg")


def test_read_external_labels_fracture_regions_and_anatomy_only_boxes(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a_elbow", "b_empty", "c_humerus_anatomy", "d_missing_label", "e_wrist_and_fingers"):
        _image(tmp_path / "images", name)
    (tmp_path / "labels" / "a_elbow.txt").write_text("0 0.1 0.2 0.3 0.4\n")
    (tmp_path / "labels" / "b_empty.txt").write_text("")
    (tmp_path / "labels" / "c_humerus_anatomy.txt").write_text("4 0.5 0.5 0.2 0.2")
    (tmp_path / "labels" / "e_wrist_and_fingers.txt").write_text("6 0.1 0.1 0.1 0.1\n1 0.2 0.2 0.1 0.1\n")
    records = {r.path.stem: r for r in read_external(tmp_path)}
    assert (records["a_elbow"].fractured, records["a_elbow"].region) == (1, "elbow")
    assert (records["b_empty"].fractured, records["b_empty"].region) == (0, "unknown")
    assert records["c_humerus_anatomy"].fractured == 0  # an anatomy box is not a fracture
    assert records["d_missing_label"].fractured == 0
    assert records["e_wrist_and_fingers"].region == "fingers+wrist"


def test_threshold_across_sources_keeps_the_sensitivity_on_every_source():
    y = np.array([0, 0, 1, 1, 1, 1, 1])
    easy = np.array([0.1, 0.2, 0.9, 0.9, 0.8, 0.8, 0.7])
    hard = np.array([0.1, 0.2, 0.6, 0.5, 0.4, 0.3, 0.05])
    threshold = threshold_across_sources({"same": (y, easy), "other": (y, hard)}, 0.8)
    for scores in (easy, hard):
        assert (scores[y == 1] >= threshold).mean() >= 0.8
    assert threshold == 0.3


def test_a_configured_external_set_that_is_missing_is_warned_about(tmp_path, caplog):
    from medassist.models.spec import PreprocessSpec
    from medassist.models.train import external_inputs

    pre = PreprocessSpec(input_size=32)
    assert external_inputs({"data": {}}, pre) is None  # none configured: nothing to say
    assert caplog.records == []
    with caplog.at_level("WARNING", logger="medassist.models.train"):
        assert external_inputs({"data": {"external_dev": str(tmp_path / "gone")}}, pre) is None
    assert any("external_dev" in r.getMessage() and "is missing" in r.getMessage() for r in caplog.records)
