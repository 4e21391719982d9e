"""End to end: generated DICOM files in a folder -> run_triage -> worklist rows."""

from __future__ import annotations

import csv
import json
import logging

import pytest

from medassist.errors import MedassistError
from medassist.triage import TriageOptions, run_triage, triage_series
from medassist.triage.testing import synthetic_radiograph, write_dicom_image


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """4 DX hand/leg radiographs, a chest DX, a US and a DX whose pixel data is cut short."""
    root = tmp_path_factory.mktemp("export")
    for i in range(4):
        write_dicom_image(root / f"P{i}" / "IM1.dcm", synthetic_radiograph(120, 90 + 10 * i, i),
                          body_part="HAND" if i % 2 else "LEG", patient_id=f"SECRET-{i}", index=i)
    write_dicom_image(root / "chest" / "IM1.dcm", synthetic_radiograph(100, 100, 7), body_part="CHEST", index=7)
    write_dicom_image(root / "us" / "IM1.dcm", synthetic_radiograph(64, 80, 8), modality="US", body_part="", index=8)
    broken = write_dicom_image(root / "broken" / "IM1.dcm", synthetic_radiograph(100, 100, 9), index=9)
    broken.write_bytes(broken.read_bytes()[:-3000])
    return root


def test_every_series_gets_a_row(export, tmp_path, model_dir, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        summary = run_triage([export], out, TriageOptions(device="cpu", batch_size=3, num_workers=1,
                                                          weights_dir=model_dir, progress=False))
    with open(out / "worklist.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert json.loads((out / "worklist.json").read_text()) != []
    assert (summary.n_series, summary.n_findings, summary.n_not_applicable, summary.n_errors) == (6, 4, 2, 1)
    assert len(rows) == 7

    scored, not_applicable, errors = rows[:4], rows[4:6], rows[6:]
    scores = [float(r["score"]) for r in scored]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    for r in scored:
        assert r["model"] == "fracture_xray" and r["modality"] == "DX" and r["error"] == ""
        assert r["flagged"] == ("true" if float(r["score"]) >= float(r["threshold"]) else "false")
    assert {r["body_part"] for r in not_applicable} == {"CHEST", ""}
    assert all(r["finding"] == "not applicable" and r["score"] == "" for r in not_applicable)
    assert any(r["error"] == "no shipped model applies to US / unknown body part" for r in not_applicable)
    assert errors[0]["source_path"].endswith("broken/IM1.dcm") and "truncated" in errors[0]["error"]
    assert "SECRET" not in caplog.text and "TEST^" not in caplog.text, "no patient identifiers in logs"


def test_a_series_that_fails_to_decode_in_a_worker_becomes_an_error_row(tmp_path, model_dir, series_factory):
    series = [series_factory(1), series_factory(2, broken=True), series_factory(3)]
    summary = triage_series(series, [], tmp_path, TriageOptions(device="cpu", batch_size=2, num_workers=1,
                                                                weights_dir=model_dir, progress=False))
    rows = json.loads((tmp_path / "worklist.json").read_text())
    assert (summary.n_findings, summary.n_errors) == (2, 1)
    assert rows[-1]["source_path"] == "/data/series002.dcm"
    assert rows[-1]["error"] == "/data/series002.dcm: pixel data could not be decoded"
    assert rows[-1]["score"] is None and rows[-1]["model"] == "fracture_xray"


def test_workers_do_not_change_scores(tmp_path, model_dir, series_factory):
    series = [series_factory(i) for i in range(5)]
    runs = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        triage_series(series, [], out, TriageOptions(device="cpu", batch_size=2, num_workers=workers,
                                                     weights_dir=model_dir, progress=False))
        runs.append({r["series_uid"]: r["score"] for r in json.loads((out / "worklist.json").read_text())})
    assert runs[0] == runs[1] and len(runs[0]) == 5


def test_missing_input_is_a_user_error(tmp_path, model_dir):
    with pytest.raises(MedassistError, match="no such file or directory"):
        run_triage([tmp_path / "nope"], tmp_path / "out", TriageOptions(weights_dir=model_dir, progress=False))


@pytest.mark.parametrize("explain", ["flagged", "all", "none"])
def test_saliency_maps_follow_the_explain_policy(export, tmp_path, model_dir, explain):
    import numpy as np
    import pydicom

    out = tmp_path / "out"
    run_triage([export], out, TriageOptions(device="cpu", batch_size=3, num_workers=0, weights_dir=model_dir,
                                            progress=False, explain=explain))
    rows = [r for r in json.loads((out / "worklist.json").read_text()) if r["score"] is not None]
    assert len(rows) == 4
    for row in rows:
        wanted = explain == "all" or (explain == "flagged" and row["flagged"])
        assert bool(row["saliency_path"]) == wanted, row
        if wanted:
            saliency = np.load(out / row["saliency_path"])
            source = pydicom.dcmread(row["source_path"]).pixel_array
            assert saliency.shape == source.shape, "map is in the source image's geometry"
            assert np.isfinite(saliency).all() and saliency.min() >= 0
            assert (out / row["saliency_path"]).with_suffix(".png").is_file()


def test_series_whose_uids_differ_only_in_unsafe_characters_get_their_own_saliency_files(tmp_path, model_dir):
    """'/1.2.3' and '1.2.3' sanitise to the same name; the files must still be two."""
    import numpy as np
    import pydicom

    uids = ["1.2.3", "/1.2.3"]
    for i, uid in enumerate(uids):
        path = write_dicom_image(tmp_path / "in" / f"{i}.dcm", synthetic_radiograph(96, 80, i), index=i)
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = uid
        ds.save_as(path, enforce_file_format=True)
    out = tmp_path / "out"
    run_triage([tmp_path / "in"], out, TriageOptions(device="cpu", num_workers=0, weights_dir=model_dir,
                                                     progress=False, explain="all"))
    maps = {row["series_uid"]: row["saliency_path"] for row in json.loads((out / "worklist.json").read_text())}
    assert sorted(maps) == sorted(uids) and all(maps.values()) and len(set(maps.values())) == 2, maps
    assert len(list((out / "saliency").glob("*.npy"))) == 2
    assert all(np.load(out / rel).shape == (96, 80) for rel in maps.values())


def test_a_file_whose_transfer_syntax_is_not_one_is_an_error_row_and_the_batch_goes_on(tmp_path, model_dir):
    # Used to stop the whole run with "ValueError: UID is not a transfer syntax." from discovery.
    from medassist.ingest.fuzz import FuzzSource, read_base, replace_elements

    for i in range(2):
        write_dicom_image(tmp_path / "in" / f"good{i}.dcm", synthetic_radiograph(96, 80, i), index=i)
    bad = write_dicom_image(tmp_path / "in" / "bad.dcm", synthetic_radiograph(96, 80, 5), index=5)
    base = read_base(FuzzSource(bad))
    bad.write_bytes(replace_elements(base.data, base, {"TransferSyntaxUID": b"1.2.840.10008.1.1"}))

    summary = run_triage([tmp_path / "in"], tmp_path / "out", TriageOptions(device="cpu", num_workers=0,
                                                                            weights_dir=model_dir, progress=False,
                                                                            explain="none"))

    rows = json.loads((tmp_path / "out" / "worklist.json").read_text())
    assert (summary.n_findings, summary.n_errors) == (2, 1)
    assert rows[-1]["source_path"] == str(bad)
    assert rows[-1]["error"] == ("Transfer Syntax UID 1.2.840.10008.1.1 (Verification SOP Class) is not a transfer "
                                 "syntax: the file meta is corrupt")


def test_a_series_whose_scoring_raises_is_its_own_error_row(tmp_path, model_dir, series_factory, monkeypatch):
    # The batch holding it fails; its jobs are scored one by one, so only that series is lost.
    from medassist.triage import run as run_module

    real = run_module.score_inputs_with_features
    poisoned = series_factory(2)
    poisoned.loader = lambda: _constant_image()

    def fragile(model, inputs, batch_size):
        if bool((inputs.flatten(1).std(dim=1) == 0).any()):
            raise RuntimeError("the network cannot take a constant input")
        return real(model, inputs, batch_size)

    monkeypatch.setattr(run_module, "score_inputs_with_features", fragile)
    series = [series_factory(1), poisoned, series_factory(3)]
    summary = triage_series(series, [], tmp_path, TriageOptions(device="cpu", batch_size=3, num_workers=0,
                                                                weights_dir=model_dir, progress=False, explain="none"))

    rows = json.loads((tmp_path / "worklist.json").read_text())
    assert (summary.n_findings, summary.n_errors) == (2, 1)
    assert rows[-1]["source_path"] == poisoned.source_path
    assert rows[-1]["error"] == (f"{poisoned.source_path}: could not score image "
                                 "(RuntimeError: the network cannot take a constant input)")


def _constant_image():
    import numpy as np

    from medassist.datamodel import Image

    pixels = np.full((1, 80, 60), 7.0, dtype=np.float32)
    return Image(pixels=pixels, display=np.zeros_like(pixels))


def test_a_dicom_file_puts_sex_age_band_manufacturer_and_study_date_in_the_worklist(tmp_path, model_dir):
    import pydicom

    path = write_dicom_image(tmp_path / "in" / "IM1.dcm", synthetic_radiograph(120, 90, 3), patient_id="SECRET-9")
    ds = pydicom.dcmread(path)
    ds.PatientSex, ds.PatientAge, ds.Manufacturer, ds.StudyDate = "F", "067Y", "ACME Imaging", "20261130"
    ds.save_as(path, enforce_file_format=True)
    bare = write_dicom_image(tmp_path / "in" / "bare" / "IM1.dcm", synthetic_radiograph(120, 90, 4), index=4)
    run_triage([tmp_path / "in"], tmp_path / "out", TriageOptions(device="cpu", batch_size=2, num_workers=0,
                                                                  weights_dir=model_dir, progress=False))
    csv_text = (tmp_path / "out" / "worklist.csv").read_text()
    with open(tmp_path / "out" / "worklist.csv", newline="") as fh:
        rows = {r["source_path"]: r for r in csv.DictReader(fh)}
    tagged, untagged = rows[str(path)], rows[str(bare)]
    assert tagged["model"] == "fracture_xray" and tagged["score"] != ""
    assert (tagged["sex"], tagged["age_band"], tagged["manufacturer"], tagged["study_date"]) == (
        "F", "65+", "ACME Imaging", "20261130")
    assert (untagged["sex"], untagged["age_band"], untagged["manufacturer"], untagged["study_date"]) == ("", "", "", "")
    assert "067Y" not in csv_text and "067Y" not in (tmp_path / "out" / "worklist.json").read_text()


def test_triage_options_refuse_bad_values_with_the_messages_of_the_triage_functions():
    from medassist.errors import MedassistError

    for bad in ({"batch_size": 0}, {"num_workers": -1}, {"checkpoint_every": 0}):
        with pytest.raises(ValueError, match=r"^batch_size and checkpoint_every must be >= 1, num_workers >= 0$"):
            TriageOptions(**bad)
    with pytest.raises(ValueError, match="actors must be >= 1"):
        TriageOptions(actors=0)
    with pytest.raises(MedassistError, match=r"--runtime 'tflite': choose one of torch, onnx, auto"):
        TriageOptions(runtime="tflite")
    with pytest.raises(MedassistError, match=r"--explain 'some': choose one of flagged, all, none"):
        TriageOptions(explain="some")
