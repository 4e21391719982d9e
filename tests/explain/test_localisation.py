"""medassist.explain.localisation: pointing game, energy inside, and the evaluation loop."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medassist.explain.localisation import (
    LocalisationCase,
    area_fraction,
    centre_hit,
    dilate,
    energy_inside,
    evaluate_localisation,
    fracture_validation_cases,
    pointing_game_hit,
    polygon_mask,
)

from medassist.metrics import wilson_interval

from .test_saliency import signal_model

DATA = Path(os.environ.get("MEDASSIST_DATA", "/work/shared/data"))


def box_mask(shape, r0, r1, c0, c1):
    mask = np.zeros(shape, bool)
    mask[r0:r1, c0:c1] = True
    return mask


def test_pointing_game_on_synthetic_masks():
    mask = box_mask((50, 60), 10, 20, 30, 40)
    sal = np.zeros((50, 60), np.float32)
    sal[15, 35] = 1.0
    assert pointing_game_hit(sal, mask)
    sal[40, 5] = 2.0  # the peak moves outside
    assert not pointing_game_hit(sal, mask)
    near = box_mask((50, 60), 36, 40, 8, 12)  # nearest mask pixel (39, 8): sqrt(10) px from the peak
    assert pointing_game_hit(sal, near, tolerance_px=3.2)
    assert not pointing_game_hit(sal, near, tolerance_px=3.0)
    assert pointing_game_hit(sal, dilate(near, 3.2)) and not pointing_game_hit(sal, dilate(near, 3.0))
    assert not pointing_game_hit(np.zeros((50, 60)), mask)  # a blank map points nowhere
    assert not pointing_game_hit(sal, np.zeros((50, 60), bool))
    with pytest.raises(ValueError):
        pointing_game_hit(sal, np.ones((5, 5), bool))


def test_energy_inside_on_synthetic_masks():
    mask = box_mask((40, 40), 0, 20, 0, 40)  # top half
    sal = np.zeros((40, 40), np.float32)
    sal[:20] = 3.0
    sal[20:] = 1.0
    assert energy_inside(sal, mask) == pytest.approx(0.75)
    assert energy_inside(np.ones((40, 40)), mask) == pytest.approx(area_fraction(mask)) == pytest.approx(0.5)
    sal[20:] = -5.0  # negative saliency is not energy
    assert energy_inside(sal, mask) == pytest.approx(1.0)
    assert energy_inside(np.zeros((40, 40)), mask) == 0.0


def test_baselines_and_interval():
    assert centre_hit(box_mask((11, 11), 4, 7, 4, 7))
    assert not centre_hit(box_mask((11, 11), 0, 2, 0, 2))
    low, high = wilson_interval(8, 10)
    assert 0.4 < low < 0.8 < high < 1.0
    assert wilson_interval(0, 0) != wilson_interval(0, 0)  # nan for no images


def test_polygon_mask_covers_pixel_centres_inside_the_polygon():
    square = [[2.0, 3.0, 6.0, 3.0, 6.0, 7.0, 2.0, 7.0]]  # x 2..6, y 3..7 in pixel-edge coordinates
    mask = polygon_mask(square, (10, 10))
    assert mask.sum() == 16
    assert mask[3:7, 2:6].all()
    triangle = polygon_mask([[0.0, 0.0, 10.3, 0.0, 0.0, 10.3]], (10, 10))  # centres with x + y < 10.3
    rows, cols = np.indices((10, 10))
    np.testing.assert_array_equal(triangle, (rows + 0.5) + (cols + 0.5) < 10.3)
    assert not polygon_mask([[20.0, 20.0, 30.0, 20.0, 30.0, 30.0]], (10, 10)).any()  # off the image


def test_evaluate_localisation_on_synthetic_cases():
    """A model that responds to a bright disc; masks around the disc hit, masks elsewhere miss."""
    model = signal_model(input_size=448)
    shape = (300, 500)
    rows, cols = np.indices(shape)
    cases = []
    for i, (r, c) in enumerate([(200, 400), (80, 100)]):
        image = np.zeros(shape, np.float32)
        image[(rows - r) ** 2 + (cols - c) ** 2 <= 20**2] = 1.0
        near = (rows - r) ** 2 + (cols - c) ** 2 <= 60**2  # GradCAM cells are 32 input px
        cases.append(LocalisationCase(f"hit{i}", image, near))
        cases.append(LocalisationCase(f"miss{i}", image, box_mask(shape, 0, 30, 0, 30)))
    out = evaluate_localisation(model, cases, ["gradcam"], batch_size=4, keep_per_image=True)
    result = out["gradcam"]
    per = {row["case_id"]: row for row in result["per_image"]}
    assert all(per[f"hit{i}"]["hit"] for i in range(2))
    assert not any(per[f"miss{i}"]["hit"] for i in range(2))
    # random features see the disc from afar (big receptive field): the energy is spread, but more of
    # it is near the disc than a uniform map would put there, and little is in the far corner
    assert all(per[f"hit{i}"]["energy_inside"] > per[f"hit{i}"]["area_fraction"] for i in range(2))
    assert all(per[f"miss{i}"]["energy_inside"] < per[f"hit{i}"]["energy_inside"] / 5 for i in range(2))
    assert result["n_images"] == 4 and result["pointing_game"]["hit_rate"] == pytest.approx(0.5)
    assert 0 < result["energy_inside"]["baseline_uniform_map"] < 0.1
    tolerant = result["pointing_game_tolerant"]
    assert tolerant["tolerance_px"] == 15 and tolerant["hit_rate"] >= result["pointing_game"]["hit_rate"]
    assert tolerant["baseline_random_peak"] > result["pointing_game"]["baseline_random_peak"]
    json.dumps(out)  # the report is JSON-serialisable

    limited = evaluate_localisation(model, cases, ["gradcam", "occlusion"], limit=3,
                                    method_limits={"occlusion": 1},
                                    method_options={"occlusion": {"window": 224, "stride": 224}})
    assert limited["gradcam"]["n_images"] == 3 and limited["occlusion"]["n_images"] == 1
    assert limited["occlusion"]["limited_to_first"] == 1


@pytest.mark.skipif(not (DATA / "fracatlas" / "dataset.csv").is_file(), reason="FracAtlas data not present")
def test_fracture_validation_cases_are_val_fractures_with_masks():
    from medassist.models.fracatlas import split_of

    cases = list(fracture_validation_cases(DATA / "fracatlas", limit=2))
    assert len(cases) == 2
    for case in cases:
        assert split_of(case.case_id, block_size=100, n_folds=5, val_fold=4) == "val"
        assert case.image.shape == case.mask.shape and case.mask.any()
        assert 0 < area_fraction(case.mask) < 0.5


def fake_fracatlas(root: Path) -> Path:
    """A three-image FracAtlas-shaped folder: ids 400 and 401 are validation (block 4), 100 is not."""
    from PIL import Image as PILImage

    rows = ["image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,frontal,lateral,oblique"]
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "fractured"}]}
    rng = np.random.default_rng(0)
    for number, fractured in ((100, 1), (400, 1), (401, 0)):
        name = f"IMG{number:07d}.jpg"
        folder = root / "images" / ("Fractured" if fractured else "Non_fractured")
        folder.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray((rng.random((60, 80)) * 255).astype(np.uint8)).save(folder / name)
        rows.append(f"{name},1,0,0,0,0,0,0,{fractured},{fractured},1,0,0")
        coco["images"].append({"id": number, "file_name": name, "height": 60, "width": 80})
        if fractured:
            coco["annotations"].append({"id": number, "image_id": number, "category_id": 1,
                                        "segmentation": [[10, 10, 30, 10, 30, 25, 10, 25]], "bbox": [10, 10, 20, 15]})
    (root / "dataset.csv").write_text("\n".join(rows) + "\n")
    (root / "fracture_masks_coco.json").write_text(json.dumps(coco))
    return root


def test_write_localisation_report_on_a_tiny_dataset(tmp_path):
    from medassist.explain.localisation import write_localisation_report

    from .conftest import dev_model

    root = fake_fracatlas(tmp_path / "fracatlas")
    out = tmp_path / "cards" / "loc.json"
    report = write_localisation_report(dev_model(input_size=128), root, out, methods=["gradcam"], sanity_images=1)
    saved = json.loads(out.read_text())  # strict JSON: NaN would have been written as null
    assert saved == report
    assert saved["data"]["fractured_with_polygons"] == 1 and saved["data"]["validation_images"] == 2
    result = saved["methods"]["gradcam"]
    assert result["n_images"] == 1
    assert result["energy_inside"]["baseline_uniform_map"] == pytest.approx(20 * 15 / (60 * 80))
    assert saved["sanity_randomisation"]["signed"]["n"] == 4
    assert [p.name for p in out.parent.iterdir()] == ["loc.json"]


def test_report_merge_adds_a_method_for_the_same_weights(tmp_path):
    from medassist.explain.localisation import write_localisation_report

    from .conftest import dev_model

    root = fake_fracatlas(tmp_path / "fracatlas")
    out = tmp_path / "loc.json"
    model = dev_model(input_size=128)
    first = write_localisation_report(model, root, out, methods=["gradcam"], sanity_images=0)
    first["sanity_randomisation"] = {"signed": {"n": 4}}  # stands in for an earlier sanity run
    out.write_text(json.dumps(first))
    merged = write_localisation_report(model, root, out, methods=["occlusion"], sanity_images=0, merge=True,
                                       method_limits={"occlusion": 1})
    assert list(merged["methods"]) == ["gradcam", "occlusion"]
    assert merged["data"]["method_limits"] == {"occlusion": 1}
    assert merged["sanity_randomisation"]["signed"]["n"] == 4
    assert json.loads(out.read_text()) == merged


# --- brain-tumour slices (the tumour model) -------------------------------------------------------

TUMOUR_SPLIT = {"block_size": 10, "n_folds": 2, "val_fold": 1}


def _mri_slice(shape=(120, 100), disc=(50, 35), radius=9, seed=0) -> np.ndarray:
    """A grey head (0.35) on a noisy dark background with a bright disc (1.0), float 0..1."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape)
    img = np.abs(rng.normal(0.0, 0.01, shape))
    head = ((rows - shape[0] / 2) / (shape[0] * 0.42)) ** 2 + ((cols - shape[1] / 2) / (shape[1] * 0.4)) ** 2 <= 1
    img[head] = 0.35
    img[(rows - disc[0]) ** 2 + (cols - disc[1]) ** 2 <= radius**2] = 1.0
    return img.astype(np.float32)


