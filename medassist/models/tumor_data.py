"""Readers for the tumour model's sources besides figshare (``tumor.read_records``), with their splits.

- ``lgg_mri``: TCGA-LGG patients (Buda et al. 2019), one folder each of consecutive axial post-
  contrast T1 slices (``NNN_t1c.jpg``, skull on) and FLAIR-abnormality masks (``NNN_mask.png``),
  listed in ``slices.csv``. Split by patient.
- ``ixi_t1``: healthy IXI T1 whole-head volumes (2 mm, sagittal), ``subjects.csv`` (age, sex).
  Split by subject.
- ``brats2015_examples``: six skull-stripped glioma T1c volumes with segmentation and brain mask,
  for validation only (research-use licence: never copy any of it into the repository).

The split rule for LGG and IXI is ``splits.hash_split`` (the one place of the split rules): ids ranked by a stable hash
(sha256 of salt and id), the lowest ``val_percent`` of each stratum (LGG: the institution, so
every institution is validated; IXI: one stratum) are validation. A patient's slices never
straddle the split, and it does not depend on file order or Python's hash seed. Its settings come
from the config's data section (``data.lgg`` / ``data.ixi``: ``root``, ``val_percent``, ``salt``),
defaults in ``DEFAULT_ROOTS`` and ``splits.HASH_SPLIT``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medassist.errors import MedassistError
from medassist.models.splits import HASH_SPLIT, hash_split
from medassist.models.tumor import DEFAULT_INFERENCE
from medassist.preprocess import volume as vol

log = logging.getLogger(__name__)

DEFAULT_ROOTS = {
    "lgg": "../shared/data/lgg_mri",
    "ixi": "../shared/data/ixi_t1",
    "brats": "../shared/data/brats2015_examples",
}
# LGG stacks carry no geometry. They run from the skull base (often the neck) to the vertex, so the
# slice spacing is estimated as this craniocaudal coverage over the slice count (20 slices: 7.5 mm,
# 36: 4.2 mm, 88: 1.7 mm), unless a spacing is given. In-plane pixels are taken as 1 mm (the heads
# span about 130-160 of 256 pixels); the model crops to the head and resizes, so that value only
# matters for choosing the plane, which stays axial for any slice spacing.
LGG_COVERAGE_MM = 150.0
LGG_PIXEL_MM = 1.0


# --- each source's split settings (the rule: splits.hash_split) -----------------------------------


def source_config(data_cfg: Mapping | None, source: str) -> dict:
    """A source's settings from a config's data section (``data[source]``): root and split, with defaults."""
    given = dict((data_cfg or {}).get(source) or {})
    return {"root": DEFAULT_ROOTS[source], **HASH_SPLIT, **given}


def source_root(data_cfg: Mapping | None, source: str) -> Path:
    """A source's root folder from the config (relative paths from the repository root);
    MedassistError when it is not there."""
    from medassist.models.train_common import resolve

    root = resolve(str(source_config(data_cfg, source)["root"]))
    if not root.is_dir():
        raise MedassistError(f"{root}: the {source} data folder is missing (set data.{source}.root in the config)")
    return root


def lgg_split(slices: list[LggSlice], data_cfg: Mapping | None = None) -> dict[str, str]:
    """'train' or 'val' per LGG patient, stratified by institution (``hash_split``)."""
    cfg = source_config(data_cfg, "lgg")
    strata = {s.patient: s.institution for s in slices}
    return hash_split(list(strata), val_percent=float(cfg["val_percent"]), salt=str(cfg["salt"]), strata=strata)


def ixi_split(subjects: list[IxiSubject], data_cfg: Mapping | None = None) -> dict[str, str]:
    """'train' or 'val' per IXI subject (``hash_split``, one stratum: one hospital, one scanner)."""
    cfg = source_config(data_cfg, "ixi")
    return hash_split([s.subject for s in subjects], val_percent=float(cfg["val_percent"]), salt=str(cfg["salt"]))


# --- lgg_mri ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LggSlice:
    """One slice of an LGG patient: ``slice`` counts from 1 in acquisition order (inferior first)."""

    patient: str
    institution: str
    slice: int
    image: Path
    mask: Path
    tumour: int


def read_lgg(root: str | Path) -> list[LggSlice]:
    """Every slice listed in ``root/slices.csv``, sorted by patient and slice."""
    root = Path(root)
    slices = []
    with open(root / "slices.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            folder, number = root / row["patient"], int(row["slice"])
            slices.append(LggSlice(row["patient"], row["institution"], number, folder / f"{number:03d}_t1c.jpg",
                                   folder / f"{number:03d}_mask.png", int(row["tumour"])))
    slices.sort(key=lambda s: (s.patient, s.slice))
    return slices


def lgg_patients(slices: list[LggSlice]) -> dict[str, tuple[LggSlice, ...]]:
    """The slices grouped by patient (each in slice order); refuses a patient whose slices are not 1..n."""
    patients: dict[str, list[LggSlice]] = {}
    for s in slices:
        patients.setdefault(s.patient, []).append(s)
    for patient, group in patients.items():
        if [s.slice for s in group] != list(range(1, len(group) + 1)):
            raise ValueError(f"{patient}: slices are not numbered 1..{len(group)}")
    return {p: tuple(g) for p, g in sorted(patients.items())}


def lgg_spacing_mm(n_slices: int, slice_spacing_mm: float | None = None) -> float:
    """The slice spacing of an LGG stack: the one given, else ``LGG_COVERAGE_MM / n_slices``."""
    if slice_spacing_mm is not None:
        return float(slice_spacing_mm)
    return LGG_COVERAGE_MM / max(n_slices, 1)


def lgg_stack(patient_slices: tuple[LggSlice, ...], kind: str = "image") -> np.ndarray:
    """A patient's slices as a uint8 (n, rows, cols) stack, inferior first: 'image' (T1c) or 'mask'."""
    from medassist.ingest.images import load_jpeg_grayscale

    return np.stack([load_jpeg_grayscale(getattr(s, kind)) for s in patient_slices])


