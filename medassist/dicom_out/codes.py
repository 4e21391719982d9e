"""Coded concepts the DICOM results use: findings, procedures, and medassist's own concepts.

Findings the models name are mapped to SNOMED CT where a concept fits; any other finding label
gets a code in the private coding scheme ``99MEDASSIST`` (DICOM reserves "99" prefixes for local
schemes), as do the model score and decision threshold, which no standard concept describes
exactly (the score is a model output, not a calibrated probability).
"""

from __future__ import annotations

import re

from medassist.dicom_out.results import DICOM_RESULTS
from medassist.optional import require

CodedConcept = require("highdicom.sr", extra="pacs", feature=DICOM_RESULTS).CodedConcept

LOCAL_SCHEME = "99MEDASSIST"

FINDING_CODES: dict[str, CodedConcept] = {
    "fracture": CodedConcept("125605004", "SCT", "Fracture of bone"),
    "pneumothorax": CodedConcept("36118008", "SCT", "Pneumothorax"),
    "pneumonia": CodedConcept("233604007", "SCT", "Pneumonia"),
    "pleural_effusion": CodedConcept("60046008", "SCT", "Pleural effusion"),
    "nodule": CodedConcept("27925004", "SCT", "Nodule"),
    "mass": CodedConcept("4147007", "SCT", "Mass"),
}

MODEL_SCORE = CodedConcept("MA-SCORE", LOCAL_SCHEME, "Model output score")
DECISION_THRESHOLD = CodedConcept("MA-THRESHOLD", LOCAL_SCHEME, "Decision threshold")
# audit.confidence: the share of validation cases in the finding's score bin that had the finding,
# with its 95% Wilson interval (how sure the model is, at the validation set's prevalence)
VALIDATION_RATE = CodedConcept("MA-VALRATE", LOCAL_SCHEME, "Validation positive rate at this score")
VALIDATION_RATE_LOW = CodedConcept("MA-VALRATE-LO", LOCAL_SCHEME, "Validation positive rate lower 95% bound")
VALIDATION_RATE_HIGH = CodedConcept("MA-VALRATE-HI", LOCAL_SCHEME, "Validation positive rate upper 95% bound")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("272519000", "SCT", "Absent")
FINDING_CATEGORY = CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
# the reviewed SR (reviewed_sr.py): what the radiologist decided in medassist's review app
REVIEW_DECISION = CodedConcept("MA-REVIEW", LOCAL_SCHEME, "Reviewer decision on the AI finding")
REVIEW_ACCEPTED = CodedConcept("MA-ACCEPTED", LOCAL_SCHEME, "AI finding accepted by the reviewer")
REVIEW_REJECTED = CodedConcept("MA-REJECTED", LOCAL_SCHEME, "AI finding rejected by the reviewer")
REVIEW_CORRECTED = CodedConcept("MA-CORRECTED", LOCAL_SCHEME, "AI finding corrected by the reviewer")
REVIEW_COMMENT = CodedConcept("121106", "DCM", "Comment")  # the reviewer's free text, a TEXT item

_PROCEDURES = {
    "DX": CodedConcept("168537006", "SCT", "Plain radiography"),
    "CR": CodedConcept("168537006", "SCT", "Plain radiography"),
    "RG": CodedConcept("168537006", "SCT", "Plain radiography"),
    "CT": CodedConcept("77477000", "SCT", "Computerized axial tomography"),
    "MR": CodedConcept("113091000", "SCT", "Magnetic resonance imaging"),
    "US": CodedConcept("16310003", "SCT", "Ultrasonography"),
}
IMAGING_PROCEDURE = CodedConcept("363679005", "SCT", "Imaging procedure")


def finding_code(label: str) -> CodedConcept:
    """The concept for a model's finding label (SNOMED CT when known, else 99MEDASSIST)."""
    key = re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")
    if key in FINDING_CODES:
        return FINDING_CODES[key]
    value = (key or "unknown")[:16]  # SH: a code value of at most 16 characters
    return CodedConcept(value, LOCAL_SCHEME, label.strip() or "unknown finding")


def procedure_code(modality: str) -> CodedConcept:
    """The imaging procedure the report is about, from the modality."""
    return _PROCEDURES.get(modality.upper(), IMAGING_PROCEDURE)