def volume_model(input_size: int = 128):
    """The dev model as a volume model: slices prepared by tumor.prepare_slice, the test split."""
    from dataclasses import replace

    model = signal_model(input_size=input_size)
    model.spec = replace(model.spec, input_kind="volume", validation={"split": dict(TUMOUR_SPLIT)})
    return model


def fake_brain_tumor(root: Path) -> Path:
    """Validation (block 1 of 2): glioma 10, 11; meningioma 12; pituitary 13; no_tumor 30. Training: 0, 1, 20."""
    from PIL import Image as PILImage

    for folder, numbers in {"glioma": [0, 10, 11], "meningioma": [12], "pituitary": [1, 13],
                            "no_tumor": [20, 30]}.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for number in numbers:
            disc = (50 + number % 3, 30 + 2 * (number % 4))
            image = _mri_slice(disc=disc, seed=number) if folder != "no_tumor" else _mri_slice(radius=0, seed=number)
            PILImage.fromarray((image * 255).astype(np.uint8)).save(root / folder / f"{number}.jpg", quality=95)
            if folder != "no_tumor":
                (root / folder / f"{number}.txt").write_text(
                    f"0 {disc[1] / 100:.4f} {disc[0] / 120:.4f} {20 / 100:.4f} {20 / 120:.4f}\n")
    return root


