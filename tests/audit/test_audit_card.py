"""run_audit end to end: the card's sections, and its numbers against an sklearn recomputation."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from audit_helpers import SAMPLES, decision, make_review_db, make_shipped_model, synthetic_scored_set, write_scores_csv
from PIL import Image as PILImage
from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score, roc_curve

from medassist.audit import run_audit, verify_review_log
from medassist.audit.card import SECTIONS
from medassist.audit.card_analysis import AuditOptions
from medassist.audit.evaluation import find_fracatlas
from medassist.errors import MedassistError

FAST = AuditOptions(n_resamples=200)
HEADINGS = [title for _, title in SECTIONS]


def _recompute(labels, scores, threshold):
    pred = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    return {"auroc": roc_auc_score(labels, scores), "sensitivity": recall_score(labels, pred),
            "specificity": tn / (tn + fp), "ppv": precision_score(labels, pred), "npv": tn / (tn + fn),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


@pytest.fixture(scope="module")
def scored_card(tmp_path_factory):
    """One card from a synthetic scored set, shared by the tests that read it."""
    tmp_path = tmp_path_factory.mktemp("scored")
    weights_dir = tmp_path / "weights"
    spec = make_shipped_model(weights_dir)
    data = synthetic_scored_set(400)
    scores_csv = write_scores_csv(tmp_path / "scores.csv", data)
    out = tmp_path / "cards"
    paths = run_audit(models=[spec.name], eval_scores=scores_csv, weights_dir=weights_dir, out_dir=out, options=FAST)
    return spec, data, out, paths


def test_card_files_and_sections(scored_card):
    spec, _, out, paths = scored_card
    names = {p.name for p in paths}
    assert {f"{spec.name}.json", f"{spec.name}.md", f"{spec.name}.html", f"{spec.name}_roc.png",
            f"{spec.name}_reliability.png", f"{spec.name}_subgroups.png"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    card = json.loads((out / f"{spec.name}.json").read_text())  # strict JSON: no NaN
    for key, _ in SECTIONS:
        assert key in card, key
    details = card["model_details"]
    assert details["weights_sha256"] == spec.sha256 and details["version"] == spec.version
    assert details["architecture"]["network"] == "localising_resnet"
    assert details["training_command"] == spec.training_command
    assert "verified" in details["weights_check"]
    assert card["intended_use"]["out_of_scope"] and card["ethical_considerations"]
    assert card["factors"]["evaluated"] == ["body_region", "view"]
    assert card["training_data"]["validation_at_training_time"]["auroc"] == 0.8

    md = (out / f"{spec.name}.md").read_text()
    html = (out / f"{spec.name}.html").read_text()
    for title in HEADINGS + ["Calibration", "Operating points", "Subgroups", "Human-AI review in deployment",
                             "Saliency localisation"]:
        assert re.search(rf"^#+ {re.escape(title)}$", md, re.M), title
        assert f">{title}</h" in html, title
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (out / link).is_file()
    assert html.count('src="data:image/png;base64,') == 3
    assert "NaN" not in (out / f"{spec.name}.json").read_text()


def test_card_numbers_match_a_recomputation(scored_card):
    spec, data, out, _ = scored_card
    labels, scores = data["labels"], data["scores"]
    card = json.loads((out / f"{spec.name}.json").read_text())
    ev = card["quantitative_analyses"]["evaluation"]
    overall = ev["overall"]
    expected = _recompute(labels, scores, spec.threshold)
    assert overall["threshold"] == spec.threshold
    for key, value in expected.items():
        assert overall[key] == pytest.approx(value, abs=1e-9), key
    for key in ("auroc", "sensitivity", "specificity", "ppv", "npv"):
        low, high = overall["ci"][key]
        assert low <= overall[key] <= high, key
    assert card["evaluation_data"]["n"] == len(labels)
    assert card["evaluation_data"]["n_positive"] == int(labels.sum())

    fpr, tpr, _ = roc_curve(labels, scores)
    assert ev["roc"]["fpr"] == pytest.approx(fpr) and ev["roc"]["tpr"] == pytest.approx(tpr)

    edges = np.linspace(0, 1, 11)
    bins = np.clip(np.digitize(scores, edges[1:-1], right=True), 0, 9)
    ece = sum((bins == b).mean() * abs(labels[bins == b].mean() - scores[bins == b].mean())
              for b in range(10) if (bins == b).any())
    assert ev["calibration"]["ece"] == pytest.approx(ece, abs=1e-9)

    for point in ev["operating_points"]:
        again = _recompute(labels, scores, point["threshold"])
        assert again["sensitivity"] >= point["target_sensitivity"]
        assert point["specificity"] == pytest.approx(again["specificity"])

    for factor, column in (("body_region", "region"), ("view", "view")):
        for row in ev["subgroups"][factor]:
            mask = data[column] == row["level"]
            assert row["n"] == int(mask.sum())
            sub = _recompute(labels[mask], scores[mask], spec.threshold)
            assert row["sensitivity"] == pytest.approx(sub["sensitivity"], abs=1e-9)
            assert row["specificity"] == pytest.approx(sub["specificity"], abs=1e-9)


def test_card_shows_subgroup_warnings(scored_card):
    spec, _, out, _ = scored_card
    card = json.loads((out / f"{spec.name}.json").read_text())
    warnings = card["quantitative_analyses"]["evaluation"]["subgroup_warnings"]
    assert {"factor": "body_region", "level": "hip", "kind": "low_sensitivity"}.items() <= next(
        w for w in warnings if w["level"] == "hip").items()
    assert any(w["level"] == "oblique" and w["kind"] == "too_few_positives" for w in warnings)
    md = (out / f"{spec.name}.md").read_text()
    assert "> **Warning:** body_region = hip" in md
    assert any("hip" in c for c in card["caveats_and_recommendations"])


def test_review_db_and_localisation_in_the_card(tmp_path, shipped):
    weights_dir, spec = shipped
    out = tmp_path / "cards"
    out.mkdir()
    rows = [decision("a", 1, "accept"), decision("b", 1, "reject"), decision("c", 0, "accept"),
            decision("d", 0, "correct", corrected="fracture", location='{"col":1,"row":2,"slice":0}')]
    db = make_review_db(tmp_path / "decisions.sqlite", rows)
    report = {"model": {"name": spec.name, "sha256": spec.sha256},
              "data": {"dataset": "FracAtlas validation fractures", "n_images": 40},
              "metrics": {"pointing_game": "share of images whose saliency maximum lies inside the annotation"},
              "methods": {"gradcam": {"n_images": 40, "pointing_game": {"hit_rate": 0.55, "ci95": [0.4, 0.7],
                                                                         "baseline_random_peak": 0.05},
                                      "energy_inside": {"mean": 0.2, "ci95": [0.15, 0.25], "baseline_uniform_map": float("nan")}}}}
    (out / f"{spec.name}_localisation.json").write_text(json.dumps(report))
    run_audit(models=[spec.name], review_db=db, weights_dir=weights_dir, out_dir=out, options=FAST)
    card = json.loads((out / f"{spec.name}.json").read_text())
    q = card["quantitative_analyses"]
    v = q["human_ai_review"]["by_version"][spec.version]
    assert v["n_decided"] == 4 and v["accept_rate"] == 0.5 and v["reject_rate"] == 0.25
    assert v["cohen_kappa"] == pytest.approx(0.0)  # model [1,1,0,0] vs final [1,0,0,1]
    assert len(q["human_ai_review"]["overrides"]) == 2
    assert q["review_log_integrity"] == [] == verify_review_log(db)
    assert q["saliency_localisation"]["methods"]["gradcam"]["pointing_game"]["hit_rate"] == 0.55
    md = (out / f"{spec.name}.md").read_text()
    assert "| gradcam | 40 | 0.550 [0.400, 0.700]" in md
    assert "Overrides (2)" in md and "verified intact" in md
    # no evaluation set for a non-FracAtlas model: the card says so and still has every section
    assert card["evaluation_data"]["available"] is False
    assert q["evaluation"] is None
    assert "No labelled evaluation set" in md


def _write_png(path, value, rng):
    img = np.clip(rng.normal(value, 30, size=(40, 56)), 0, 255).astype(np.uint8)
    PILImage.fromarray(img).save(path)


def test_image_folder_is_scored_through_the_inference_path(tmp_path, shipped):
    from medassist.ingest.images import load_jpeg_grayscale
    from medassist.models.registry import load_model
    from medassist.preprocess.transforms import prepare_2d

    weights_dir, spec = shipped
    rng = np.random.default_rng(0)
    images = tmp_path / "imgs"
    (images / "sub").mkdir(parents=True)
    rows = []
    for i in range(12):
        name = f"im{i:02d}.png"
        _write_png(images / "sub" / name if i % 2 else images / name, 60 + 10 * i, rng)
        rows.append({"image": name, "label": i % 3 == 0, "sex": "F" if i % 2 else "M", "age": 20 + 5 * i,
                     "hardware": i % 4 == 0})
    labels_csv = tmp_path / "labels.csv"
    with open(labels_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image", "label", "sex", "age", "hardware"])
        writer.writeheader()
        writer.writerows({**r, "label": int(r["label"]), "hardware": int(r["hardware"])} for r in rows)
    out = tmp_path / "cards"
    run_audit(models=[spec.name], eval_images=images, eval_labels=labels_csv, weights_dir=weights_dir,
              out_dir=out, options=FAST, device="cpu")
    card = json.loads((out / f"{spec.name}.json").read_text())
    assert card["evaluation_data"]["n"] == 12
    assert set(card["evaluation_data"]["factors"]) == {"sex", "age_band", "hardware"}
    assert card["evaluation_data"]["factors"]["hardware"] == {"absent": 9, "present": 3}

    model = load_model(spec, torch.device("cpu"), weights_dir)
    paths = sorted(images.rglob("*.png"), key=lambda p: p.name)
    batch = torch.stack([prepare_2d(load_jpeg_grayscale(p) / 255.0, spec.preprocess)[0] for p in paths])
    scores = model.scores(batch).numpy()
    labels = np.array([int(r["label"]) for r in rows])
    overall = card["quantitative_analyses"]["evaluation"]["overall"]
    assert overall["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)


def test_dicom_folder_factors_come_from_the_headers(tmp_path, shipped):
    weights_dir, spec = shipped
    out = tmp_path / "cards"
    run_audit(models=[spec.name], eval_dicom=SAMPLES / "export", eval_labels=SAMPLES / "export_labels.csv",
              weights_dir=weights_dir, out_dir=out, options=FAST, device="cpu")
    card = json.loads((out / f"{spec.name}.json").read_text())
    data = card["evaluation_data"]
    assert data["n"] == 8 and data["n_positive"] == 4
    assert {"sex", "age_band", "manufacturer", "body_region", "view", "hardware"} <= set(data["factors"])
    assert data["factors"]["sex"] == {"female": 4, "male": 4}
    assert sum(data["factors"]["age_band"].values()) == 8
    assert set(card["quantitative_analyses"]["evaluation"]["subgroups"]) >= {"sex", "age_band", "manufacturer"}


@pytest.mark.skipif(find_fracatlas() is None, reason="FracAtlas data not available")
def test_default_evaluation_is_the_fracatlas_validation_split(tmp_path):
    weights_dir = tmp_path / "weights"
    spec = make_shipped_model(weights_dir, name="toy_fracatlas", training_data="FracAtlas (test)")
    out = tmp_path / "cards"
    run_audit(models=None, weights_dir=weights_dir, out_dir=out, options=FAST, device="cpu", eval_limit=8)
    card = json.loads((out / f"{spec.name}.json").read_text())
    data = card["evaluation_data"]
    assert data["name"] == "FracAtlas validation split" and data["used_for_tuning"] is True
    assert data["n"] == 8 and set(data["factors"]) == {"body_region", "view", "hardware"}
    md = (out / f"{spec.name}.md").read_text()
    assert "validation split used for tuning the threshold" in md
    assert "independent hold-out set was not available" in md


def test_argument_errors(tmp_path, shipped):
    weights_dir, spec = shipped
    with pytest.raises(MedassistError, match="--labels goes with"):
        run_audit(eval_labels=tmp_path / "l.csv", weights_dir=weights_dir, out_dir=tmp_path)
    with pytest.raises(MedassistError, match="needs --labels"):
        run_audit(eval_images=tmp_path, weights_dir=weights_dir, out_dir=tmp_path)
    with pytest.raises(MedassistError, match="not --images and --dicom"):
        run_audit(eval_images=tmp_path, eval_dicom=tmp_path, eval_labels=tmp_path / "l.csv",
                  weights_dir=weights_dir, out_dir=tmp_path)
    with pytest.raises(MedassistError, match="unknown model 'nope'"):
        run_audit(models=["nope"], weights_dir=weights_dir, out_dir=tmp_path)
    make_shipped_model(weights_dir, name="second")
    with pytest.raises(MedassistError, match="choose one with --model"):
        run_audit(eval_scores=tmp_path / "s.csv", weights_dir=weights_dir, out_dir=tmp_path)
    with pytest.raises(MedassistError, match="review database not found"):
        run_audit(models=[spec.name], review_db=tmp_path / "none.sqlite", weights_dir=weights_dir, out_dir=tmp_path)


def test_label_shortcut_risks_flag_a_factor_that_determines_the_label():
    from medassist.audit.card_analysis import label_shortcut_risks
    from medassist.audit.evaluation import EvalSet

    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.25).astype(int)
    hardware = np.where(rng.random(300) < 0.5, "absent", "absent").astype(object)
    hardware[:30] = "present"
    labels[:30] = 1  # every image with hardware is positive, as in FracAtlas
    region = np.array(["hand"] * 297 + ["tiny"] * 3, dtype=object)
    labels[-3:] = 0  # three negatives: too few to call a shortcut
    ev = EvalSet(name="t", description="", ids=[str(i) for i in range(300)], labels=labels,
                 scores=rng.random(300), factors={"hardware": list(hardware), "region": list(region)})
    risks = label_shortcut_risks(ev)
    assert [(r["factor"], r["level"]) for r in risks] == [("hardware", "present")]


def test_unreadable_images_are_left_out_with_their_labels(tmp_path, shipped):
    weights_dir, spec = shipped
    rng = np.random.default_rng(1)
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(6):
        _write_png(images / f"im{i}.png", 80 + 20 * i, rng)
    (images / "im6.png").write_bytes(b"not a png")
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("image,label\n" + "".join(f"im{i}.png,{i % 2}\n" for i in range(7)))
    out = tmp_path / "cards"
    run_audit(models=[spec.name], eval_images=images, eval_labels=labels_csv, weights_dir=weights_dir,
              out_dir=out, options=FAST, device="cpu")
    data = json.loads((out / f"{spec.name}.json").read_text())["evaluation_data"]
    assert (data["n"], data["n_positive"]) == (6, 3)
    assert any("could not be read" in n for n in data["notes"])


def test_external_validation_section_shows_the_other_source_figures(tmp_path):
    import dataclasses

    from medassist.audit.card import build_card
    from medassist.audit.card_render import render_markdown
    from medassist.metrics import metrics_with_ci

    spec = make_shipped_model(tmp_path / "weights")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    scores = np.clip(labels * 0.3 + rng.random(120) * 0.7, 0, 1)
    overall = metrics_with_ci(labels, scores, 0.5, n_resamples=50)
    validation = dict(spec.validation, external_dev={"overall": overall, "elbow": overall},
                      head_choice={"image": {"validation_auroc": 0.81, "external_dev_auroc": 0.7}})
    card = build_card(dataclasses.replace(spec, validation=validation),
                      narrative={"external_validation": {"notes": ["fails on elbows"]}})
    assert card["external_validation"]["sets"]["external_dev"]["overall"]["auroc"] == pytest.approx(overall["auroc"])
    text = render_markdown(card)
    section = text[text.index("## External validation"):]
    assert f"{overall['auroc']:.3f}" in section and "external_dev: elbow" in section and "fails on elbows" in section
    assert "External validation" not in render_markdown(build_card(spec))  # no other-source figures, no section


def test_external_figures_measured_after_training_fill_the_section(tmp_path):
    from medassist.audit.card import build_card
    from medassist.audit.card_render import render_markdown
    from medassist.metrics import metrics_with_ci

    spec = make_shipped_model(tmp_path / "weights")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 80)
    scores = rng.random(80)
    overall = metrics_with_ci(labels, scores, 0.5, n_resamples=50)
    report = {"regions": {"overall": overall, "wrist": overall}, "mismatch": "made for version 0.9: regenerate it."}
    card = build_card(spec, external_report=report)
    assert card["external_validation"]["sets"]["external_dev"]["wrist"]["auroc"] == pytest.approx(overall["auroc"])
    section = render_markdown(card)
    section = section[section.index("## External validation"):]
    assert "after training, on the shipped weights" in section and "external_dev: wrist" in section
    assert "regenerate it" in section
    stored = dict(spec.validation, external_dev={"overall": overall})  # the training run's own figures win
    import dataclasses
    card = build_card(dataclasses.replace(spec, validation=stored), external_report=report)
    assert "wrist" not in card["external_validation"]["sets"]["external_dev"]
