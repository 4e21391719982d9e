"""The shared nouns that travel between stages: Image, Series, Finding, WorklistRow.

Stages depend on these and not on each other's internals. ``read_worklist`` is the one reader of
a triage worklist (review app, DICOM results and PACS send all use it).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medassist.errors import MedassistError
from medassist.sanitize import csv_unsafe


@dataclass(frozen=True)
class Geometry:
    """Where the pixels sit in patient space (DICOM LPS, millimetres).

    ``spacing`` is (slice, row, column) spacing; for a single 2D image the slice spacing is 1.0.
    ``orientation`` is the six direction cosines (row then column direction), when known.
    ``positions`` is the patient-space position of each slice's first pixel, in stored order.
    ``affine`` maps (slice, row, column) voxel indices to patient LPS millimetres, when known.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: tuple[float, ...] | None = None
    positions: tuple[tuple[float, float, float], ...] | None = None
    affine: np.ndarray | None = None


@dataclass
class Image:
    """Decoded pixels of one series, always shaped (slices, rows, columns).

    ``pixels``: float32 values after the Modality LUT (rescale slope/intercept), i.e. stored
    values mapped to physical units; never windowed.
    ``display``: float32 in 0..1 after the VOI LUT or window (the file's default window when it has
    one, else the 0.5-99.5 percentile range) with MONOCHROME1 inverted, so bright means dense.
    ``window``: the file's default (center, width) when present.
    """

    pixels: np.ndarray
    display: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)
    window: tuple[float, float] | None = None
    photometric: str = "MONOCHROME2"


@dataclass
class Series:
    """One series found in the input: identifiers, where it came from, and a lazy pixel loader.

    Never holds pixels: ``load()`` decodes them on request.
    ``source_path`` names the file (single-file series, NIfTI) or the folder holding the series.
    ``paths`` lists the files, already ordered along the slice normal.
    ``sex``, ``age``, ``manufacturer`` and ``study_date`` are the DICOM header's text as read
    (PatientSex, PatientAge, Manufacturer, StudyDate); empty for other inputs.
    """

    study_uid: str
    series_uid: str
    patient_id: str = field(repr=False)
    accession: str = field(repr=False)
    modality: str
    body_part: str
    source_path: str
    paths: tuple[str, ...]
    loader: Callable[[], Image] = field(repr=False, compare=False)
    description: str = ""
    sex: str = ""
    age: str = ""
    manufacturer: str = ""
    study_date: str = ""
    n_instances: int = 1

    def load(self) -> Image:
        """Decode the pixels (may raise MedassistError naming the file and the reason)."""
        return self.loader()


@dataclass(frozen=True)
class IngestProblem:
    """A file that could not be read, with a specific reason. The run goes on without it.

    ``kind``: "error" (broken or unreadable), "unsupported" (readable, but of a kind no stage
    handles: a 4D NIfTI, say) or "duplicate" (the same instance as a file of ``series_uid``).
    """

    path: str
    reason: str
    kind: str = "error"
    series_uid: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Finding:
    """What one model said about one series."""

    model: str
    model_version: str
    finding: str
    score: float
    threshold: float
    flagged: bool
    slices: tuple[int, ...] = ()
    saliency_path: str = ""
    extra: dict = field(default_factory=dict)


WORKLIST_COLUMNS: tuple[str, ...] = (
    "study_uid",
    "series_uid",
    "patient_id",
    "accession",
    "modality",
    "body_part",
    "manufacturer",
    "sex",
    "age_band",
    "study_date",
    "model",
    "model_version",
    "finding",
    "score",
    "threshold",
    "flagged",
    "slices",
    "saliency_path",
    "source_path",
    "error",
)


