"""The C-STORE listener: Orthanc pushes a study, the listener spools and triages it once idle."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pydicom
import requests
from conftest_orthanc import LISTENER_AET, free_port, wait_until
from pydicom.uid import generate_uid

from medassist.pacs.listener import STATUS_CANNOT_UNDERSTAND, StudyListener
from medassist.pacs.send import store_cstore

DX_STUDY = "2.25.8650711976142466582047757792851209316"  # samples/export/PAT01


def orthanc_study_id(orthanc, study_uid: str) -> str:
    r = requests.post(f"{orthanc.url}/tools/lookup", data=study_uid, auth=orthanc.auth, timeout=10)
    r.raise_for_status()
    return [x["ID"] for x in r.json() if x["Type"] == "Study"][0]


def worklist_studies(path) -> list[str]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [row["study_uid"] for row in csv.DictReader(fh)]


def test_orthanc_pushes_a_study_and_its_worklist_appears(orthanc_loaded, tmp_path, fake_triage):
    from medassist.triage import TriageOptions

    orthanc = orthanc_loaded
    listener = StudyListener(LISTENER_AET, orthanc.listener_port, tmp_path, idle_seconds=1.0, triage=fake_triage,
                             options=TriageOptions(device="cpu"), allow_ae=[f"{orthanc.aet}@127.0.0.1", "TESTSCU"])
    with listener:
        echo = requests.post(f"{orthanc.url}/modalities/medassist/echo", data="{}", auth=orthanc.auth, timeout=30)
        assert echo.status_code == 200
        body = {"Resources": [orthanc_study_id(orthanc, DX_STUDY)], "Synchronous": True}
        r = requests.post(f"{orthanc.url}/modalities/medassist/store", json=body, auth=orthanc.auth, timeout=120)
        assert r.status_code == 200, r.text
        assert wait_until(lambda: DX_STUDY in worklist_studies(tmp_path / "worklist.csv"), timeout=120)

        # Spooled once, triaged once, into the study's own folder, with the caller's options.
        spooled = list((tmp_path / "spool" / DX_STUDY).glob("*.dcm"))
        assert len(spooled) == 1
        assert pydicom.dcmread(spooled[0]).StudyInstanceUID == DX_STUDY
        [(inputs, out_dir, options)] = fake_triage.calls
        assert inputs == [str(tmp_path / "spool" / DX_STUDY)]
        assert out_dir == tmp_path / "studies" / DX_STUDY and options == TriageOptions(device="cpu")
        assert (out_dir / "worklist.json").is_file()

        # An instance that arrives later makes the study due again: re-triaged on both instances.
        extra = pydicom.dcmread(spooled[0])
        extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        extra.SeriesInstanceUID = generate_uid()
        report = store_cstore("127.0.0.1", orthanc.listener_port, LISTENER_AET, [extra], calling_aet="TESTSCU")
        assert report.ok
        assert wait_until(lambda: len(fake_triage.calls) == 2, timeout=120)
        # a run counts once triage returns, a moment after the call is seen
        assert wait_until(lambda: listener.studies[DX_STUDY].runs == 2, timeout=30)
        assert listener.studies[DX_STUDY].received == 2
        assert wait_until(lambda: worklist_studies(tmp_path / "worklist.csv").count(DX_STUDY) == 2, timeout=30)


def test_a_failing_triage_does_not_stop_the_listener(tmp_path):
    def broken(inputs, out_dir, options):
        raise RuntimeError("model exploded")

    port = free_port()
    listener = StudyListener("MA", port, tmp_path, idle_seconds=0.3, triage=broken, allow_ae=["MEDASSIST"])
    with listener:
        ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
        assert store_cstore("127.0.0.1", port, "MA", [ds]).ok
        assert listener.wait_for(1, timeout=60)
        assert "model exploded" in listener.triaged[0].error
        ds.SOPInstanceUID = generate_uid()
        assert store_cstore("127.0.0.1", port, "MA", [ds]).ok  # still receiving


def test_instances_with_unsafe_uids_are_refused(tmp_path):
    import warnings

    from pydicom.dataelem import DataElement

    listener = StudyListener("MA", free_port(), tmp_path, allow_ae=["MEDASSIST"])
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    received = tmp_path / "received.dcm"  # as pynetdicom streams it (STORE_RECV_CHUNKED_DATASET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: not a valid UI value, which is the point
        ds["StudyInstanceUID"] = DataElement(0x0020000D, "UI", "../../etc")
        ds.save_as(received, enforce_file_format=True)
        event = SimpleNamespace(dataset_path=received, request=SimpleNamespace(AffectedSOPInstanceUID="1.2.3"),
                                assoc=None)
        assert listener._handle_store(event) == STATUS_CANNOT_UNDERSTAND
    assert not (tmp_path / "spool").exists() or not any((tmp_path / "spool").iterdir())


def test_studies_left_in_the_spool_are_triaged_after_a_restart(tmp_path, fake_triage):
    import shutil
    from pathlib import Path

    sample = Path(__file__).resolve().parents[2] / "samples/export/PAT02/STUDY1/SER1/IM0001.dcm"
    study = str(pydicom.dcmread(sample, stop_before_pixels=True).StudyInstanceUID)
    (tmp_path / "spool" / study).mkdir(parents=True)
    shutil.copy(sample, tmp_path / "spool" / study / "x.dcm")
    listener = StudyListener("MA", free_port(), tmp_path, idle_seconds=0.2, triage=fake_triage, allow_ae=["MEDASSIST"])
    with listener:
        assert listener.wait_for(1, timeout=60)
    assert worklist_studies(tmp_path / "worklist.csv") == [study]


def test_partial_files_of_interrupted_transfers_are_removed_when_the_listener_starts(tmp_path, fake_triage):
    import shutil

    sample = Path(__file__).resolve().parents[2] / "samples/export/PAT02/STUDY1/SER1/IM0001.dcm"
    kept, half = tmp_path / "spool" / "1.2.3", tmp_path / "spool" / "1.2.4"  # a study with a finished instance, one without
    for folder in (kept, half):
        folder.mkdir(parents=True)
        (folder / ".1.2.3.9.part").write_bytes(b"\0" * 128 + b"DICM")  # a transfer cut off mid-way
    shutil.copy(sample, kept / "1.2.3.1.dcm")
    (tmp_path / "spool" / "notes").mkdir()
    (tmp_path / "spool" / "notes" / ".mine.part").write_text("not the listener's")

    listener = StudyListener("MA", free_port(), tmp_path, idle_seconds=3600, triage=fake_triage, allow_ae=["MEDASSIST"])
    with listener:
        assert not list(kept.glob("*.part")) and not list(half.glob("*.part"))
        assert (kept / "1.2.3.1.dcm").is_file() and (tmp_path / "spool" / "notes" / ".mine.part").is_file()
        assert set(listener.studies) == {"1.2.3"}  # the half-received study has nothing to triage
    assert fake_triage.calls == []


def test_listen_sends_each_studys_results_back_to_the_pacs(orthanc_loaded, tmp_path, fake_triage):
    """The whole loop: receive a study, triage it, STOW its SR and saliency capture into the PACS."""
    import threading
    from pathlib import Path

    from medassist.errors import MedassistError
    from medassist.pacs.listener import listen

    orthanc = orthanc_loaded
    user, password = orthanc.auth
    sample = Path(__file__).resolve().parents[2] / "samples/export/PAT02/STUDY1/SER1/IM0001.dcm"
    study = str(pydicom.dcmread(sample, stop_before_pixels=True).StudyInstanceUID)
    port, stop = free_port(), threading.Event()
    thread = threading.Thread(target=listen, args=("MA2", port, tmp_path), daemon=True, kwargs=dict(
        idle_seconds=0.5, triage=fake_triage, stop_event=stop, send_to=orthanc.dicomweb,
        send_username=user, send_password=password, allow_ae=["MEDASSIST"]))
    thread.start()

    def stored() -> bool:
        try:
            return store_cstore("127.0.0.1", port, "MA2", [sample]).ok
        except MedassistError:  # the listener is not up yet
            return False

    def modalities() -> set[str]:
        series = requests.get(f"{orthanc.url}/studies/{orthanc_study_id(orthanc, study)}/series",
                              auth=orthanc.auth, timeout=10).json()
        return {s["MainDicomTags"].get("Modality") for s in series}

    try:
        assert wait_until(stored, timeout=60)
        assert wait_until(lambda: {"SR", "OT"} <= modalities(), timeout=120), modalities()
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert worklist_studies(tmp_path / "worklist.csv") == [study]


def test_merged_worklist_is_in_priority_order_across_studies_and_survives_a_restart(tmp_path):
    import json

    import numpy as np

    from medassist.datamodel import WorklistRow
    from medassist.triage.worklist import write_worklist

    scores = {"1.2.3": 0.30, "1.2.4": 0.95, "1.2.5": 0.60}

    def triage(inputs, out_dir, options):  # one scored row per study, with a saliency map
        study, out = Path(inputs[0]).name, Path(out_dir)
        (out / "saliency").mkdir(parents=True, exist_ok=True)
        np.save(out / "saliency" / "map.npy", np.ones((2, 2), np.float32))
        row = WorklistRow(study_uid=study, series_uid=f"{study}.1", patient_id="P", accession="A", modality="DX",
                          body_part="HAND", model="m", model_version="1", finding="fracture", score=scores[study],
                          threshold=0.5, flagged=scores[study] >= 0.5, source_path=str(inputs[0]),
                          saliency_path="saliency/map.npy")
        write_worklist(out, [row])

    first = StudyListener("MEDASSIST", free_port(), tmp_path, triage=triage, allow_ae=["MEDASSIST"])
    first.triage_study("1.2.3")
    first.triage_study("1.2.4")
    restarted = StudyListener("MEDASSIST", free_port(), tmp_path, triage=triage, allow_ae=["MEDASSIST"])
    restarted.triage_study("1.2.5")

    assert worklist_studies(tmp_path / "worklist.csv") == ["1.2.4", "1.2.5", "1.2.3"]  # flagged, then by score
    records = json.loads((tmp_path / "worklist.json").read_text())
    assert [r["study_uid"] for r in records] == ["1.2.4", "1.2.5", "1.2.3"]
    for record in records:
        assert record["saliency_path"] == f"studies/{record['study_uid']}/saliency/map.npy"
        assert (tmp_path / record["saliency_path"]).is_file()


def test_results_the_listener_could_not_build_or_send_are_logged_as_a_warning(tmp_path, monkeypatch, caplog):
    import importlib
    import logging

    from medassist.datamodel import IngestProblem
    from medassist.dicom_out.results import DicomResults
    from medassist.pacs import listener as listener_module
    from medassist.pacs.send import SendReport

    def send_results(out_dir, target, **kwargs):
        made = DicomResults(problems=[IngestProblem("x.dcm", "no SR for this study: broken")])
        return made, SendReport(target="http://***@pacs/dicom-web", stored=["1.2"], failed={"1.3": "refused"})

    monkeypatch.setattr(importlib.import_module("medassist.pacs.send"), "send_results", send_results)  # not pacs.send()
    callback = listener_module._sending(None, "http://u:pw-secret@pacs/dicom-web", None, None)
    with caplog.at_level(logging.INFO, logger="medassist"):
        callback(listener_module.TriagedStudy("1.2.3", tmp_path, 1))
    [record] = [r for r in caplog.records if "sent to" in r.getMessage()]
    assert record.levelno == logging.WARNING and "1 result instance(s) sent" in record.getMessage()
    assert "2 could not be built or sent" in record.getMessage() and "pw-secret" not in caplog.text
