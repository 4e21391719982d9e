"""One study's findings as a DICOM Comprehensive 3D SR holding a TID 1500 Measurement Report.

Per worklist row (one model on one series) the report has one measurement group (TID 1501):

* finding type: the finding's concept (``codes.finding_code``, e.g. SCT 125605004 Fracture of bone);
* algorithm identification (TID 4019): model name and version;
* measurements: the model score and the decision threshold (99MEDASSIST codes, no units);
* qualitative evaluation: the finding concept = Present (flagged) or Absent (not flagged);
* source images: every instance of the series the model saw (SOP Class and Instance UIDs).

Where the finding is flagged and its saliency map can be read on the source grid, the location
follows (``location.plane_locations``), each a TID 1410 planar ROI group with the same tracking UID
(the same finding), finding type and algorithm, its Image Region an SCOORD on one source instance:

* a single image (radiograph): the map's peak as a POINT (purpose: DCM 128140 Representative
  point) and the box around the half-peak region holding it as a closed POLYLINE (purpose: SCT
  75958009 Bounded by);
* a volume: each flagged slice referenced one by one, with its peak as a POINT on that slice's
  instance (frame numbers for a multi-frame instance). A slice whose map is empty has no group.

No map (not flagged, saliency not computed, file missing, unreadable or off the source grid): no
location groups, the rest of the report as before.

The SR goes into the source study (same StudyInstanceUID; patient and study modules copied by
highdicom from the evidence) as a new series, lists the source instances as evidence, and names
medassist as the observing device. It is never marked verified: a person has not checked it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medassist.dicom_out import codes as mcodes
from medassist.dicom_out.location import FindingLocation, plane_locations
from medassist.dicom_out.results import DICOM_RESULTS, load_saliency, with_type2_attributes
from medassist.errors import MedassistError
from medassist.optional import require
from medassist.review.logic import finding_confidence

hd = require("highdicom", extra="pacs", feature=DICOM_RESULTS)

MANUFACTURER = "medassist"
SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "medassist AI triage report (research use, not for diagnosis)"
DEVICE_UID = generate_uid(prefix="2.25.", entropy_srcs=["medassist", "device"])

logger = logging.getLogger(__name__)


def software_version() -> str:
    """medassist's version for Software Versions / the device observer."""
    try:
        from importlib.metadata import version

        return version("medassist")
    except Exception:  # not installed as a distribution
        return "0"


def derived_uid(*parts: object) -> str:
    """A UID fixed by its inputs: writing the same results twice gives the same instances."""
    return generate_uid(prefix="2.25.", entropy_srcs=[json.dumps(p, sort_keys=True, default=str) for p in parts])


def tracking_uid(series_uid: str, model: str, model_version: str) -> str:
    """The tracking UID of a finding (one model on one series): the same in every SR about it."""
    return derived_uid("tracking", series_uid, model, model_version)


def _row_key(row) -> dict:
    return {k: getattr(row, k) for k in ("series_uid", "model", "model_version", "finding", "score", "threshold", "flagged")}


def build_study_sr(rows: Sequence, sources: Mapping[str, Sequence[Dataset]]) -> hd.sr.Comprehensive3DSR:
    """The SR for one study.

    ``rows``: ``datamodel.WorklistRow`` objects (or anything with the same attributes) of one study,
    each with a score. ``sources``: per SeriesInstanceUID, the series' instance headers.
    """
    if not rows:
        raise ValueError("no findings to report")
    study_uids = {r.study_uid for r in rows}
    if len(study_uids) != 1:
        raise ValueError(f"rows from {len(study_uids)} studies; one SR per study")
    study_uid = rows[0].study_uid
    groups = []
    located = []
    for row in rows:
        headers = sources[row.series_uid]
        locations = finding_locations(row, headers)
        groups.append(_measurement_group(row, headers))
        groups.extend(_location_groups(row, headers, locations))
        located.extend([row.series_uid, row.model, loc.slice_index, loc.peak_rc, loc.region_polygon] for loc in locations)

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=DEVICE_UID,
        name="medassist",
        manufacturer_name="medassist contributors",
        model_name=", ".join(sorted({f"{r.model} {r.model_version}" for r in rows}))[:64],
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    modality = next((r.modality for r in rows if r.modality), "")
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=mcodes.procedure_code(modality),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    evidence = [ds for row in rows for ds in sources[row.series_uid]]
    evidence = list({ds.SOPInstanceUID: ds for ds in evidence}.values())
    evidence[0] = with_type2_attributes(evidence[0])  # highdicom copies patient and study from the first
    key = [study_uid, sorted((_row_key(r) for r in rows), key=json.dumps)]
    if located:  # a different map is a different report (results without maps keep their UIDs)
        key.append(sorted(located, key=json.dumps))
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=derived_uid("sr-series", study_uid),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid("sr", key),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
    )
    sr.SoftwareVersions = software_version()
    sr.ManufacturerModelName = "medassist"
    return sr