def test_yolo_box_mask_covers_the_pixel_centres_in_the_box():
    from medassist.explain.localisation import yolo_box_mask

    mask = yolo_box_mask((0.5, 0.25, 0.4, 0.5), (8, 10))  # x 3..7, y 0..4 in pixel-edge coordinates
    np.testing.assert_array_equal(np.argwhere(mask.any(1)).ravel(), [0, 1, 2, 3])
    np.testing.assert_array_equal(np.argwhere(mask.any(0)).ravel(), [3, 4, 5, 6])
    assert mask.sum() == 16
    assert not yolo_box_mask((2.0, 2.0, 0.1, 0.1), (8, 10)).any()  # off the slice


def test_mri_slice_maps_go_back_through_the_head_crop():
    from medassist.explain.localisation import prepare_mri_slice
    from medassist.models.spec import PreprocessSpec
    from medassist.models.tumor import prepare_slice

    image = _mri_slice()
    pre = PreprocessSpec(input_size=64)
    tensor, to_source, support = prepare_mri_slice(image, pre)
    expected, frame = prepare_slice(image, pre)
    assert torch.equal(tensor, expected)
    r0, r1, c0, c1 = frame.crop
    assert support.sum() == (r1 - r0) * (c1 - c0) < image.size  # the noisy background is cropped away
    peak = np.unravel_index(int(np.argmax(tensor[0].numpy())), (64, 64))
    one_hot = np.zeros((64, 64), np.float32)
    one_hot[peak] = 1.0
    back = to_source(one_hot)
    assert back.shape == image.shape and not back[~support].any()
    r, c = np.unravel_index(int(np.argmax(back)), back.shape)
    assert image[r, c] == 1.0  # the input's brightest pixel (the disc) maps back onto the disc


