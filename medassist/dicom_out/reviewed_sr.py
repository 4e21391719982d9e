"""The reviewed SR: a new version of the triage's AI SR, one finding as the radiologist settled it.

``build_reviewed_sr(ai_sr=..., decision=..., verifying_organization=...)`` takes the AI SR of a study
(``sr.build_study_sr``, written as ``RUN/dicom/<StudyInstanceUID>/SR_<uid>.dcm``) and the reviewer's
current ``review.store.Decision`` for one of its findings, and makes a Comprehensive 3D SR that:

* is a new instance in the same study, in its own series (``REVIEWED_SR_SERIES_NUMBER``), with the
  AI SR in ``PredecessorDocumentsSequence``; its UIDs follow the AI SR and the decision row, so
  writing it twice gives the same instance;
* is COMPLETE and VERIFIED: ``VerifyingObserverSequence`` names the reviewer (their review app
  account, as a PN family name), the verifying organization given, and ``decided_at`` as the
  VerificationDateTime; the observation context has the reviewer as a person observer beside
  medassist's device observer;
* holds one TID 1501 measurement group for the finding, with the AI SR's tracking UID: the model's
  measurements (score, threshold, validation rates) attributed to the algorithm (TID 4019), the
  finding as the reviewer settled it (Present / Absent, ``audit.agreement.final_call``: accept keeps
  the model's call, reject reverses it, a correction names a finding, or a negative label), the
  reviewer's decision (``ReviewDecision``, 99MEDASSIST codes), the reviewer's comment if the
  decision has one (a TEXT item, DCM 121106 Comment) and the same source images;
* location: accepted, the AI SR's location groups (saliency, attributed to the algorithm) are kept;
  corrected with a location, the reviewer's point as an SCOORD POINT (TID 1410, purpose DCM
  128140 Representative point, no algorithm) on the source image of that slice (a volume: the
  slice's own instance; one multi-frame instance: frame slice + 1); otherwise no location.
* character set: ``SpecificCharacterSet`` is ISO_IR 100 (Latin-1) when every text of the SR (patient
  and study attributes from the AI SR, names, the comment) fits it, else ISO_IR 192 (UTF-8), so a
  comment with e.g. "→" or CJK text is stored as written (``character_set``).

The comment is free text and may name the patient: it goes into the SR only, never into a log line
or an error message.

VERIFIED here means only that a named reviewer decided the finding in medassist's review app (a
signed-in account; single-user decisions are refused). By default no DICOM Digital Signature is
added: the SR is not cryptographically signed, and whoever can write it could change it. Given a
``signer`` (``signature.Signer``: a PEM private key and its X.509 certificate), every SR written is
signed once complete: a PS3.15 Annex C signature (``DigitalSignaturesSequence``, SHA-256, RSA or
ECDSA) over all its top-level elements, which ``signature.verify_dataset`` and dcmtk's ``dcmsign
--verify`` check. The signature says who held the key, not that it is the verifying observer: the
certificate is not matched against the reviewer's name, and whether it is trusted is for the
receiver's certificate store. The decision log itself is tamper-evident (``review.store``). The SR stays
PRELIMINARY, as the AI SR: medassist is not the reporting system of record.

``write_reviewed_srs(run_dir, db, out_dir, ...)`` does this for every current decision of a triage
run: one file per decided finding, ``OUT/<StudyInstanceUID>/SR_<uid>.dcm``, written atomically.

Limits: a corrected location on slice 0 of a single multi-frame instance is referenced without a
frame number (the AI SR does not say how many frames its source has), and a point outside the
image cannot be caught here (the SR does not carry the source's Rows and Columns).
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from medassist.atomic import dicom_bytes, write_atomic
from medassist.audit.agreement import final_call
from medassist.datamodel import read_worklist
from medassist.dicom_out import codes as mcodes
from medassist.dicom_out.location import FindingLocation
from medassist.dicom_out.results import DICOM_RESULTS, _safe_name
from medassist.dicom_out.signature import Signer
from medassist.dicom_out.sr import DEVICE_UID, MANUFACTURER, SR_SERIES_NUMBER, derived_uid, software_version, tracking_uid
from medassist.errors import MedassistError
from medassist.optional import require
from medassist.review.accounts import NAME_RE
from medassist.review.store import Decision, default_db_path, open_store

hd = require("highdicom", extra="pacs", feature=DICOM_RESULTS)

logger = logging.getLogger(__name__)

REVIEWED_SR_SERIES_NUMBER = 9902
REVIEWED_SR_SERIES_DESCRIPTION = "medassist reviewed report (research use, not for diagnosis)"
SOURCE_CONCEPT = "121112"  # DCM 121112 Source of Measurement: the TID 1501 source image items
LATIN_1 = "ISO_IR 100"
UTF_8 = "ISO_IR 192"
# the VRs whose values are encoded with SpecificCharacterSet (PS3.5 6.1.2.3); the others are ASCII
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
# control characters a DICOM text (UT) may not hold: all but CR, LF and FF (ESC only for ISO 2022)
_UNSAFE_CONTROL = re.compile(r"[\x00-\x09\x0b\x0e-\x1f\x7f-\x9f]")


class ReviewDecision(str, Enum):
    """A review app decision and its coded value in the reviewed SR."""

    ACCEPT = "accept"
    REJECT = "reject"
    CORRECT = "correct"

    @property
    def code(self) -> hd.sr.CodedConcept:
        return {ReviewDecision.ACCEPT: mcodes.REVIEW_ACCEPTED, ReviewDecision.REJECT: mcodes.REVIEW_REJECTED,
                ReviewDecision.CORRECT: mcodes.REVIEW_CORRECTED}[self]


def is_ai_sr(ds: Dataset) -> bool:
    """Whether ``ds`` is a triage AI SR (``sr.build_study_sr``), not a reviewed one or another SR."""
    return (str(ds.get("SOPClassUID", "")) == Comprehensive3DSRStorage and ds.get("Manufacturer") == MANUFACTURER
            and ds.get("SeriesNumber") == SR_SERIES_NUMBER and ds.get("VerificationFlag") == "UNVERIFIED")


def decision_tracking_uid(decision: Decision) -> str:
    """The tracking UID the AI SR gave the decided finding."""
    return tracking_uid(decision.series_uid, decision.model, decision.model_version)


def reviewer_person_name(reviewer: str) -> str:
    """A review app account name as a PN (family name only: ``name^``); MedassistError for anything
    else, e.g. the single-user mode's "(unauthenticated, loopback)"."""
    if not NAME_RE.fullmatch(reviewer or ""):
        raise MedassistError("the decision was not made by a signed-in reviewer account; a verified SR needs one")
    return f"{reviewer}^"


