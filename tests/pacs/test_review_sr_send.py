"""A reviewed SR (the review app's decision, signed by the reviewer) sent back to a real PACS with
``medassist review-sr --send`` and read back through Orthanc's REST API."""

from __future__ import annotations

import io
import logging

import pydicom
import pytest
import requests
from review_sr_run import assert_predecessor_is, run_with_decision

from medassist.cli import main

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _items(node):
    """Every content item under ``node`` (a pydicom dataset or Orthanc's simplified-tags JSON)."""
    for item in node.get("ContentSequence") or []:
        yield item
        yield from _items(item)


def _comments(node) -> list[str]:
    """The TEXT values of the DCM 121106 Comment items in Orthanc's simplified-tags JSON ``node``."""
    return [item["TextValue"] for item in _items(node)
            if item["ValueType"] == "TEXT" and item["ConceptNameCodeSequence"][0]["CodeValue"] == "121106"]


@pytest.mark.parametrize(("comment", "charset"), [
    ("Befund unverändert, Kontrolle in 2 Wochen", "ISO_IR 100"),
    ("fracture → pneumothorax; 気胸あり", "ISO_IR 192"),
])
def test_reviewed_sr_sent_and_read_back_from_the_pacs(orthanc, tmp_path, capsys, caplog, comment, charset):
    caplog.set_level(logging.DEBUG)
    run, findings = run_with_decision(tmp_path, comment=comment)
    user, password = orthanc.auth
    url = orthanc.dicomweb.replace("http://", f"http://{user}:{password}@")
    out = tmp_path / "reviewed"
    assert main(["review-sr", str(run), "--db", str(run), "--out", str(out), "--organization", "General Hospital",
                 "--send", url]) == 0
    captured = capsys.readouterr()
    assert "1 reviewed SR(s) written" in captured.out and "sent 1 reviewed SR(s)" in captured.out
    assert ", 0 failed" in captured.out.splitlines()[-1]
    assert comment not in captured.out + captured.err + caplog.text  # free text is never logged or printed
    assert password not in captured.out + captured.err
    [path] = list(out.glob("*/SR_*.dcm"))
    local = pydicom.dcmread(path)
    [ai_path] = list((run / "dicom" / local.StudyInstanceUID).glob("SR_*.dcm"))
    ai_sr = pydicom.dcmread(ai_path)

    found = requests.post(f"{orthanc.url}/tools/lookup", data=str(local.SOPInstanceUID), auth=orthanc.auth,
                          timeout=10).json()
    [instance] = [x["ID"] for x in found if x["Type"] == "Instance"]
    # What Orthanc made of it: its own decoding of the tags (so of the character set) ...
    tags = requests.get(f"{orthanc.url}/instances/{instance}/simplified-tags", auth=orthanc.auth, timeout=10)
    assert tags.status_code == 200, tags.text[:300]
    tags = tags.json()
    assert tags["SOPClassUID"] == COMPREHENSIVE_3D_SR and tags["Modality"] == "SR"
    assert tags["StudyInstanceUID"] == findings[0].study_uid
    assert (tags["CompletionFlag"], tags["VerificationFlag"]) == ("COMPLETE", "VERIFIED")
    assert tags["SpecificCharacterSet"] == charset
    assert _comments(tags) == [comment]
    # ... and the stored file itself, byte for byte what was sent.
    stored = requests.get(f"{orthanc.url}/instances/{instance}/file", auth=orthanc.auth, timeout=10)
    assert stored.status_code == 200
    assert stored.content == path.read_bytes()
    remote = pydicom.dcmread(io.BytesIO(stored.content))
    assert remote.SOPClassUID == COMPREHENSIVE_3D_SR and remote.VerificationFlag == "VERIFIED"
    [verifier] = remote.VerifyingObserverSequence
    assert (str(verifier.VerifyingObserverName), verifier.VerifyingOrganization) == ("dr.alice^", "General Hospital")
    assert_predecessor_is(remote, ai_sr)
    assert [item.TextValue for item in _items(remote)
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"] == [comment]
    # The corrected location went with it: the reviewer's point on the source image.
    points = [item for item in _items(remote) if item.ValueType == "SCOORD"]
    assert [p.GraphicType for p in points] == ["POINT"]
    assert list(points[0].GraphicData) == [4.5, 3.5]
