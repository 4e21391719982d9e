"""The tumour model's card: its own evaluation set (brain-tumour validation slices through the slice
preprocessing), the type head, contrasts, volume-level reports, and the input-path dispatch of
--images/--dicom. Synthetic data and a throwaway model; the real data only where present."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from audit_helpers import (
    SAMPLES,
    TUMOUR_TYPES,
    fake_brain_tumor,
    make_shipped_model,
    make_tumour_model,
)
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from medassist.audit import run_audit
from medassist.families import family_for
from medassist.families.brain_mr import BrainMRFamily
from medassist.families.radiograph import RadiographFamily
from medassist.audit import evaluation as E
from medassist.audit.card import SECTIONS
from medassist.audit.card_analysis import AuditOptions
from medassist.metrics import categorical_accuracy_with_ci
from medassist.ingest.images import load_jpeg_grayscale
from medassist.models import tumor, tumor_train
from medassist.models.registry import WEIGHTS_DIR, load_model

FAST = AuditOptions(n_resamples=200)


def _recompute_slices(model, root, numbers_by_class):
    """Scores and type probabilities of the validation slices by the inference path
    (``tumor.score_slices``), and the mirror negatives' scores (as training makes them)."""
    recs = {(r.folder, r.number): r for r in tumor.read_records(root)}
    out, mirrors = {}, []
    for folder, numbers in numbers_by_class.items():
        for number in numbers:
            rec = recs[(folder, number)]
            gray = load_jpeg_grayscale(rec.path).astype(np.float32) / 255.0
            presence, types = tumor.score_slices(model.network, model.spec, gray[None])
            out[f"{folder}/{number}"] = (float(presence[0]), types[0])
            if rec.box is not None:
                tensor, frame = tumor.prepare_slice(gray, model.spec.preprocess)
                u8 = np.clip(tensor[0].numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
                neg = tumor_train.mirror_negative(u8, tumor.box_mask(rec.box, gray.shape, frame))
                if neg is not None:
                    with torch.no_grad():
                        _, cells = model.network.forward_all(torch.from_numpy(neg).float()[None, None] / 255.0)
                    mirrors.append(float(torch.sigmoid(cells.amax())))
    return out, mirrors


@pytest.fixture(scope="module")
def tumour_card(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tumour")
    weights_dir = tmp / "weights"
    spec = make_tumour_model(weights_dir)
    root = tmp / "brain_tumor"
    val = fake_brain_tumor(root)
    out = tmp / "cards"
    out.mkdir()
    normal = {"model": spec.name, "version": spec.version, "threshold": spec.threshold, "all_clear": False,
              "volumes": {"brainA": {"original": {"plane": "axial", "spacing_mm": 1.0, "n_slices": 20, "n_in_brain": 15,
                                                  "fraction_slices_flagged": 0.2, "max_slice_score": 0.9,
                                                  "study_score": 0.3, "flagged": False},
                                     "thick": {"plane": "axial", "spacing_mm": 5.0, "n_slices": 4, "n_in_brain": 3,
                                               "fraction_slices_flagged": 0.0, "max_slice_score": 0.4,
                                               "study_score": 0.1, "flagged": False}},
                          "brainB": {"original": {"plane": "axial", "spacing_mm": 1.0, "n_slices": 20,
                                                  "n_in_brain": 15, "fraction_slices_flagged": 0.5,
                                                  "max_slice_score": 0.95, "study_score": 0.7, "flagged": True}}}}
    (out / f"{spec.name}_normal_volumes.json").write_text(json.dumps(normal))
    pg = {"hit_rate": 0.45, "hits": 9, "ci95": [0.25, 0.66], "baseline_random_peak": 0.02,
          "baseline_centre_peak": 0.2, "baseline_random_peak_in_support": 0.03}
    ei = {"mean": 0.25, "ci95": [0.2, 0.3], "baseline_uniform_map": 0.02, "baseline_uniform_map_in_support": 0.03}
    localisation = {
        "model": {"name": spec.name, "sha256": spec.sha256},
        "data": {"dataset": "Brain-tumour validation split, figshare tumour slices with their YOLO boxes",
                 "tumour_slices": 20, "order": "class-interleaved"},
        "methods": {"gradcam": {"n_images": 20, "pointing_game": pg, "energy_inside": ei,
                                "by_group": {"glioma": {"n_images": 10, "pointing_game": pg, "energy_inside": ei}}},
                    "occlusion": {"n_images": 3, "pointing_game": pg, "energy_inside": ei, "limited_to_first": 3,
                                  "options": {"window": 32, "stride": 32}, "seconds_per_image": 2.0}},
        "sanity_randomisation": {"method": "gradcam", "images": 4, "signed": {"n": 16, "mean": 0.1}},
    }
    (out / f"{spec.name}_localisation.json").write_text(json.dumps(localisation))
    paths = run_audit(models=[spec.name], weights_dir=weights_dir, out_dir=out, options=FAST, device="cpu",
                      data_root=root)
    model = load_model(spec, torch.device("cpu"), weights_dir)
    return spec, model, root, val, out, paths


def test_tumour_card_sections(tumour_card):
    spec, _, _, val, out, paths = tumour_card
    assert {p.name for p in paths} >= {f"{spec.name}.json", f"{spec.name}.md", f"{spec.name}.html",
                                       f"{spec.name}_roc.png", f"{spec.name}_subgroups.png"}
    card = json.loads((out / f"{spec.name}.json").read_text())
    for key, _ in SECTIONS:
        assert key in card, key
    data = card["evaluation_data"]
    assert data["name"] == "brain-tumour validation split (slices)"
    assert data["unit"] == "slice" and data["used_for_tuning"] is True
    n_tumour = sum(len(val[t]) for t in TUMOUR_TYPES)
    assert data["n_positive"] == n_tumour
    assert data["factors"]["source"]["Br35H"] == len(val["no_tumor"])
    assert data["factors"]["class"]["mirror_negative"] == data["n"] - n_tumour - len(val["no_tumor"]) > 0
    assert set(card["factors"]["evaluated"]) == {"class", "source"}
    assert "per slice" in card["model_details"]["architecture"]["output"]
    ev = card["quantitative_analyses"]["evaluation"]
    assert ev["unit"] == "slice" and ev["label_factors"] == ["class"]
    assert [c["name"] for c in ev["contrasts"]] == [E.CONTRAST_OTHER_SOURCE, E.CONTRAST_SAME_SOURCE]
    # the class refines the label: no "shortcut" or "too small" noise from it
    assert all(r["factor"] != "class" for r in ev["label_shortcut_risks"])
    assert not any("class =" in c and "too small" in c for c in card["caveats_and_recommendations"])
    assert any("slice-level" in c for c in card["caveats_and_recommendations"])

    md = (out / f"{spec.name}.md").read_text()
    html = (out / f"{spec.name}.html").read_text()
    for title in ["At a glance", "Positives against each kind of negative", "Type (secondary output)", "Volume level",
                  "Normal volumes from other sources", "Pseudo-volumes from the slice scores above",
                  "Pseudo-volumes at training time (recorded by the training run)", "Subgroups", "By source"]:
        assert re.search(rf"^#+ {re.escape(title)}$", md, re.M), title
        assert f">{title}</h" in html, title
    assert "**Slice level**: AUROC" in md and "Unit of analysis: one **slice**" in md
    assert "1 of 3 normal volumes (and variants) from other sources flagged" in md
    assert "Pseudo-volumes (a run of up to 8 tumour slices with N normal validation slices around it)" in md
    assert "| brainB | original | axial | 1.0 | 15 / 20 | 50.0% | 0.950 | 0.700 | yes |" in md
    assert "| gradcam | 20 | 0.450 [0.250, 0.660] | 0.020 | 0.030 | 0.200 | 0.250 [0.200, 0.300] | 0.020 | 0.030 |" in md
    assert "| gradcam | glioma | 10 | 0.450 [0.250, 0.660] | 0.200 | 0.030 | 0.250 [0.200, 0.300] |" in md
    assert 'occlusion: the first 3 of the images, options {"window": 32, "stride": 32} (2.0 s per image)' in md
    assert "Image order: class-interleaved." in md and "Model-randomisation sanity check (gradcam, 4 images)" in md
    assert "NaN" not in (out / f"{spec.name}.json").read_text()


def test_tumour_card_numbers_match_a_recomputation(tumour_card):
    spec, model, root, val, out, _ = tumour_card
    card = json.loads((out / f"{spec.name}.json").read_text())
    ev = card["quantitative_analyses"]["evaluation"]
    slices, mirrors = _recompute_slices(model, root, val)
    real_labels = np.array([int(k.split("/")[0] != "no_tumor") for k in slices])
    real_scores = np.array([s for s, _ in slices.values()])
    labels = np.concatenate([real_labels, np.zeros(len(mirrors), int)])
    scores = np.concatenate([real_scores, mirrors])
    assert card["evaluation_data"]["n"] == len(labels)
    o = ev["overall"]
    assert o["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    pred = scores >= spec.threshold
    assert (o["tp"], o["fp"]) == (int((pred & (labels == 1)).sum()), int((pred & (labels == 0)).sum()))
    contrasts = {c["name"]: c for c in ev["contrasts"]}
    assert contrasts[E.CONTRAST_OTHER_SOURCE]["n"] == len(real_labels)
    assert contrasts[E.CONTRAST_OTHER_SOURCE]["auroc"] == pytest.approx(roc_auc_score(real_labels, real_scores),
                                                                         abs=1e-6)
    same = np.concatenate([real_scores[real_labels == 1], mirrors])
    same_labels = np.concatenate([np.ones(int(real_labels.sum()), int), np.zeros(len(mirrors), int)])
    assert contrasts[E.CONTRAST_SAME_SOURCE]["auroc"] == pytest.approx(roc_auc_score(same_labels, same), abs=1e-6)
    by_source = {r["level"]: r for r in ev["subgroups"]["source"]}
    assert by_source["figshare"]["n"] == len(same) and by_source["Br35H"]["n_positive"] == 0
    assert by_source["Br35H"]["specificity"] == pytest.approx(
        np.mean(real_scores[real_labels == 0] < spec.threshold))

    typed = [(TUMOUR_TYPES.index(k.split("/")[0]), t.argmax()) for k, (_, t) in slices.items()
             if k.split("/")[0] in TUMOUR_TYPES]
    true, predicted = np.array(typed).T
    t = ev["type_head"]["all_typed"]
    assert t["n"] == len(true) and t["accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert t["confusion_rows_true"] == confusion_matrix(true, predicted, labels=[0, 1, 2]).tolist()
    assert t["ci"][0] <= t["accuracy"] <= t["ci"][1]
    assert ev["pseudo_volumes"]["negatives"] and ev["pseudo_volumes"]["threshold"] == spec.threshold


def test_normal_volume_report_for_another_version_is_marked(tmp_path):
    weights_dir = tmp_path / "weights"
    spec = make_tumour_model(weights_dir)
    out = tmp_path / "cards"
    out.mkdir()
    (out / f"{spec.name}_normal_volumes.json").write_text(json.dumps(
        {"model": spec.name, "version": "0.0.9", "threshold": 0.3, "volumes": {}, "all_clear": True}))
    run_audit(models=[spec.name], weights_dir=weights_dir, out_dir=out, options=FAST, default_eval="none")
    card = json.loads((out / f"{spec.name}.json").read_text())
    nv = card["quantitative_analyses"]["volume_level"]["normal_volumes"]
    assert "regenerate it" in nv["mismatch"]
    md = (out / f"{spec.name}.md").read_text()
    assert "No labelled evaluation set" in md and "> **Warning:** This report was made for version 0.0.9" in md


def test_missing_tumour_data_is_said_in_the_card(tmp_path, monkeypatch):
    weights_dir = tmp_path / "weights"
    spec = make_tumour_model(weights_dir)
    monkeypatch.setattr(E, "find_brain_tumor", lambda spec=None: None)
    monkeypatch.setattr("medassist.audit.run.find_brain_tumor", lambda spec=None: None)
    run_audit(models=[spec.name], weights_dir=weights_dir, out_dir=tmp_path / "cards", options=FAST)
    card = json.loads((tmp_path / "cards" / f"{spec.name}.json").read_text())
    assert card["evaluation_data"]["available"] is False
    assert "brain-tumour data (default for this model) was not found" in card["evaluation_data"]["reason"]
    assert any("normal-volume report" in c for c in card["caveats_and_recommendations"])


def test_default_set_follows_the_model(tmp_path):
    weights_dir = tmp_path / "weights"
    fracture = make_shipped_model(weights_dir, name="toy_fracture", training_data="synthetic")
    tumour = make_tumour_model(weights_dir)
    assert not E.is_brain_tumor_model(fracture) and E.is_brain_tumor_model(tumour)
    assert isinstance(family_for(tumour), BrainMRFamily) and isinstance(family_for(fracture), RadiographFamily)
    assert E.brain_tumor_split(tumour) == {"block_size": 10, "n_folds": 2, "val_fold": 1}  # recorded split wins


def test_limit_takes_every_class(tmp_path):
    weights_dir = tmp_path / "weights"
    spec = make_tumour_model(weights_dir)
    root = tmp_path / "brain_tumor"
    fake_brain_tumor(root)
    loaded = load_model(spec, torch.device("cpu"), weights_dir)
    ev = E.eval_from_brain_tumor(spec, lambda: loaded, root, limit=4, mirror_negatives=False)
    assert sorted(ev.factors["class"]) == ["glioma", "meningioma", "no_tumor", "pituitary"]
    assert any("Limited to 4 of 14" in n for n in ev.notes)
    assert not ev.contrasts.get(E.CONTRAST_SAME_SOURCE)


def test_images_of_a_volume_model_go_through_the_slice_preprocessing(tmp_path):
    weights_dir = tmp_path / "weights"
    spec = make_tumour_model(weights_dir)
    root = tmp_path / "brain_tumor"
    val = fake_brain_tumor(root)
    rows = [(f"{folder}/{n}.jpg", int(folder != "no_tumor"), folder) for folder, ns in val.items() for n in ns]
    labels_csv = tmp_path / "labels.csv"
    with open(labels_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "class"])
        writer.writerows(rows)
    out = tmp_path / "cards"
    run_audit(models=[spec.name], eval_images=root, eval_labels=labels_csv, weights_dir=weights_dir, out_dir=out,
              options=FAST, device="cpu")
    card = json.loads((out / f"{spec.name}.json").read_text())
    assert card["evaluation_data"]["unit"] == "slice"
    assert any("scored as one slice" in n for n in card["evaluation_data"]["notes"])
    model = load_model(spec, torch.device("cpu"), weights_dir)
    expected = [float(tumor.score_slices(model.network, spec, load_jpeg_grayscale(root / name)[None] / 255.0)[0][0])
                for name, _, _ in rows]  # one at a time: the Br35H-like slices have another size
    labels = [label for _, label, _ in rows]
    overall = card["quantitative_analyses"]["evaluation"]["overall"]
    assert overall["n"] == len(rows)
    assert overall["auroc"] == pytest.approx(roc_auc_score(labels, expected), abs=1e-6)
    ev = E.eval_from_images(spec, lambda: model, root, labels_csv)
    assert ev.scores == pytest.approx(expected, abs=1e-5)


def test_dicom_series_of_a_volume_model_are_scored_as_triage_scores_them(tmp_path):
    from medassist.ingest.discover import discover_series
    from medassist.models.registry import applies_to

    weights_dir = tmp_path / "weights"
    spec = make_tumour_model(weights_dir, input_size=64)
    series, _ = discover_series([SAMPLES / "export"])
    mr = [s for s in series if applies_to(spec, s)]
    if not mr:
        pytest.skip("no brain MR series in samples/export")
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("series_uid,label\n" + "".join(f"{s.series_uid},1\n" for s in mr))
    model = load_model(spec, torch.device("cpu"), weights_dir)
    ev = E.eval_from_dicom(spec, lambda: model, SAMPLES / "export", labels_csv)
    assert len(ev.scores) == len(mr)
    for uid, score in zip(ev.ids, ev.scores):
        s = next(x for x in mr if x.series_uid == uid)
        assert score == pytest.approx(tumor.score_volume(model.network, spec, s.load()).score, abs=1e-6)


def test_categorical_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, 200)
    predicted = np.where(rng.random(200) < 0.7, true, rng.integers(0, 3, 200))
    r = categorical_accuracy_with_ci(true, predicted, ("a", "b", "c"), n_resamples=300)
    assert r["accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert r["confusion_rows_true"] == confusion_matrix(true, predicted).tolist()
    assert r["ci"][0] < r["accuracy"] < r["ci"][1] and r["ci"][1] - r["ci"][0] < 0.2
    assert [c["n"] for c in r["per_class"]] == np.bincount(true, minlength=3).tolist()
    assert categorical_accuracy_with_ci([1, 1], [1, 1], ("a", "b"))["ci"] == [1.0, 1.0]
    empty = categorical_accuracy_with_ci([], [], ("a", "b"))
    assert empty["n"] == 0 and empty["accuracy"] is None


tumour_data = E.find_brain_tumor()
tumour_shipped = (WEIGHTS_DIR / "tumor_mri.json").is_file() and (WEIGHTS_DIR / "tumor_mri.pt").is_file()


@pytest.mark.skipif(tumour_data is None or not tumour_shipped, reason="brain-tumour data or tumor_mri weights absent")
def test_shipped_tumour_model_on_a_few_real_validation_slices(tmp_path):
    out = tmp_path / "cards"
    run_audit(models=["tumor_mri"], out_dir=out, options=FAST, device="cpu", eval_limit=8)
    card = json.loads((out / "tumor_mri.json").read_text())
    data = card["evaluation_data"]
    assert data["unit"] == "slice" and data["factors"]["source"]["Br35H"] == 2
    assert sum(v for k, v in data["factors"]["class"].items() if k in TUMOUR_TYPES) == 6
    assert card["quantitative_analyses"]["evaluation"]["type_head"]["all_typed"]["n"] == 6
    assert card["quantitative_analyses"]["volume_level"]["normal_volumes"]["all_clear"] is True


def test_cli_rebuilds_one_card_from_a_given_data_root(tmp_path, capsys):
    from medassist.cli import main

    weights_dir = tmp_path / "weights"
    make_shipped_model(weights_dir, name="toy_fracture", training_data="synthetic")
    spec = make_tumour_model(weights_dir)
    root = tmp_path / "brain_tumor"
    fake_brain_tumor(root)
    out = tmp_path / "cards"
    status = main(["audit", "--model", spec.name, "--models-dir", str(weights_dir), "--data-root", str(root),
                   "--limit", "6", "--out", str(out), "--device", "cpu"])
    assert status == 0
    assert sorted(p.name for p in out.glob("*.json")) == [f"{spec.name}.json"]  # the other model's card untouched
    card = json.loads((out / f"{spec.name}.json").read_text())
    assert any("Limited to 6 of 14" in n for n in card["evaluation_data"]["notes"])
    assert f"{spec.name}.md" in capsys.readouterr().out


def _volume_validation(spec) -> dict:
    """A volume-level validation report as ``tumor_volumes.VolumeValidation`` writes it: BraTS
    flagged and localised, LGG below its target, IXI clear."""
    from medassist.models.tumor_volumes import SourceReport, VolumeScore, VolumeValidation

    def score(source, variant, name, flagged, slices=(), tumour=None):
        return VolumeScore(source, variant, name, 0.9 if flagged else 0.1, spec.threshold, flagged, tuple(slices),
                           "canonical", "axial", 1.0, 100, 80, len(slices), 0.95, tumour)

    reports = (
        SourceReport("brats", "as_given", (score("brats", "as_given", "case1", True, (50, 51), tuple(range(40, 60))),)),
        SourceReport("lgg", "stack", (score("lgg", "stack", "p1", True, (10,), (9, 10, 11)),
                                      score("lgg", "stack", "p2", False, (), (5, 6)))),
        SourceReport("ixi", "as_given", (score("ixi", "as_given", "IXI001", False),)),
    )
    return VolumeValidation(spec.name, spec.version, spec.threshold, reports, {"lgg_slice_spacing": "assumed"}).to_dict()


def test_volume_level_validation_is_shown_per_source_with_its_targets(tmp_path):
    weights_dir = tmp_path / "weights"
    spec = make_tumour_model(weights_dir)
    out = tmp_path / "cards"
    out.mkdir()
    (out / f"{spec.name}_volumes.json").write_text(json.dumps(_volume_validation(spec)))
    run_audit(models=[spec.name], weights_dir=weights_dir, out_dir=out, options=FAST, default_eval="none")
    card = json.loads((out / f"{spec.name}.json").read_text())
    labelled = card["quantitative_analyses"]["volume_level"]["labelled_volumes"]
    assert labelled["sources"]["brats/as_given"]["target_met"] is True
    assert labelled["sources"]["lgg/stack"]["n_flagged"] == 1 and not labelled["sources"]["lgg/stack"]["target_met"]
    assert any(c.startswith("Experimental: volume-level targets not met on lgg/stack")
               for c in card["caveats_and_recommendations"])
    md = (out / f"{spec.name}.md").read_text()
    assert "brats/as_given 1 of 1 flagged (1 with every reported slice in the tumour) (target met)" in md
    assert "lgg/stack 1 of 2 flagged" in md and "(target NOT met)" in md
    assert "#### Labelled volumes by source" in md and "| lgg/stack | p2 |" in md
    external = card["external_validation"]["volumes"]  # only the source no training data came from
    assert [row[0] for row in external] == ["brats/as_given"] and external[0][1:3] == [1, 1]
    assert "## External validation" in md and "| brats/as_given | 1 | 1 |" in md


def test_a_volume_model_without_volume_validation_says_so(tmp_path):
    weights_dir = tmp_path / "weights"
    spec = make_tumour_model(weights_dir)
    run_audit(models=[spec.name], weights_dir=weights_dir, out_dir=tmp_path / "cards", options=FAST,
              default_eval="none")
    card = json.loads((tmp_path / "cards" / f"{spec.name}.json").read_text())
    assert card["quantitative_analyses"]["volume_level"]["labelled_volumes"] is None
    assert any("No volume-level validation report" in c for c in card["caveats_and_recommendations"])