def settled_finding(decision: Decision) -> tuple[hd.sr.CodedConcept, bool]:
    """The finding concept as the reviewer settled it and whether it is present."""
    present = final_call(decision.decision, bool(decision.model_flagged), decision.corrected_finding)
    if present is None:
        raise MedassistError(f"decision {decision.id}: unknown decision {decision.decision!r}")
    label = decision.final_finding if present else decision.finding  # a negative correction: the finding is absent
    return mcodes.finding_code(label), bool(present)


def build_reviewed_sr(*, ai_sr: Dataset, decision: Decision, verifying_organization: str) -> hd.sr.Comprehensive3DSR:
    """The reviewed SR for one decided finding of ``ai_sr`` (see the module docstring).

    Raises MedassistError when the decision is not of this SR's study, the SR has no group for the
    finding, the reviewer is not a named account, or a corrected location's slice is not in the series.
    """
    if not verifying_organization or not verifying_organization.strip():
        raise MedassistError("a verified SR needs the verifying organization")
    if str(ai_sr.StudyInstanceUID) != decision.study_uid:
        raise MedassistError(f"decision {decision.id} is about another study than this AI SR")
    person = reviewer_person_name(decision.reviewer)
    review = ReviewDecision(decision.decision)
    uid = decision_tracking_uid(decision)
    ai = hd.sr.Comprehensive3DSR.from_dataset(ai_sr)
    groups = ai.content.get_image_measurement_groups(tracking_uid=uid)
    if not groups:
        raise MedassistError(f"the AI SR has no measurement group for decision {decision.id} "
                             f"({decision.model} {decision.finding})")
    ai_group = groups[0]
    sources = _source_references(ai_group)
    finding, present = settled_finding(decision)
    algorithm = hd.sr.AlgorithmIdentification(name=decision.model, version=decision.model_version or "unknown")

    measurements = [hd.sr.Measurement(name=m.name, value=float(m.value), unit=m.unit, algorithm_id=algorithm)
                    for m in ai_group.get_measurements()]
    tracking = hd.sr.TrackingIdentifier(uid=uid, identifier=f"{decision.model} {decision.finding} reviewed"[:64])
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding,
        finding_category=mcodes.FINDING_CATEGORY,
        measurements=measurements or None,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=finding, value=mcodes.PRESENT if present else mcodes.ABSENT),
            hd.sr.QualitativeEvaluation(name=mcodes.REVIEW_DECISION, value=review.code),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup(referenced_sop_class_uid=c, referenced_sop_instance_uid=i)
                       for c, i in sources],
    )
    imaging = [group]
    if review is ReviewDecision.ACCEPT and present:
        imaging.extend(ai.content.get_planar_roi_measurement_groups(tracking_uid=uid))
    location = decision.location_dict
    if review is ReviewDecision.CORRECT and present and location is not None:
        imaging.append(_reviewer_point(location, sources, finding, uid, decision))
    comment = review_comment(decision)
    if comment is not None:  # TID 1501 allows TEXT qualitative evaluations; highdicom's class only CODE
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=mcodes.REVIEW_COMMENT, value=comment, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))

    observers = hd.sr.ObservationContext(
        observer_person_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=person, organization_name=verifying_organization.strip()[:64]),
        ),
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=DEVICE_UID, name="medassist", manufacturer_name="medassist contributors",
                model_name=f"{decision.model} {decision.model_version}"[:64]),
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=observers,
        procedure_reported=[_procedure(ai_sr)],
        imaging_measurements=imaging,
        title=codes.DCM.ImagingMeasurementReport,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=_evidence(ai_sr, {i for _, i in sources}),
        content=report,
        series_instance_uid=derived_uid("reviewed-sr-series", decision.study_uid),
        series_number=REVIEWED_SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid("reviewed-sr", str(ai_sr.SOPInstanceUID), decision.id, decision.row_hash),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=True,
        verifying_observer_name=person,
        verifying_organization=verifying_organization.strip()[:64],
        previous_versions=[ai_sr],
        series_description=REVIEWED_SR_SERIES_DESCRIPTION,
    )
    sr.VerifyingObserverSequence[0].VerificationDateTime = dicom_datetime(decision.decided_at)
    sr.SoftwareVersions = software_version()
    sr.ManufacturerModelName = "medassist"
    sr.SpecificCharacterSet = character_set(_texts(sr))
    return sr


