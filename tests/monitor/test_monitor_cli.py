"""medassist monitor end to end on the real sample triage output, and its exit statuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medassist.cli import main

REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "samples" / "export"


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """One `medassist triage samples/export` (both shipped models), shared by the tests here."""
    out = tmp_path_factory.mktemp("sample-run")
    assert main(["triage", str(EXPORT), "--out", str(out), "--quiet"]) == 0
    return out


def test_the_sample_run_against_itself_exits_0_without_a_drift_alert(sample_run, tmp_path, capsys):
    limits = tmp_path / "limits.yaml"  # low enough that the comparisons are made (and could alert)
    limits.write_text("min_studies: 1\nmin_reference_per_bin: 1\nks_alpha: 0.5\n")
    report = tmp_path / "report"
    status = main(["monitor", str(sample_run), "--reference", str(sample_run), "--out", str(report),
                   "--limits", str(limits)])
    assert status == 0
    data = json.loads((report / "monitor.json").read_text())
    assert [a for a in data["alerts"] if a["kind"] in ("drift", "flag_rate")] == []
    models = {(m["model"], m["version"]): m for m in data["models"]}
    assert {name for name, _ in models} == {"fracture_xray", "tumor_mri"}
    for figures in models.values():
        [period] = figures["runs"]
        assert period["drift"]["psi"] == 0.0 and period["drift"]["ks_p_value"] == 1.0
        assert period["flag_rate"]["outside"] is False
    assert models[next(k for k in models if k[0] == "fracture_xray")]["runs"][0]["scores"]["n_findings"] == 10
    page = (report / "report.html").read_text()
    assert "fracture_xray" in page and "tumor_mri" in page
    assert "SAMPLE-FRAC" not in page and "SAMPLE-FRAC" not in json.dumps(data)  # the samples' patient IDs
    assert "0 alert(s)" in capsys.readouterr().out


def test_a_folder_without_a_worklist_exits_2_naming_it_and_the_rest_is_reported(sample_run, tmp_path, capsys):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    report = tmp_path / "report"
    status = main(["monitor", str(empty), str(sample_run), "--reference", str(sample_run), "--out", str(report)])
    assert status == 2
    err = capsys.readouterr().err
    assert f"medassist: error: {empty}: no worklist.csv" in err
    data = json.loads((report / "monitor.json").read_text())
    assert [r["path"] for r in data["runs"]] == [str(sample_run)] and len(data["problems"]) == 1


def test_without_a_reference_the_model_cards_are_the_reference_where_they_apply(sample_run, tmp_path, capsys):
    """Default: model_cards/ of this checkout. The fracture card (per image, this version) is the
    fracture model's reference; the tumour card is per slice while triage scores series, so the
    tumour model has none and the report says why. The sample run is 10 studies, under
    min_studies: its figures against the card are reported without an alert."""
    assert main(["monitor", str(sample_run), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    data = json.loads((tmp_path / "report" / "monitor.json").read_text())
    assert data["reference"]["kind"] == "model_cards" and data["reference"]["cards"] == str(REPO / "model_cards")
    versions = {v["model"]: v for v in data["reference"]["versions"]}
    assert versions["fracture_xray"]["kind"] == "model_card"
    assert versions["fracture_xray"]["source"] == str(REPO / "model_cards" / "fracture_xray.json")
    assert versions["tumor_mri"]["kind"] == "none" and "per slice" in versions["tumor_mri"]["note"]
    assert "no reference for tumor_mri" in err and "fracture_xray" not in err
    [fracture] = [m for m in data["models"] if m["model"] == "fracture_xray"]
    [period] = fracture["runs"]
    assert period["scores"]["n_studies"] == 10 < data["limits"]["min_studies"]
    assert period["drift"] is not None and len(period["drift"]["edges"]) + 1 == data["limits"]["psi_bins"]
    assert period["drift"]["n_reference"] == fracture["reference"]["card"]["n"]
    assert [a for a in data["alerts"] if a["kind"] in ("drift", "flag_rate")] == []
    page = (tmp_path / "report" / "report.html").read_text()
    assert "model cards in" in page and "per slice" in page


def test_with_empty_cards_and_no_reference_it_says_so(sample_run, tmp_path, capsys):
    cards = tmp_path / "cards"
    cards.mkdir()
    assert main(["monitor", str(sample_run), "--out", str(tmp_path / "report"), "--cards", str(cards)]) == 0
    assert "no --reference, no usable model card of this version" in capsys.readouterr().err
    data = json.loads((tmp_path / "report" / "monitor.json").read_text())
    assert {v["kind"] for v in data["reference"]["versions"]} == {"none"}
    assert all("validation score distribution" in v["note"] for v in data["reference"]["versions"])


def test_no_usable_run_exits_2_and_writes_nothing(tmp_path, capsys):
    assert main(["monitor", str(tmp_path / "missing"), "--out", str(tmp_path / "report")]) == 2
    assert "no usable run folder" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
