"""triage --runtime onnx on the bundled sample export: the worklist torch gives, scores within 1e-4."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medassist.cli import main
from medassist.triage import TriageOptions, run_triage
from onnx_helpers import SAMPLES, exported_dir

pytest.importorskip("onnxruntime")


def rows_by_key(out):
    rows = json.loads((out / "worklist.json").read_text())
    return {(r["series_uid"], r["model"], r["source_path"]): r for r in rows}


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch")
    run_triage([SAMPLES], out, TriageOptions(num_workers=0, progress=False, runtime="torch"))
    return out


def test_triage_with_onnx_gives_the_torch_worklist(torch_run, tmp_path, caplog):
    out = tmp_path / "onnx"
    with caplog.at_level("INFO", logger="medassist"):
        assert main(["-v", "triage", str(SAMPLES), "--out", str(out), "--quiet", "--workers", "0",
                     "--runtime", "onnx", "--onnx-dir", str(exported_dir())]) == 0
    assert "model fracture_xray scores with ONNX Runtime" in caplog.text
    assert "model tumor_mri scores with ONNX Runtime" in caplog.text
    # the export's agreement is on record and the fracture map (cell_probability) comes from ONNX
    # Runtime's cell logits: that network is never built; the tumour map (GradCAM) builds its own
    assert "on probe inputs, on record" in caplog.text
    assert "model fracture_xray: torch network built" not in caplog.text
    assert "model tumor_mri: torch network built" in caplog.text
    ours, theirs = rows_by_key(torch_run), rows_by_key(out)
    assert ours.keys() == theirs.keys()
    scored = 0
    for key, row in ours.items():
        other = theirs[key]
        assert other["flagged"] == row["flagged"] and other["error"] == row["error"], key
        assert other["slices"] == row["slices"], key
        if row["score"] is not None:
            scored += 1
            assert abs(other["score"] - row["score"]) <= 1e-4, key
        # saliency runs on torch in both: the same findings get a map, and (GradCAM from the scoring
        # pass's features under torch, a full torch pass under onnx) the same map
        assert bool(other["saliency_path"]) == bool(row["saliency_path"]), key
        if row["saliency_path"]:
            np.testing.assert_allclose(np.load(out / other["saliency_path"]),
                                       np.load(torch_run / row["saliency_path"]), atol=1e-3)
    assert scored >= 10 and any(r["flagged"] for r in ours.values())


def test_runtime_onnx_without_an_export_stops_naming_the_file(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["triage", str(SAMPLES / "PAT01"), "--out", str(tmp_path / "out"), "--quiet", "--workers", "0",
                 "--runtime", "onnx", "--onnx-dir", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"medassist: error: {empty / 'fracture_xray.onnx'}: no ONNX export of model fracture_xray" in err


def test_without_an_onnx_dir_triage_looks_in_the_default_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDASSIST_ONNX_DIR", str(tmp_path / "cache"))
    assert main(["triage", str(SAMPLES / "PAT01"), "--out", str(tmp_path / "out"), "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'cache' / 'fracture_xray.onnx'}: no ONNX export of model fracture_xray" in err
    assert "medassist export-model fracture_xray --format onnx" in err


def test_runtime_auto_without_an_export_scores_with_torch(torch_run, tmp_path, caplog):
    out = tmp_path / "auto"
    with caplog.at_level("WARNING", logger="medassist"):
        assert main(["triage", str(SAMPLES / "PAT01"), "--out", str(out), "--quiet", "--workers", "0",
                     "--runtime", "auto", "--onnx-dir", str(tmp_path)]) == 0
    assert "--runtime auto: model fracture_xray scores with torch" in caplog.text
    (row,) = rows_by_key(out).values()
    assert row["score"] == rows_by_key(torch_run)[next(k for k in rows_by_key(torch_run) if "PAT01" in k[2])]["score"]