def review_comment(decision: Decision) -> str | None:
    """The decision's comment as the SR's TEXT value (control characters other than CR, LF and FF as
    spaces, ends stripped), or None when it has none."""
    text = _UNSAFE_CONTROL.sub(" ", decision.comment or "").strip()
    return text or None


def character_set(texts: Iterable[str]) -> str:
    """The SpecificCharacterSet for an SR holding ``texts``: ISO_IR 100 (Latin-1) when all of them
    fit it, else ISO_IR 192 (UTF-8)."""
    for text in texts:
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            return UTF_8
    return LATIN_1


def _texts(ds: Dataset) -> Iterator[str]:
    """Every value of ``ds`` (nested sequences too) that the character set applies to."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _texts(item)
        elif elem.VR in _CHARSET_VRS and elem.value is not None:
            values = elem.value if elem.VM > 1 else [elem.value]
            yield from (str(v) for v in values)


def dicom_datetime(iso_utc: str) -> str:
    """An ISO-8601 time (``decided_at``) as a DICOM DT in UTC, e.g. ``20240501093012.345678+0000``."""
    parsed = datetime.fromisoformat(iso_utc.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S.%f+0000")


def _source_references(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> list[tuple[str, str]]:
    """(SOP class, SOP instance) of a TID 1501 group's source images, in the series' slice order."""
    out = []
    for item in group[0].ContentSequence:
        if item.ValueType == "IMAGE" and item.ConceptNameCodeSequence[0].CodeValue == SOURCE_CONCEPT:
            ref = item.ReferencedSOPSequence[0]
            out.append((str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID)))
    if not out:
        raise MedassistError("the AI SR's measurement group lists no source images")
    return out


def _procedure(ai_sr: Dataset) -> hd.sr.CodedConcept:
    """The AI SR's Procedure reported (TID 1500 row 4), else the generic imaging procedure."""
    for item in ai_sr.ContentSequence:
        if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == "121058":
            return hd.sr.CodedConcept.from_dataset(item.ConceptCodeSequence[0])
    return mcodes.IMAGING_PROCEDURE


