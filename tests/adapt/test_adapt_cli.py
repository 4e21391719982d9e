"""medassist adapt end to end: accepted (signed, loadable), refused (exit 3), unusable input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from medassist.adapt import run_adapt
from medassist.cli import main
from medassist.models.registry import WEIGHTS_DIR, load_model, shipped_specs


def _nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".adapt-" in p.name]  # no temporary folder left


def test_accepted_site_lowers_the_threshold_and_writes_a_signed_loadable_models_dir(site, tmp_path, capsys):
    db = site.write_history(tmp_path / "run1", site.site_cases(300, seed=1))
    # decisions that must be left out: another version of the model, and another model
    other = site.write_history(tmp_path / "run0", site.site_cases(12, seed=2), prefix="old", version="1.0.0")
    tumour = site.write_history(tmp_path / "run2", site.site_cases(5, seed=3), prefix="mr", model="tumor_mri")
    out = tmp_path / "site-models"
    status = main(["adapt", "--model", "fracture_xray", "--review-db", str(db), "--review-db", str(other),
                   "--review-db", str(tumour.parent), "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "left out 17 decision(s)" in captured.err and "12 another version of fracture_xray (1.0.0)" in captured.err
    assert "5 another model" in captured.err
    assert "1.1.1 -> 1.1.1+site.1" in captured.out

    [spec] = shipped_specs(out)  # the registry reads it: signature verified under the site key
    released = site.RELEASED
    assert spec.version == "1.1.1+site.1"
    assert 0.2 < spec.threshold < released.threshold - 0.05  # the released threshold was too high here
    assert spec.sha256 == released.sha256 and spec.weights == released.weights
    assert (out / spec.weights).read_bytes() == (WEIGHTS_DIR / released.weights).read_bytes()
    assert load_model(spec, torch.device("cpu"), out).spec.version == spec.version  # weights' sha256 checked

    record = spec.validation["adaptation"]
    assert record["from_version"] == "1.1.1" and len(record["protocol"]["sha256"]) == 64
    assert record["changed"]["threshold"] == {"from": released.threshold, "to": spec.threshold}
    assert record["counts"]["all"]["n"] == 300 and record["counts"]["n_dropped"] == 17
    acc = record["acceptance"]
    assert acc["accepted"] is True
    rel, ada = acc["locked_set_released"], acc["locked_set_adapted"]
    assert rel["threshold"] == released.threshold and ada["threshold"] == spec.threshold
    assert ada["sensitivity"] > rel["sensitivity"]
    assert ada["sensitivity_ci"][0] >= rel["sensitivity_ci"][0]
    assert rel["n"] == record["counts"]["locked"]["n"] < 0.4 * 300
    assert "confidence" not in spec.validation  # the released validation set's table does not describe this site
    assert spec.validation["validation"] == released.validation["validation"]

    diff = json.loads((out / "adaptation" / "adaptation_diff.json").read_text())
    changed = {c["field"]: c for c in diff["changes"]}
    assert set(changed) == {"version", "threshold", "validation.adaptation", "validation.confidence"}
    assert changed["threshold"]["to"] == spec.threshold and "sha256" in diff["unchanged"]
    card = (out / "adaptation" / "adaptation.md").read_text()
    assert "**Accepted**" in card and f"{spec.threshold:.4f}" in card and "1.0.0" in card

    assert main(["models", "--models-dir", str(out)]) == 0
    assert "1.1.1+site.1" in capsys.readouterr().out


def test_injected_disagreement_fails_a_criterion_exit_3_and_nothing_written(site, tmp_path, capsys):
    cases = site.site_cases(300, seed=1)
    calls = []
    low_negatives = 0
    for score, truth in cases:  # reviewers call half the low-scoring negatives positive
        if not truth and score < 0.15:
            low_negatives += 1
            calls.append(low_negatives % 2 == 0)
        else:
            calls.append(truth)
    db = site.write_history(tmp_path / "run1", cases, calls=calls)
    out = tmp_path / "site-models"
    status = main(["adapt", "--model", "fracture_xray", "--review-db", str(db), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 3
    assert err.startswith("medassist: error: adaptation refused by the protocol (acceptance criteria not met)")
    assert "specificity_margin: locked set" in err and "adapted specificity 0." in err
    assert "sensitivity_lower_bound" not in err  # it held: only the failing criteria are named
    _nothing_written(tmp_path, out)


def test_too_few_reviewed_cases_exit_3_before_fitting(site, tmp_path, capsys):
    db = site.write_history(tmp_path / "run1", site.site_cases(40, seed=4))
    out = tmp_path / "site-models"
    assert main(["adapt", "--model", "fracture_xray", "--review-db", str(db), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "(too few reviewed cases)" in err and "min_reviewed: 40 reviewed findings, at least 100 needed" in err
    _nothing_written(tmp_path, out)


def test_a_missing_review_db_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "decisions.sqlite"
    out = tmp_path / "site-models"
    assert main(["adapt", "--model", "fracture_xray", "--review-db", str(missing), "--out", str(out)]) == 2
    assert f"medassist: error: {missing}: review database not found" in capsys.readouterr().err
    assert not out.exists()


def test_a_log_without_its_worklist_exits_2_naming_the_folder(site, tmp_path, capsys):
    db = site.write_history(tmp_path / "run1", site.site_cases(300, seed=1))
    (db.parent / "worklist.csv").unlink()
    out = tmp_path / "site-models"
    assert main(["adapt", "--model", "fracture_xray", "--review-db", str(db), "--out", str(out)]) == 2
    assert f"medassist: error: {db.parent}: no worklist.csv" in capsys.readouterr().err
    assert not out.exists()


def test_a_non_empty_out_folder_is_refused_untouched(site, tmp_path, capsys):
    db = site.write_history(tmp_path / "run1", site.site_cases(300, seed=1))
    out = tmp_path / "site-models"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["adapt", "--model", "fracture_xray", "--review-db", str(db), "--out", str(out)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_adapting_a_site_version_again_numbers_it_site_2(site, tmp_path):
    db = site.write_history(tmp_path / "run1", site.site_cases(300, seed=1))
    first = tmp_path / "site-1"
    run_adapt("fracture_xray", [db], first)
    spec = shipped_specs(first)[0]
    lower = site.site_cases(300, seed=7, positives=(0.12, 0.8), negatives=(0.0, 0.2))  # still too high here
    db2 = site.write_history(tmp_path / "run2", lower, prefix="b", version=spec.version, threshold=spec.threshold)
    result = run_adapt("fracture_xray", [db2], tmp_path / "site-2", weights_dir=first)
    assert result.version == "1.1.1+site.2" and result.fit.threshold < spec.threshold
    again = shipped_specs(tmp_path / "site-2")[0]
    assert again.validation["adaptation"]["previous_adaptation"]["from_version"] == "1.1.1"
