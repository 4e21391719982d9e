"""Turn a triage run's worklist into DICOM results: one SR per study, one saliency object per finding.

``write_dicom_results(results_dir)`` reads ``results_dir/worklist.json`` (or ``.csv``) with
``medassist.datamodel.read_worklist``, finds each row's source images again through the ingest
stage (so slice order matches the saliency map's), and writes under ``results_dir/dicom/<StudyInstanceUID>/``:

* ``SR_<uid>.dcm``: a Comprehensive 3D SR, TID 1500 measurement report (``sr.build_study_sr``);
* ``SC_<uid>.dcm``: a secondary-capture overlay of the saliency map on the image
  (``sc.build_saliency_sc``, the default) and/or ``SEG_<uid>.dcm``: the map as a FRACTIONAL
  segmentation on the source grid (``seg.build_saliency_seg``).

UIDs are derived from the results themselves, so writing the same results twice gives the same
instances (sending them again to a PACS does not duplicate them).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

from medassist.atomic import dicom_bytes, write_atomic
from medassist.datamodel import IngestProblem, Series, WorklistRow, read_worklist
from medassist.errors import MedassistError
from medassist.optional import require
from medassist.review.logic import expand_slice_maps

# What needs highdicom (the pacs extra): sr.py, sc.py, seg.py and codes.py import it through the gate.
DICOM_RESULTS = "DICOM results (SR, saliency SC and SEG)"

logger = logging.getLogger(__name__)

SALIENCY_KINDS = ("sc", "seg")
# Patient and General Study attributes of type 2 (present, possibly empty) that highdicom copies
# from a source image into every result; real exports often leave some of them out.
TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "ReferringPhysicianName", "StudyID", "AccessionNumber")


class SourceIndex:
    """Finds a worklist row's source series again (cached per source path) via the ingest stage."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], Series] = {}
        self._headers: dict[str, list[Dataset]] = {}

    def series(self, row: WorklistRow) -> Series:
        """The Series a row came from (``ingest.find_series``); MedassistError if it is gone."""
        from medassist.ingest import find_series

        key = (row.source_path, row.series_uid)
        if key not in self._series:
            self._series[key] = find_series(row.source_path, row.series_uid)
        return self._series[key]

    def headers(self, row: WorklistRow) -> list[Dataset]:
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
    rows: Sequence[WorklistRow] | None = None,
) -> DicomResults:
    """Write an SR per study and a saliency SC and/or SEG per finding; see the module docstring.

    ``saliency_as``: any of "sc" (viewable overlay, default) and "seg" (FRACTIONAL map).
    Studies whose sources cannot be read again are reported in ``problems``; the rest are written.
    Needs highdicom (pip install 'medassist[pacs]'): ``MissingDependency`` without it.
    """
    require("highdicom", extra="pacs", feature=DICOM_RESULTS)
    from medassist.dicom_out.sc import build_saliency_sc
    from medassist.dicom_out.seg import build_saliency_seg
    from medassist.dicom_out.sr import build_study_sr

    unknown = set(saliency_as) - set(SALIENCY_KINDS)
    if unknown:
        raise MedassistError(f"unknown saliency output {sorted(unknown)}; choose from {SALIENCY_KINDS}")
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "dicom"
    rows = list(rows) if rows is not None else read_worklist(results_dir)
    findings = [r for r in rows if r.is_finding and r.study_uid and r.series_uid]
    index = SourceIndex()
    report = DicomResults()
    by_study: dict[str, list[WorklistRow]] = {}
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
                # a volume's map holds its flagged slices only: laid out on every slice of the source
                saliency = expand_slice_maps(load_saliency(row.saliency_path), row.slices,
                                             source_planes(sources[row.series_uid]))
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


def source_planes(headers: Sequence[Dataset]) -> int:
    """The number of image planes of a series: its instances, or the frames of its one instance."""
    return int(headers[0].get("NumberOfFrames", 1) or 1) if len(headers) == 1 else len(headers)


def check_map_shape(saliency: np.ndarray, headers: Sequence[Dataset], what: str) -> None:
    """The map must lie on the source grid: (instances or frames, Rows, Columns)."""
    first = headers[0]
    expected = (source_planes(headers), int(first.Rows), int(first.Columns))
    if tuple(saliency.shape) != expected:
        raise MedassistError(f"{what}: saliency map shape {tuple(saliency.shape)} does not match the source grid {expected}")


def with_type2_attributes(ds: Dataset) -> Dataset:
    """``ds`` ready to be a result's source: ``TYPE2_FROM_SOURCE`` attributes it lacks, or holds in
    a form highdicom refuses (a malformed date or time, a sex other than M/F/O), present and empty.

    Returns ``ds`` itself when nothing needs changing, else a copy (the caller's header is untouched).
    """
    fix = [k for k in TYPE2_FROM_SOURCE if k not in ds or not _acceptable(k, ds[k].value)]
    if not fix:
        return ds
    out = copy.deepcopy(ds)
    for keyword in fix:
        setattr(out, keyword, None)
    return out


def _acceptable(keyword: str, value: object) -> bool:
    """Whether highdicom takes ``value`` for ``keyword`` as it is (empty is always fine)."""
    if value in (None, ""):
        return True
    if keyword == "PatientSex":
        return str(value) in ("M", "F", "O")
    parse = {"PatientBirthDate": DA, "StudyDate": DA, "StudyTime": TM}.get(keyword)
    if parse is None:
        return True
    try:
        parse(value)
    except ValueError:
        return False
    return True


def _safe_name(uid: str) -> str:
    return "".join(c for c in uid if c.isdigit() or c == ".")[:64] or "unknown"


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, dicom_bytes(ds))