def write_axial_nifti(stack: np.ndarray, path: str | Path, *, slice_spacing_mm: float,
                      pixel_mm: float = LGG_PIXEL_MM) -> Path:
    """Save an axial (slices, rows, cols) stack as NIfTI with the radiological display convention:
    slices run inferior -> superior, rows anterior -> posterior, columns patient right -> left
    (the way the LGG and figshare slices are stored), so the ingest path reads it back unchanged."""
    import nibabel as nib

    affine = np.diag([-pixel_mm, -pixel_mm, float(slice_spacing_mm), 1.0])  # i -> L, j -> P, k -> S (RAS)
    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(stack, (2, 1, 0))), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))
    return Path(path)


# --- ixi_t1 ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IxiSubject:
    """One healthy IXI subject: id (e.g. IXI012-HH-1211), volume path, age in years, sex (M/F)."""

    subject: str
    path: Path
    age: float | None
    sex: str


def read_ixi(root: str | Path) -> list[IxiSubject]:
    """Every subject of ``root/subjects.csv`` whose ``<subject>_T1.nii.gz`` exists, sorted by id."""
    root = Path(root)
    subjects = []
    with open(root / "subjects.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            path = root / f"{row['subject']}_T1.nii.gz"
            if not path.is_file():
                log.warning("%s: listed in subjects.csv, no volume", row["subject"])
                continue
            age = float(row["age"]) if row.get("age") else None
            subjects.append(IxiSubject(row["subject"], path, age, row.get("sex", "")))
    subjects.sort(key=lambda s: s.subject)
    return subjects


def axial_slices(path: str | Path, *, source: str = "display", in_brain_only: bool = True,
                 min_fraction: float = DEFAULT_INFERENCE["min_brain_fraction"],
                 min_relative: float = DEFAULT_INFERENCE["min_relative_brain_fraction"],
                 ) -> Iterator[tuple[int, np.ndarray]]:
    """``axial_slices_of`` the NIfTI volume at ``path`` (read by ingest)."""
    from medassist.ingest.nifti import read_nifti_series

    series = read_nifti_series(str(path))
    if not hasattr(series, "load"):
        raise MedassistError(str(series))
    yield from axial_slices_of(series.load(), source=source, in_brain_only=in_brain_only,
                               min_fraction=min_fraction, min_relative=min_relative)


def axial_slices_of(image, *, source: str = "display", in_brain_only: bool = True,
                    min_fraction: float = DEFAULT_INFERENCE["min_brain_fraction"],
                    min_relative: float = DEFAULT_INFERENCE["min_relative_brain_fraction"],
                    ) -> Iterator[tuple[int, np.ndarray]]:
    """(canonical axial index, float32 slice) of an ingest Image, inferior first, displayed the
    radiological way (``preprocess.volume``); with ``in_brain_only`` only the slices inference
    scores as in the brain (``volume.in_brain`` with the model's default floors)."""
    volume, _ = vol.reorient_canonical(image, source)
    keep = np.ones(volume.shape[0], bool)
    if in_brain_only:
        ref = vol.intensity_reference(volume)
        fractions = np.array([vol.brain_fraction(volume[k], ref) for k in range(volume.shape[0])])
        keep = vol.in_brain(fractions, min_fraction=min_fraction, min_relative=min_relative)
    for idx, chunk in vol.iter_slices(volume, 0, batch=16):
        for k, s in zip(idx, chunk):
            if keep[k]:
                yield int(k), s


# --- brats2015_examples ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BratsCase:
    """One BraTS example: skull-stripped T1c (z-scored in the brain), segmentation (0 = none,
    1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing) and brain mask, all on one 1 mm grid."""

    case: str
    t1c: Path
    segmentation: Path
    brain_mask: Path


def read_brats(root: str | Path) -> list[BratsCase]:
    """Every case folder under ``root`` holding the three volumes, sorted by name."""
    cases = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        files = (folder / "T1c_subtrMeanDivStd.nii.gz", folder / "OTMultiClass.nii.gz", folder / "brainmask.nii.gz")
        if all(f.is_file() for f in files):
            cases.append(BratsCase(folder.name, *files))
        else:
            missing = ", ".join(f.name for f in files if not f.is_file())
            log.warning("%s: not a BraTS case (missing %s)", folder, missing)
    return cases

