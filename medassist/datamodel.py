"""The shared nouns that travel between stages: Image, Series, Finding, WorklistRow.

Stages depend on these and not on each other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


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
    n_instances: int = 1

    def load(self) -> Image:
        """Decode the pixels (may raise MedassistError naming the file and the reason)."""
        return self.loader()


@dataclass(frozen=True)
class IngestProblem:
    """A file that could not be read, with a specific reason. The run goes on without it."""

    path: str
    reason: str

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


@dataclass
class WorklistRow:
    """A series' identifiers plus one model's finding, or an error, or 'no model applies'."""

    study_uid: str
    series_uid: str
    patient_id: str
    accession: str
    modality: str
    body_part: str
    source_path: str
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
            source_path=series.source_path,
            **kwargs,
        )

    def as_record(self) -> dict:
        """The row as plain JSON-able values, keyed by WORKLIST_COLUMNS."""
        return {
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "patient_id": self.patient_id,
            "accession": self.accession,
            "modality": self.modality,
            "body_part": self.body_part,
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