def _reviewer_point(location: dict[str, int], sources: list[tuple[str, str]], finding: hd.sr.CodedConcept,
                    uid: str, decision: Decision) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The reviewer's corrected location as a TID 1410 POINT on its source image (no algorithm)."""
    loc = FindingLocation(slice_index=location["slice"], peak_rc=(location["row"], location["col"]), region_polygon=())
    frames = None
    if len(sources) == 1:
        sop_class, sop_instance = sources[0]
        frames = [loc.slice_index + 1] if loc.slice_index > 0 else None
    elif loc.slice_index < len(sources):
        sop_class, sop_instance = sources[loc.slice_index]
    else:
        raise MedassistError(f"decision {decision.id}: corrected location on slice {loc.slice_index}, "
                             f"but the series has {len(sources)} slices")
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.asarray([loc.peak_point], dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion(referenced_sop_class_uid=sop_class,
                                                referenced_sop_instance_uid=sop_instance,
                                                referenced_frame_numbers=frames),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=f"{decision.model} {decision.finding} "
                                                                          "reviewer location"[:64]),
        referenced_region=region,
        finding_type=finding,
        finding_category=mcodes.FINDING_CATEGORY,
        geometric_purpose=codes.DCM.RepresentativePoint,
    )


def _evidence(ai_sr: Dataset, referenced: set[str]) -> list[Dataset]:
    """Headers of the referenced source instances, from the AI SR's evidence list; the first carries
    the AI SR's patient and study attributes, which highdicom copies into the new SR."""
    headers = []
    for series in ai_sr.get("CurrentRequestedProcedureEvidenceSequence") or []:
        for series_item in series.ReferencedSeriesSequence:
            for ref in series_item.ReferencedSOPSequence:
                if str(ref.ReferencedSOPInstanceUID) not in referenced:
                    continue
                header = Dataset()
                header.StudyInstanceUID = series.StudyInstanceUID
                header.SeriesInstanceUID = series_item.SeriesInstanceUID
                header.SOPClassUID = ref.ReferencedSOPClassUID
                header.SOPInstanceUID = ref.ReferencedSOPInstanceUID
                headers.append(header)
    if {str(h.SOPInstanceUID) for h in headers} != referenced:
        raise MedassistError("the AI SR's evidence list does not hold every source image of the finding")
    first = headers[0]
    for elem in ai_sr:
        if elem.tag.group == 0x0010 or elem.keyword in _STUDY_KEYWORDS:
            first[elem.tag] = copy.deepcopy(elem)
    return headers


