"""Turn a triage run's worklist into DICOM results: one SR per study, one saliency object per finding.

``write_dicom_results(results_dir)`` reads ``results_dir/worklist.json`` (or ``.csv``), finds each
row's source images again through the ingest stage (so slice order matches the saliency map's),
and writes under ``results_dir/dicom/<StudyInstanceUID>/``:

* ``SR_<uid>.dcm``: a Comprehensive 3D SR, TID 1500 measurement report (``sr.build_study_sr``);
* ``SC_<uid>.dcm``: a secondary-capture overlay of the saliency map on the image
  (``sc.build_saliency_sc``, the default) and/or ``SEG_<uid>.dcm``: the map as a FRACTIONAL
  segmentation on the source grid (``seg.build_saliency_seg``).

UIDs are derived from the results themselves, so writing the same results twice gives the same
instances (sending them again to a PACS does not duplicate them).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medassist.datamodel import IngestProblem, Series, WORKLIST_COLUMNS
from medassist.errors import MedassistError

logger = logging.getLogger(__name__)

SALIENCY_KINDS = ("sc", "seg")


@dataclass
class ResultRow:
    """One worklist row, typed (see ``WORKLIST_COLUMNS``)."""

    study_uid: str
    series_uid: str
    patient_id: str = ""
    accession: str = ""
    modality: str = ""
    body_part: str = ""
    model: str = ""
    model_version: str = ""
    finding: str = ""
    score: float | None = None
    threshold: float | None = None
    flagged: bool | None = None
    slices: tuple[int, ...] = ()
    saliency_path: str = ""
    source_path: str = ""
    error: str = ""

    @property
    def has_finding(self) -> bool:
        """A model ran and produced a score (no error, not 'no model applies')."""
        return bool(self.model) and self.score is not None and not self.error

    @classmethod
    def from_record(cls, record: dict, base: Path | None = None) -> "ResultRow":
        """From a worklist record (JSON or CSV strings); relative paths resolved against ``base``."""

        def num(value):
            if value is None or value == "":
                return None
            return float(value)

        def flag(value):
            if value is None or value == "":
                return None
            if isinstance(value, bool):
                return value
            return str(value).strip().lower() in ("1", "true", "yes", "y")

        def path(value):
            value = str(value or "")
            if value and base is not None and not os.path.isabs(value):
                return str(base / value)
            return value

        raw_slices = record.get("slices") or ""
        if isinstance(raw_slices, (list, tuple)):
            slices = tuple(int(s) for s in raw_slices)
        else:
            slices = tuple(int(s) for s in str(raw_slices).replace(",", " ").split())
        return cls(
            study_uid=str(record.get("study_uid") or ""),
            series_uid=str(record.get("series_uid") or ""),
            patient_id=str(record.get("patient_id") or ""),
            accession=str(record.get("accession") or ""),
            modality=str(record.get("modality") or ""),
            body_part=str(record.get("body_part") or ""),
            model=str(record.get("model") or ""),
            model_version=str(record.get("model_version") or ""),
            finding=str(record.get("finding") or ""),
            score=num(record.get("score")),
            threshold=num(record.get("threshold")),
            flagged=flag(record.get("flagged")),
            slices=slices,
            saliency_path=path(record.get("saliency_path")),
            source_path=str(record.get("source_path") or ""),
            error=str(record.get("error") or ""),
        )


def read_worklist(results_dir: str | Path) -> list[ResultRow]:
    """The rows of a triage run's worklist (``worklist.json`` preferred, else ``worklist.csv``)."""
    results_dir = Path(results_dir)
    json_path, csv_path = results_dir / "worklist.json", results_dir / "worklist.csv"
    try:
        if json_path.is_file():
            raw = json.loads(json_path.read_text())
            if isinstance(raw, dict):
                raw = raw.get("rows") or raw.get("worklist") or raw.get("records") or []
            return [ResultRow.from_record(r, results_dir) for r in raw]
        if csv_path.is_file():
            with csv_path.open(newline="") as fh:
                return [ResultRow.from_record(r, results_dir) for r in csv.DictReader(fh)]
    except (OSError, ValueError, TypeError) as exc:
        raise MedassistError(f"{results_dir}: unreadable worklist ({exc})") from exc
    raise MedassistError(f"{results_dir}: no worklist.json or worklist.csv (run 'medassist triage' first)")


def write_worklist_csv(rows: Iterable[dict], path: str | Path) -> None:
    """Write worklist records as CSV with the contract's columns, atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(WORKLIST_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in WORKLIST_COLUMNS})
    os.replace(tmp, path)


class SourceIndex:
    """Finds a worklist row's source series again (cached per source path) via the ingest stage."""

    def __init__(self) -> None:
        self._series: dict[str, list[Series]] = {}
        self._headers: dict[str, list[Dataset]] = {}

    def series(self, row: ResultRow) -> Series:
        """The Series a row came from; MedassistError if it is gone or no longer matches."""
        from medassist.ingest import discover_series

        if row.source_path not in self._series:
            found, _ = discover_series([row.source_path])
            self._series[row.source_path] = found
        for s in self._series[row.source_path]:
            if s.series_uid == row.series_uid:
                return s
        raise MedassistError(f"{row.source_path}: the worklist's series is no longer there (moved or deleted?)")

    def headers(self, row: ResultRow) -> list[Dataset]:
        """The series' instances (headers only), in the ingest stage's slice order."""
        if row.series_uid not in self._headers:
            series = self.series(row)
            self._headers[row.series_uid] = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.paths]
        return self._headers[row.series_uid]