def test_evaluate_localisation_on_synthetic_mri_slices():
    """Slices go through prepare_slice and their maps back through the head crop: each row equals
    the metrics of saliency_map -> SliceFrame.to_source computed by hand."""
    from medassist.explain.localisation import yolo_box_mask
    from medassist.explain.saliency import saliency_map
    from medassist.models.tumor import prepare_slice

    model = volume_model()
    cases = []
    for i, disc in enumerate([(45, 30), (70, 68)]):
        image = _mri_slice(disc=disc, seed=i)
        cases.append(LocalisationCase(f"disc{i}", image, yolo_box_mask((disc[1] / 100, disc[0] / 120, 0.3, 0.25),
                                                                      image.shape)))
        cases.append(LocalisationCase(f"corner{i}", image, yolo_box_mask((0.02, 0.02, 0.02, 0.02), image.shape)))
    result = evaluate_localisation(model, cases, ["gradcam"], keep_per_image=True, batch_size=3)["gradcam"]
    assert result["n_images"] == 4
    for case, row in zip(cases, result["per_image"]):
        tensor, frame = prepare_slice(case.image, model.spec.preprocess)
        source = np.maximum(frame.to_source(saliency_map(model, tensor[None])[0], case.image.shape), 0)
        assert row["case_id"] == case.case_id
        assert row["hit"] == pointing_game_hit(source, case.mask)
        assert row["energy_inside"] == pytest.approx(energy_inside(source, case.mask), rel=1e-4, abs=1e-6)
        r0, r1, c0, c1 = frame.crop
        assert row["area_fraction_support"] == pytest.approx(case.mask[r0:r1, c0:c1].mean())
        if case.case_id.startswith("corner"):  # outside the head crop: the map is zero there
            assert not case.mask[r0:r1, c0:c1].any() and row["energy_inside"] == 0.0 and not row["hit"]
    pg, ei = result["pointing_game"], result["energy_inside"]
    # the map only reaches the head crop: a random peak there hits more often than on the whole slice
    assert pg["baseline_random_peak_in_support"] > pg["baseline_random_peak"] > 0
    assert ei["baseline_uniform_map_in_support"] == pg["baseline_random_peak_in_support"]