_STUDY_KEYWORDS = frozenset({"SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
                             "StudyDescription", "StudyID", "IssuerOfAccessionNumberSequence"})


@dataclass
class ReviewedSRs:
    """What ``write_reviewed_srs`` wrote, what it left out (counts) and what it could not do."""

    written: list[Path] = field(default_factory=list)
    undecided: int = 0  # findings of the worklist nobody decided yet
    not_signed_in: int = 0  # decisions of the single-user mode: no named reviewer to verify them
    problems: list[str] = field(default_factory=list)


def write_reviewed_srs(
    run_dir: str | os.PathLike[str],
    db: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    verifying_organization: str,
    key_file: str | os.PathLike[str] | None = None,
    anchor_file: str | os.PathLike[str] | None = None,
    signer: Signer | None = None,
) -> ReviewedSRs:
    """A reviewed SR per current decision of ``db`` (verified first), from the run's AI SRs
    (``run_dir/dicom/<study>/SR_*.dcm``); see the module docstring. With ``signer`` each is digitally
    signed before it is written.

    A decision with no AI SR holding its finding, or one that cannot be built, is a problem (named
    by file and decision id); the others are written. MedassistError when the worklist, the
    decisions database or an AI SR file cannot be read, or the log fails verification.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    db_path = Path(db)
    if db_path.is_dir():
        db_path = default_db_path(db_path)
    if not db_path.is_file():
        raise MedassistError(f"{db_path}: no decisions database there")
    findings = [row for row in read_worklist(run_dir) if row.is_finding]
    store = open_store(db_path, key_file=key_file, anchor_file=anchor_file)  # refuses a log that fails verification
    current = store.current_decisions()
    report = ReviewedSRs(undecided=sum(1 for row in findings if row.key not in current))
    ai_srs = _ai_srs(run_dir / "dicom")
    for decision in current.values():
        if not NAME_RE.fullmatch(decision.reviewer or ""):
            report.not_signed_in += 1
            continue
        found = ai_srs.get((decision.study_uid, decision_tracking_uid(decision)))
        if found is None:
            report.problems.append(f"{run_dir / 'dicom'}: no AI SR holds the finding of decision {decision.id} "
                                   "(medassist triage --send writes them)")
            continue
        path, ai_sr = found
        try:
            sr = build_reviewed_sr(ai_sr=ai_sr, decision=decision, verifying_organization=verifying_organization)
            if signer is not None:
                signer.sign(sr)  # last: any later change would break the signature
        except (MedassistError, ValueError) as exc:
            report.problems.append(f"{path}: no reviewed SR for decision {decision.id}: {exc}")
            continue
        target = out_dir / _safe_name(decision.study_uid) / f"SR_{sr.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        report.written.append(write_atomic(target, dicom_bytes(sr)))
    logger.info("reviewed SRs: %d written, %d undecided, %d not by a signed-in reviewer, %d problem(s)",
                len(report.written), report.undecided, report.not_signed_in, len(report.problems))
    return report


def _ai_srs(folder: Path) -> dict[tuple[str, str], tuple[Path, Dataset]]:
    """The AI SRs under ``folder`` by (StudyInstanceUID, finding tracking UID); where several hold
    a finding (results written again with another map), the latest by content date and time."""
    found: dict[tuple[str, str], tuple[Path, Dataset]] = {}
    for path in sorted(folder.glob("*/SR_*.dcm")):
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise MedassistError(f"{path}: not a readable DICOM file ({exc})") from exc
        if not is_ai_sr(ds):
            continue
        for group in hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_image_measurement_groups():
            key = (str(ds.StudyInstanceUID), str(group.tracking_uid))
            if key not in found or _content_time(ds) >= _content_time(found[key][1]):
                found[key] = (path, ds)
    return found


def _content_time(ds: Dataset) -> str:
    return f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"