@dataclass
class DicomResults:
    """What ``write_dicom_results`` wrote (by kind) and what it could not do."""

    sr: list[Path] = field(default_factory=list)
    sc: list[Path] = field(default_factory=list)
    seg: list[Path] = field(default_factory=list)
    problems: list[IngestProblem] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [*self.sr, *self.sc, *self.seg]


def write_dicom_results(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    saliency_as: Sequence[str] = ("sc",),
    rows: Sequence[ResultRow] | None = None,
) -> DicomResults:
    """Write an SR per study and a saliency SC and/or SEG per finding; see the module docstring.

    ``saliency_as``: any of "sc" (viewable overlay, default) and "seg" (FRACTIONAL map).
    Studies whose sources cannot be read again are reported in ``problems``; the rest are written.
    """
    from medassist.dicom_out.sc import build_saliency_sc
    from medassist.dicom_out.seg import build_saliency_seg
    from medassist.dicom_out.sr import build_study_sr

    unknown = set(saliency_as) - set(SALIENCY_KINDS)
    if unknown:
        raise MedassistError(f"unknown saliency output {sorted(unknown)}; choose from {SALIENCY_KINDS}")
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "dicom"
    rows = list(rows) if rows is not None else read_worklist(results_dir)
    findings = [r for r in rows if r.has_finding and r.study_uid and r.series_uid]
    index = SourceIndex()
    report = DicomResults()
    by_study: dict[str, list[ResultRow]] = {}
    for row in findings:
        by_study.setdefault(row.study_uid, []).append(row)

    for study_uid, study_rows in by_study.items():
        folder = out_dir / _safe_name(study_uid)
        try:
            sources = {r.series_uid: index.headers(r) for r in study_rows}
            sr = build_study_sr(study_rows, sources)
            report.sr.append(_save(sr, folder / f"SR_{sr.SOPInstanceUID}.dcm"))
        except Exception as exc:
            report.problems.append(IngestProblem(study_rows[0].source_path, f"no SR for this study: {exc}"))
            logger.warning("%s", report.problems[-1])
            continue
        for number, row in enumerate(study_rows, start=1):
            if not row.saliency_path:
                continue
            try:
                saliency = load_saliency(row.saliency_path)
                if "sc" in saliency_as:
                    for ds in build_saliency_sc(row, index, saliency, instance_offset=number * 1000):
                        report.sc.append(_save(ds, folder / f"SC_{ds.SOPInstanceUID}.dcm"))
                if "seg" in saliency_as:
                    seg = build_saliency_seg(row, sources[row.series_uid], saliency)
                    report.seg.append(_save(seg, folder / f"SEG_{seg.SOPInstanceUID}.dcm"))
            except Exception as exc:
                report.problems.append(IngestProblem(row.saliency_path, f"no saliency object: {exc}"))
                logger.warning("%s", report.problems[-1])
    logger.info("dicom results: %d SR, %d SC, %d SEG in %s", len(report.sr), len(report.sc), len(report.seg), out_dir)
    return report


def load_saliency(path: str | Path) -> np.ndarray:
    """A saliency map as float32 (slices, rows, columns), normalised to 0..1.

    Non-negative maps are divided by their maximum; maps with negative values are min-max scaled.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MedassistError(f"{path}: unreadable saliency map ({exc})") from exc
    arr = np.nan_to_num(np.asarray(arr, dtype=np.float32))
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise MedassistError(f"{path}: saliency map has shape {arr.shape}; expected (rows, cols) or (slices, rows, cols)")
    return normalise_map(arr)


def normalise_map(arr: np.ndarray) -> np.ndarray:
    """Scale a map to 0..1 (see ``load_saliency``); an all-zero map stays zero."""
    arr = np.asarray(arr, dtype=np.float32)
    lo = float(arr.min()) if arr.size else 0.0
    if lo < 0:
        arr = arr - lo
    hi = float(arr.max()) if arr.size else 0.0
    return (arr / hi if hi > 0 else np.zeros_like(arr)).astype(np.float32)


def check_map_shape(saliency: np.ndarray, headers: Sequence[Dataset], what: str) -> None:
    """The map must lie on the source grid: (instances or frames, Rows, Columns)."""
    first = headers[0]
    frames = int(first.get("NumberOfFrames", 1) or 1) if len(headers) == 1 else len(headers)
    expected = (frames, int(first.Rows), int(first.Columns))
    if tuple(saliency.shape) != expected:
        raise MedassistError(f"{what}: saliency map shape {tuple(saliency.shape)} does not match the source grid {expected}")


def _safe_name(uid: str) -> str:
    return "".join(c for c in uid if c.isdigit() or c == ".")[:64] or "unknown"


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path