WORKLIST_JSON = "worklist.json"
WORKLIST_CSV = "worklist.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("study_uid", "series_uid", "source_path")
_NO_MODEL_APPLIES = re.compile(r"\bno\b.*\bmodel\b.*\bappl", re.IGNORECASE)
NOT_APPLICABLE = "not applicable"  # the finding of a row no shipped model covers
AGE_BANDS: tuple[str, ...] = ("0-17", "18-39", "40-64", "65+")
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([DWMY]?)")
_PER_YEAR = {"": 1.0, "Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}
_DICOM_DATE = re.compile(r"\d{8}")


def age_band(age: str | float | int | None) -> str:
    """The coarse band (one of ``AGE_BANDS``) of a DICOM age string ('045Y', '006M', '010W',
    '003D') or a number of years; "" when the value is missing or malformed (never raises).

    The worklist carries this band only, never the age itself, so it is no more identifying."""
    if age is None:
        return ""
    match = _AGE.fullmatch(str(age).strip().upper())
    if not match:
        return ""
    years = float(match.group(1)) / _PER_YEAR[match.group(2)]
    if years < 18:
        return "0-17"
    if years < 40:
        return "18-39"
    if years < 65:
        return "40-64"
    return "65+"


def dicom_sex(value: str | None) -> str:
    """PatientSex as the worklist carries it: "M", "F" or "O", else ""."""
    text = (value or "").strip().upper()
    return text if text in ("M", "F", "O") else ""


def dicom_date(value: str | None) -> str:
    """A DICOM DA value (StudyDate) as YYYYMMDD when it is a real calendar date, else ""."""
    text = (value or "").strip()
    if not _DICOM_DATE.fullmatch(text):
        return ""
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return ""
    return text


class RowKind(str, Enum):
    """The three kinds of worklist row (``triage.worklist`` documents each)."""

    SCORED = "scored"
    NOT_APPLICABLE = "not_applicable"
    ERROR = "error"


def kind_of_row(*, finding: str | None, model: str | None, score: float | None, error: str | None) -> RowKind:
    """The one rule (``WorklistRow.kind``), for rows being written and rows read back: no model
    applies when the finding says so (or, in worklists written before that convention, the error
    says no model applies and no model is named); an error row when there is an error or no score."""
    if finding == NOT_APPLICABLE or (not model and _NO_MODEL_APPLIES.search(error or "")):
        return RowKind.NOT_APPLICABLE
    if error or score is None:
        return RowKind.ERROR
    return RowKind.SCORED


@dataclass(frozen=True)
class WorklistRow:
    """A series' identifiers plus one model's finding, or an error, or 'no model applies'.

    Frozen: readers (review, DICOM results) share rows; use ``dataclasses.replace`` to vary one.
    ``manufacturer``, ``sex`` (M/F/O), ``age_band`` (``age_band``, never the age) and
    ``study_date`` (YYYYMMDD) are empty when the input has none (NIfTI, worklists written before
    they were columns).
    """

    study_uid: str
    series_uid: str
    patient_id: str = ""
    accession: str = ""
    modality: str = ""
    body_part: str = ""
    manufacturer: str = ""
    sex: str = ""
    age_band: str = ""
    study_date: str = ""
    source_path: str = ""
    model: str = ""
    model_version: str = ""
    finding: str = ""
    score: float | None = None
    threshold: float | None = None
    flagged: bool | None = None
    slices: tuple[int, ...] = ()
    saliency_path: str = ""
    error: str = ""

    @classmethod
    def for_series(cls, series: Series, **kwargs) -> "WorklistRow":
        """A row carrying the series' identifiers; kwargs fill the finding or error columns."""
        return cls(
            study_uid=series.study_uid,
            series_uid=series.series_uid,
            patient_id=series.patient_id,
            accession=series.accession,
            modality=series.modality,
            body_part=series.body_part,
            manufacturer=series.manufacturer.strip(),
            sex=dicom_sex(series.sex),
            age_band=age_band(series.age),
            study_date=dicom_date(series.study_date),
            source_path=series.source_path,
            **kwargs,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, base: Path | None = None, where: str = "",
                    as_written: bool = False) -> "WorklistRow":
        """A row from a worklist record (JSON values or CSV strings), checked strictly.

        ``slices`` may be "3 6 2" or a list. Columns a worklist lacks (e.g. ``manufacturer``,
        ``sex``, ``age_band``, ``study_date`` in one written before they existed) read as empty.
        Relative ``saliency_path``/``source_path`` values are resolved against ``base`` (the
        worklist's folder) when they do not exist relative to the working directory. Bad values
        raise MedassistError naming ``where`` (file and row).

        Text is stripped and the modality upper-cased, unless ``as_written``: for a record this code
        wrote itself with ``as_record`` (the triage journal, a study's worklist.json), whose text is
        taken as it is, so that ``as_record`` gives the same record back.
        """
        where = where or "worklist record"
        missing = [name for name in REQUIRED_COLUMNS if name not in record]
        if missing:
            raise MedassistError(f"{where} lacks column(s) {', '.join(sorted(missing))}")
        text = {name: _text(record.get(name), strip=not as_written) for name in WORKLIST_COLUMNS}
        return cls(
            study_uid=text["study_uid"],
            series_uid=text["series_uid"],
            patient_id=text["patient_id"],
            accession=text["accession"],
            modality=text["modality"] if as_written else text["modality"].upper(),
            body_part=text["body_part"],
            manufacturer=text["manufacturer"],
            sex=text["sex"],
            age_band=text["age_band"],
            study_date=text["study_date"],
            source_path=_resolve(text["source_path"], base),
            model=text["model"],
            model_version=text["model_version"],
            finding=text["finding"],
            score=_float(record.get("score"), f"{where}: score"),
            threshold=_float(record.get("threshold"), f"{where}: threshold"),
            flagged=_bool(record.get("flagged"), f"{where}: flagged"),
            slices=_slices(record.get("slices"), f"{where}: slices"),
            saliency_path=_resolve(text["saliency_path"], base),
            error=text["error"],
        )

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(series_uid, model, model_version, finding): the review decisions' key."""
        return (self.series_uid, self.model, self.model_version, self.finding)

    @property
    def is_finding(self) -> bool:
        """A model scored this series (no error, not 'no model applies'): something to decide."""
        return bool(self.model and self.finding and self.score is not None and not self.error)

    @property
    def kind(self) -> RowKind:
        """Scored, not applicable or error (``kind_of_row``)."""
        return kind_of_row(finding=self.finding, model=self.model, score=self.score, error=self.error)

    @property
    def not_applicable(self) -> bool:
        """No model applies to this series (not a failure: the radiologist reads it as usual)."""
        return self.kind == RowKind.NOT_APPLICABLE

    @property
    def label(self) -> str:
        """Short description without patient identifiers, for lists and captions."""
        if not self.is_finding:
            return f"{self.modality or '?'} · {self.error or 'no model applies'}"
        mark = "FLAGGED" if self.flagged else "not flagged"
        return f"{self.finding} · {self.model} {self.model_version} · score {self.score:.3f} ({mark})"

    def as_record(self) -> dict:
        """The row as plain JSON-able values, keyed by WORKLIST_COLUMNS."""
        return {
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "patient_id": self.patient_id,
            "accession": self.accession,
            "modality": self.modality,
            "body_part": self.body_part,
            "manufacturer": self.manufacturer,
            "sex": self.sex,
            "age_band": self.age_band,
            "study_date": self.study_date,
            "model": self.model,
            "model_version": self.model_version,
            "finding": self.finding,
            "score": None if self.score is None else round(float(self.score), 6),
            "threshold": self.threshold,
            "flagged": self.flagged,
            "slices": " ".join(str(i) for i in self.slices),
            "saliency_path": self.saliency_path,
            "source_path": self.source_path,
            "error": self.error,
        }


def _text(value: Any, strip: bool = True) -> str:
    if value is None:
        return ""
    return str(value).strip() if strip else str(value)


def _float(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise MedassistError(f"{where} {value!r} is not a number") from exc
    return number if math.isfinite(number) else None


def _bool(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "none", "null"):
        return None
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise MedassistError(f"{where} {value!r} is not true or false")


def _slices(value: Any, where: str) -> tuple[int, ...]:
    if value is None or value == "":
        return ()
    items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
    try:
        return tuple(int(item) for item in items)
    except (TypeError, ValueError) as exc:
        raise MedassistError(f"{where} {value!r} are not slice numbers") from exc


def _resolve(value: str, base: Path | None) -> str:
    if not value or base is None or os.path.isabs(value) or os.path.exists(value):
        return value
    candidate = base / value
    return str(candidate) if candidate.exists() else value


def worklist_path(out_dir: str | os.PathLike[str]) -> Path:
    """``OUT/worklist.json`` when present, else ``OUT/worklist.csv`` (raises when neither)."""
    out = Path(out_dir)
    for name in (WORKLIST_JSON, WORKLIST_CSV):
        if (out / name).is_file():
            return out / name
    raise MedassistError(f"{out}: no {WORKLIST_JSON} or {WORKLIST_CSV} there (run 'medassist triage' first)")


def read_worklist(path: str | os.PathLike[str]) -> list[WorklistRow]:
    """The rows of a worklist: a triage output folder (its worklist.json, else worklist.csv) or a
    worklist .json / .csv file. Relative paths are resolved as ``WorklistRow.from_record`` says."""
    target = Path(path)
    if target.is_dir() or target.suffix.lower() not in (".json", ".csv"):
        target = worklist_path(target)
    records = _read_records(target)
    return [
        WorklistRow.from_record(record, base=target.parent, where=f"{target}: row {number}")
        for number, record in enumerate(records, start=1)
    ]


def _read_records(target: Path) -> list[dict]:
    """The raw records of a worklist file (JSON list of objects, or CSV with a header)."""
    try:
        if target.suffix.lower() == ".json":
            records = json.loads(target.read_text(encoding="utf-8"))
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise MedassistError(f"{target}: expected a JSON list of row objects")
            return records
        with target.open(newline="", encoding="utf-8") as handle:  # cells as before csv_safe
            return [{k: csv_unsafe(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    except OSError as exc:
        raise MedassistError(f"{target}: cannot read the worklist: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        raise MedassistError(f"{target}: not a readable worklist: {exc}") from exc
