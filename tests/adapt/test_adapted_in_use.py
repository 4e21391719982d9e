"""The adapted models folder in use: triage takes its threshold and version; tampering is refused."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from medassist.cli import main
from medassist.datamodel import read_worklist
from medassist.errors import MedassistError
from medassist.models.integrity import trusted_spec
from medassist.models.registry import shipped_specs
from medassist.models.spec import ModelSpec

SAMPLE_DX = Path(__file__).resolve().parents[2] / "samples" / "export" / "PAT01" / "STUDY1" / "SER1" / "IM0001"


def test_triage_with_the_adapted_models_dir_flags_at_the_adapted_threshold(adapted, tmp_path):
    [spec] = shipped_specs(adapted)
    out = tmp_path / "triage"
    assert main(["triage", str(SAMPLE_DX), "--out", str(out), "--models-dir", str(adapted), "--explain", "none",
                 "--quiet", "--device", "cpu"]) == 0
    [row] = [r for r in read_worklist(out) if r.is_finding]
    assert (row.model, row.model_version, row.threshold) == ("fracture_xray", "1.1.1+site.1", spec.threshold)
    assert row.flagged == (row.score >= spec.threshold)


def test_an_edited_adapted_spec_is_refused_by_the_registry(adapted, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("fracture_xray.json", "fracture_xray.sig", "fracture_xray.pt"):
        (copy / name).write_bytes((adapted / name).read_bytes())
    trusted_spec(copy / "fracture_xray.json")  # the copy verifies as it is
    raw = json.loads((copy / "fracture_xray.json").read_text())
    raw["threshold"] = 0.99
    (copy / "fracture_xray.json").write_text(ModelSpec.from_dict(raw).to_json())
    with pytest.raises(MedassistError, match="signature does not match"):
        trusted_spec(copy / "fracture_xray.json")


def test_a_decision_log_that_fails_verification_exits_2_and_is_not_used(site, tmp_path, capsys):
    db = site.write_history(tmp_path / "run1", site.site_cases(300, seed=1))
    with sqlite3.connect(db) as con:  # someone with the file: drop the guard and flip a call
        con.execute("DROP TRIGGER decisions_no_update")
        con.execute("UPDATE decisions SET decision = 'reject' WHERE id = 1")
    out = tmp_path / "site-models"
    assert main(["adapt", "--model", "fracture_xray", "--review-db", str(db), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"medassist: error: {db}: the decision log is not verified" in err and "row 1" in err
    assert not out.exists()
