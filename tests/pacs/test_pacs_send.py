"""Results pushed back to a real PACS (STOW-RS and C-STORE) and read back from it."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import requests
from conftest_orthanc import fake_triage, free_port

from medassist.dicom_out.results import write_dicom_results
from medassist.errors import MedassistError
from medassist.pacs.dicomweb import connect
from medassist.pacs.send import send

EXPORT = Path(__file__).resolve().parents[2] / "samples" / "export"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """SR, SC and SEG made from the stand-in triage of PAT01 (DX) and PAT09 (CR)."""
    out = tmp_path_factory.mktemp("results")
    fake_triage([EXPORT / "PAT01", EXPORT / "PAT09"], out)
    report = write_dicom_results(out, saliency_as=("sc", "seg"))
    assert report.problems == [] and len(report.paths) == 6
    return report


def items(ds):
    for item in ds.get("ContentSequence") or []:
        yield item
        yield from items(item)


def test_stow_rs_then_read_back_over_wado_rs(orthanc_loaded, results):
    orthanc = orthanc_loaded
    user, password = orthanc.auth
    report = send(orthanc.dicomweb, results.paths, username=user, password=password)
    assert report.ok and len(report.stored) == 6

    client = connect(orthanc.dicomweb, username=user, password=password)
    for path in results.sr:
        local = pydicom.dcmread(path)
        remote = client.retrieve_instance(local.StudyInstanceUID, local.SeriesInstanceUID, local.SOPInstanceUID)
        [source] = [pydicom.dcmread(p, stop_before_pixels=True)
                    for p in EXPORT.glob("PAT0[19]/STUDY1/SER1/*")
                    if pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID == remote.StudyInstanceUID]
        # The SR lives in the source study and points at the source image.
        assert remote.StudyInstanceUID == source.StudyInstanceUID and remote.PatientID == source.PatientID
        content = list(items(remote))
        refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in content if i.ValueType == "IMAGE"]
        sources = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in content
                   if i.ValueType == "IMAGE" and i.RelationshipType == "CONTAINS"]
        assert sources == [source.SOPInstanceUID] and set(refs) == {source.SOPInstanceUID}
        # A flagged finding's saliency peak and region (SCOORD, selected from the source image), else none.
        flagged = [i for i in content if i.ValueType == "CODE" and i.ConceptCodeSequence[0].CodeValue == "52101004"]
        scoords = sorted(i.GraphicType for i in content if i.ValueType == "SCOORD")
        assert scoords == (["POINT", "POLYLINE"] if flagged else [])
        assert len(refs) == 1 + len(scoords)
        texts = {i.ConceptNameCodeSequence[0].CodeValue: i.TextValue for i in content if i.ValueType == "TEXT"}
        assert texts["111001"] == "fracture_xray" and texts["111003"] == "1.0.0"  # algorithm name, version
        finding = [i for i in content if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071"]
        assert finding[0].ConceptCodeSequence[0].CodeValue == "125605004"  # Fracture of bone
        # Orthanc filed it under the same study as the source image.
        study = requests.post(f"{orthanc.url}/tools/lookup", data=remote.StudyInstanceUID, auth=orthanc.auth,
                              timeout=10).json()
        study_id = [x["ID"] for x in study if x["Type"] == "Study"][0]
        modalities = {s["MainDicomTags"]["Modality"] for s in
                      requests.get(f"{orthanc.url}/studies/{study_id}/series", auth=orthanc.auth, timeout=10).json()}
        assert {"SR", "SEG", "OT"} <= modalities and modalities & {"DX", "CR"}

    for path in results.seg:
        local = pydicom.dcmread(path)
        remote = client.retrieve_instance(local.StudyInstanceUID, local.SeriesInstanceUID, local.SOPInstanceUID)
        # Read with pydicom: highdicom 0.28's reader insists on SliceThickness in Pixel Measures,
        # which its writer leaves out for projection images (Type 1C, not required there).
        assert remote.SegmentationType == "FRACTIONAL" and remote.StudyInstanceUID == local.StudyInstanceUID
        ref = remote.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert ref == local.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        segment = remote.SegmentSequence[0]
        assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "1.0.0"
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "125605004"
    for path in results.sc:
        local = pydicom.dcmread(path)
        remote = client.retrieve_instance(local.StudyInstanceUID, local.SeriesInstanceUID, local.SOPInstanceUID)
        assert remote.SourceImageSequence[0].ReferencedSOPInstanceUID == local.SourceImageSequence[0].ReferencedSOPInstanceUID
        assert remote.pixel_array.shape[-1] == 3


def test_c_store_to_the_pacs(orthanc, results):
    report = send(f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", results.sr)
    assert report.ok and len(report.stored) == len(results.sr)
    uid = pydicom.dcmread(results.sr[0]).SOPInstanceUID
    found = requests.post(f"{orthanc.url}/tools/lookup", data=uid, auth=orthanc.auth, timeout=10).json()
    assert [x["Type"] for x in found] == ["Instance"]


def test_send_errors(orthanc, results):
    user, password = orthanc.auth
    with pytest.raises(MedassistError, match="credentials"):
        send(orthanc.dicomweb, results.sr, username=user, password="wrong")
    with pytest.raises(MedassistError, match="rejected or PACS unreachable"):
        send(f"dicom://NOBODY@127.0.0.1:{free_port()}", results.sr[:1])
    with pytest.raises(MedassistError, match="dicom://"):
        send("ftp://x", results.sr)


def test_no_message_shows_a_password_given_in_the_url(monkeypatch):
    """A password in the URL (requests sends it as basic auth) is never in an error or a report."""
    import requests as requests_lib

    from medassist.dicom_out.results import DicomResults
    from medassist.pacs.dicomweb import _pacs_call
    from medassist.pacs.send import send_results

    url = "http://reader:s3cret-pw@127.0.0.1:1/dicom-web"
    response = requests_lib.Response()
    response.status_code, response.url = 500, f"{url}/studies"

    def fails():
        raise requests_lib.exceptions.HTTPError(f"500 Server Error for url: {response.url}", response=response)

    with pytest.raises(MedassistError) as raised:
        _pacs_call(url, "QIDO-RS study search", fails)
    assert "s3cret" not in str(raised.value) and "http://***@127.0.0.1:1/dicom-web" in str(raised.value)
    with pytest.raises(MedassistError) as raised:
        send("ftp://reader:s3cret-pw@host/", [])
    assert "s3cret" not in str(raised.value)
    monkeypatch.setattr("medassist.dicom_out.results.write_dicom_results", lambda *a, **k: DicomResults())
    _, report = send_results("unused", url)  # nothing to send: an empty report naming the target
    assert report.target == "http://***@127.0.0.1:1/dicom-web"


def test_triage_pacs_send_of_radiographs_without_type_2_attributes(orthanc, tmp_path, capsys):
    """The reported run, end to end: radiographs without birth date, sex, IDs... pulled from the PACS,
    triaged, SR and capture sent back (before: no SR, 'sent 0 ..., 0 failed', exit 0), with the
    password given inside both URLs shown nowhere."""
    from medassist.cli import main
    from medassist.triage.testing import synthetic_radiograph, write_dicom_image, write_throwaway_model

    models = tmp_path / "models"
    write_throwaway_model(models)
    user, password = orthanc.auth
    studies = []
    for i in range(2):  # RG: a modality no sample has, so only these studies are pulled
        path = write_dicom_image(tmp_path / "bare" / f"{i}.dcm", synthetic_radiograph(96, 80, i), modality="RG",
                                 identifiers=False)
        r = requests.post(f"{orthanc.url}/instances", data=path.read_bytes(), auth=orthanc.auth, timeout=60)
        assert r.status_code == 200, r.text
        studies.append(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID))
    url = orthanc.dicomweb.replace("http://", f"http://{user}:{password}@")

    status = main(["-v", "triage", "--pacs", url, "--modality-filter", "RG", "--out", str(tmp_path / "out"),
                   "--device", "cpu", "--workers", "0", "--quiet", "--models-dir", str(models), "--send", url])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert f"to http://***@127.0.0.1:{orthanc.http_port}/dicom-web, 0 failed" in captured.out
    assert password not in captured.out + captured.err
    for study in studies:
        found = requests.post(f"{orthanc.url}/tools/lookup", data=study, auth=orthanc.auth, timeout=10).json()
        study_id = [x["ID"] for x in found if x["Type"] == "Study"][0]
        series = requests.get(f"{orthanc.url}/studies/{study_id}/series", auth=orthanc.auth, timeout=10).json()
        assert "SR" in {s["MainDicomTags"]["Modality"] for s in series}