def test_write_localisation_report_for_the_tumour_model(tmp_path):
    from medassist.explain.localisation import TUMOUR_METHOD_LIMITS, write_localisation_report

    root = fake_brain_tumor(tmp_path / "brain_tumor")
    out = tmp_path / "loc.json"
    model = volume_model(input_size=64)
    report = write_localisation_report(model, root, out, methods=["gradcam", "occlusion"], sanity_images=1,
                                       method_limits={"occlusion": 1})
    assert json.loads(out.read_text()) == report
    data = report["data"]
    assert data["dataset"].startswith("Brain-tumour validation split")
    assert data["split"] == TUMOUR_SPLIT
    assert (data["validation_slices"], data["tumour_slices"], data["tumour_slices_with_box"]) == (5, 4, 4)
    assert data["by_type"] == {"glioma": 2, "meningioma": 1, "pituitary": 1}
    assert data["method_options"] == {"occlusion": {"window": 32, "stride": 32}}
    assert report["methods"]["gradcam"]["n_images"] == 4 and report["methods"]["occlusion"]["n_images"] == 1
    assert report["methods"]["occlusion"]["options"] == {"window": 32, "stride": 32}
    assert report["sanity_randomisation"]["images"] == 1
    assert set(TUMOUR_METHOD_LIMITS) == {"integrated_gradients", "occlusion"}


def test_tumour_cases_come_class_interleaved(tmp_path):
    from medassist.explain.localisation import tumour_validation_cases

    root = fake_brain_tumor(tmp_path / "brain_tumor")
    cases = list(tumour_validation_cases(root, TUMOUR_SPLIT))
    assert [c.case_id for c in cases] == ["glioma/10", "meningioma/12", "pituitary/13", "glioma/11"]
    assert all(c.image.shape == c.mask.shape == (120, 100) and 0 < c.mask.mean() < 0.1 for c in cases)


@pytest.mark.skipif(not (DATA / "brain_tumor" / "glioma").is_dir(), reason="brain tumour data not present")
def test_real_tumour_validation_cases_are_val_tumours_with_box_masks():
    from medassist.explain.localisation import tumour_validation_cases
    from medassist.models.tumor import split_of

    split = {"block_size": 100, "n_folds": 5, "val_fold": 1}
    cases = list(tumour_validation_cases(DATA / "brain_tumor", split, limit=3))
    assert [c.case_id.split("/")[0] for c in cases] == ["glioma", "meningioma", "pituitary"]
    for case in cases:
        assert split_of(int(case.case_id.split("/")[1]), **split) == "val"
        assert case.image.shape == case.mask.shape and 0 < area_fraction(case.mask) < 0.3


def test_tumour_localisation_is_also_reported_by_type(tmp_path):
    from medassist.explain.localisation import evaluate_tumour_localisation

    root = fake_brain_tumor(tmp_path / "brain_tumor")
    result = evaluate_tumour_localisation(volume_model(input_size=64), root, ["gradcam"])["gradcam"]
    groups = result["by_group"]
    assert {g: r["n_images"] for g, r in groups.items()} == {"glioma": 2, "meningioma": 1, "pituitary": 1}
    hits = sum(r["pointing_game"]["hits"] for r in groups.values())
    assert hits == result["pointing_game"]["hits"]


def test_side_fraction_pointing_game_counts_a_peak_near_the_annotation():
    """A peak 20 px off a mask in a 500 px image: a miss strictly, a hit within 5% of the side (25 px)."""
    from medassist.explain.localisation import summarise

    shape = (300, 500)
    peak_map = np.zeros(shape, np.float32)
    peak_map[150, 270] = 1.0
    mask = box_mask(shape, 140, 160, 230, 250)
    near = dilate(mask, 0.05 * max(shape))
    row = {"case_id": "a", "hit": pointing_game_hit(peak_map, mask), "energy_inside": 0.0,
           "area_fraction": float(mask.mean()), "centre_hit": False,
           "hit_side": pointing_game_hit(peak_map, near), "area_fraction_side": float(near.mean()),
           "centre_hit_side": False}
    result = summarise([row])
    assert result["pointing_game"]["hit_rate"] == 0.0
    assert result["pointing_game_side"]["hit_rate"] == 1.0
    assert result["pointing_game_side"]["tolerance_side_fraction"] == 0.05