def _measurement_group(row, headers: Sequence[Dataset]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm = hd.sr.AlgorithmIdentification(name=row.model, version=row.model_version or "unknown")
    finding = mcodes.finding_code(row.finding or row.model)
    measurements = [
        hd.sr.Measurement(name=mcodes.MODEL_SCORE, value=float(row.score), unit=mcodes.NO_UNITS, algorithm_id=algorithm)
    ]
    if row.threshold is not None:
        measurements.append(
            hd.sr.Measurement(
                name=mcodes.DECISION_THRESHOLD, value=float(row.threshold), unit=mcodes.NO_UNITS, algorithm_id=algorithm
            )
        )
    confidence = finding_confidence(row)
    if confidence is not None:
        for name, value in ((mcodes.VALIDATION_RATE, confidence.rate), (mcodes.VALIDATION_RATE_LOW, confidence.ci[0]),
                            (mcodes.VALIDATION_RATE_HIGH, confidence.ci[1])):
            measurements.append(
                hd.sr.Measurement(name=name, value=float(value), unit=mcodes.NO_UNITS, algorithm_id=algorithm))
    evaluations = []
    if row.flagged is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=finding, value=mcodes.PRESENT if row.flagged else mcodes.ABSENT))
    source_images = [
        hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=ds.SOPClassUID, referenced_sop_instance_uid=ds.SOPInstanceUID
        )
        for ds in headers
    ]
    tracking = hd.sr.TrackingIdentifier(
        uid=tracking_uid(row.series_uid, row.model, row.model_version),
        identifier=f"{row.model} {row.finding} series {row.series_uid}"[:64],
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding,
        finding_category=mcodes.FINDING_CATEGORY,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
        source_images=source_images,
    )


def _n_planes(headers: Sequence[Dataset]) -> int:
    """Image planes of a series: its instances, or the frames of a single multi-frame instance."""
    return int(headers[0].get("NumberOfFrames", 1) or 1) if len(headers) == 1 else len(headers)


def finding_locations(row, headers: Sequence[Dataset]) -> list[FindingLocation]:
    """Where a flagged row's saliency map puts the finding (``location.plane_locations``), or []
    when there is nothing to say: not flagged, no map, or a map that cannot be read or does not
    lie on the source grid (logged; the report is still made)."""
    if not row.flagged or not getattr(row, "saliency_path", "") or not headers:
        return []
    try:
        saliency = load_saliency(row.saliency_path)
        grid = (int(headers[0].Rows), int(headers[0].Columns))
        if tuple(saliency.shape[1:]) != grid:
            raise ValueError(f"saliency map {saliency.shape[1]} x {saliency.shape[2]} is not on the {grid[0]} x {grid[1]} source grid")
        return plane_locations(saliency, row.slices, _n_planes(headers))
    except (MedassistError, OSError, ValueError) as exc:
        logger.warning("%s: no location in the SR for %s %s: %s", row.saliency_path, row.model, row.finding, exc)
        return []


def _location_groups(row, headers: Sequence[Dataset], locations: Sequence[FindingLocation]) -> list:
    """TID 1410 planar ROI groups for a finding's locations (see the module docstring)."""
    if not locations:
        return []
    algorithm = hd.sr.AlgorithmIdentification(name=row.model, version=row.model_version or "unknown")
    finding = mcodes.finding_code(row.finding or row.model)
    finding_uid = tracking_uid(row.series_uid, row.model, row.model_version)
    single = _n_planes(headers) == 1
    multiframe = len(headers) == 1

    def group(loc: FindingLocation, graphic_type, data, purpose, what: str):
        ds = headers[0] if multiframe else headers[loc.slice_index]
        source = hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            referenced_frame_numbers=[loc.slice_index + 1] if multiframe and not single else None,
        )
        region = hd.sr.ImageRegion(graphic_type=graphic_type, graphic_data=np.asarray(data, dtype=np.float64),
                                   source_image=source)
        tracking = hd.sr.TrackingIdentifier(uid=finding_uid, identifier=f"{row.model} {row.finding} {what}"[:64])
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=region,
            finding_type=finding,
            finding_category=mcodes.FINDING_CATEGORY,
            algorithm_id=algorithm,
            geometric_purpose=purpose,
        )

    out = []
    for loc in locations:
        where = "" if single else f" slice {loc.slice_index}"
        out.append(group(loc, hd.sr.GraphicTypeValues.POINT, [loc.peak_point], codes.DCM.RepresentativePoint,
                         f"saliency peak{where}"))
        if single:
            out.append(group(loc, hd.sr.GraphicTypeValues.POLYLINE, loc.region_polygon, codes.SCT.BoundedBy,
                             "saliency region"))
    return out
