"""Volume-level validation of a tumour model: whole volumes scored exactly as triage scores them.

Every volume becomes an ingest ``Image`` read from a NIfTI file by ``ingest.nifti`` (LGG stacks are
written to a temporary NIfTI first) and goes through ``tumor.prepare_volume`` and
``tumor.score_prepared_volume``, the two calls triage makes. Sources (``tumor_data``):

- ``brats``: the six BraTS examples (skull-stripped glioma T1c), as given;
- ``lgg``: the LGG validation patients, each folder of consecutive slices as one skull-on stack
  (spacing: ``tumor_data.lgg_spacing_mm``, an assumption: the files carry none);
- ``ixi``: the IXI validation subjects (healthy), as given (skull on) and ``tumor.skull_strip``-ped.

For the tumour sources the slices the study score reports are compared with the slices where the
tumour mask is non-empty (BraTS: any label, oedema included; LGG: the FLAIR abnormality), in the
same index space (stored slice indices when the plane is the stored slice axis, else canonical).
``TARGETS`` states what 2.0.0 must reach (issue 16).

``transform`` (every ``validate_*`` and ``score_image``; default none): a function applied to each
volume's Image just before it is scored (e.g. ``bias_field.n4_image``, measured for issue 16/19);
it must keep the geometry (the tumour masks stay on the original grid). Its seconds per volume are
reported as ``transform_s``; without one the report is as before.
"""

from __future__ import annotations

import dataclasses

import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medassist.datamodel import Image
from medassist.errors import MedassistError
from medassist.models import tumor, tumor_data
from medassist.preprocess import volume as vol

log = logging.getLogger(__name__)

SOURCES = ("brats", "lgg", "ixi")
IXI_VARIANTS = ("as_given", "skull_stripped")
TARGETS = {
    "brats": "every volume flagged, every reported slice inside the tumour",
    "lgg": "at least 90% of the validation patients flagged",
    "ixi": "at most 1 in 10 validation subjects flagged, as given and skull-stripped (each)",
}
LGG_MIN_FLAGGED = 0.9
IXI_MAX_FLAGGED = 0.1
Transform = Callable[[Image], Image]  # an ingest Image to one on the same grid


@dataclass(frozen=True)
class VolumeScore:
    """One volume's study result. ``slices``: the slices the study score reports (``indices_are``
    says in which index space); ``tumour_slices``: where the mask is non-empty, in the same space
    (None for normal volumes); ``error``: why there is no score (then ``score`` is None);
    ``transform_s``: seconds the validation's ``transform`` took on this volume (None: no transform)."""

    source: str
    variant: str
    name: str
    score: float | None
    threshold: float
    flagged: bool
    slices: tuple[int, ...]
    indices_are: str
    plane: str
    spacing_mm: float | None
    n_slices: int
    n_in_brain: int
    n_slices_over_threshold: int
    max_slice_score: float | None
    tumour_slices: tuple[int, ...] | None = None
    error: str = ""
    transform_s: float | None = None

    @property
    def slices_in_tumour(self) -> int | None:
        """How many reported slices show tumour (None without a mask)."""
        if self.tumour_slices is None:
            return None
        return len(set(self.slices) & set(self.tumour_slices))

    @property
    def localised(self) -> bool | None:
        """Flagged, and every reported slice shows tumour (None without a mask)."""
        if self.tumour_slices is None:
            return None
        return bool(self.flagged and self.slices and self.slices_in_tumour == len(self.slices))

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(slices=list(self.slices), slices_in_tumour=self.slices_in_tumour, localised=self.localised,
                   tumour_slices=None if self.tumour_slices is None else list(self.tumour_slices))
        if self.transform_s is None:  # no transform: the report as it was before transforms existed
            del out["transform_s"]
        return out


@dataclass(frozen=True)
class SourceReport:
    """The volumes of one source and variant, with their counts."""

    source: str
    variant: str
    volumes: tuple[VolumeScore, ...]

    @property
    def n_volumes(self) -> int:
        return len(self.volumes)

    @property
    def n_flagged(self) -> int:
        return sum(v.flagged for v in self.volumes)

    @property
    def n_errors(self) -> int:
        return sum(bool(v.error) for v in self.volumes)

    @property
    def n_localised(self) -> int | None:
        known = [v.localised for v in self.volumes if v.localised is not None]
        return sum(known) if known else None

    @property
    def target_met(self) -> bool:
        """Whether this report reaches its source's target (``TARGETS``); never with an error or no volume."""
        if not self.volumes or self.n_errors:
            return False
        if self.source == "brats":
            return self.n_localised == self.n_volumes
        if self.source == "lgg":
            return self.n_flagged >= LGG_MIN_FLAGGED * self.n_volumes
        return self.n_flagged <= IXI_MAX_FLAGGED * self.n_volumes

    def to_dict(self) -> dict:
        return {"source": self.source, "variant": self.variant, "target": TARGETS[self.source],
                "target_met": self.target_met, "n_volumes": self.n_volumes, "n_flagged": self.n_flagged,
                "n_errors": self.n_errors, "n_localised": self.n_localised,
                "volumes": [v.to_dict() for v in self.volumes]}


@dataclass(frozen=True)
class VolumeValidation:
    """All reports of one model, with the assumptions they rest on."""

    model: str
    version: str
    threshold: float
    reports: tuple[SourceReport, ...]
    assumptions: Mapping[str, str]

    @property
    def all_targets_met(self) -> bool:
        return bool(self.reports) and all(r.target_met for r in self.reports)

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "threshold": self.threshold,
                "all_targets_met": self.all_targets_met, "assumptions": dict(self.assumptions),
                "sources": {f"{r.source}/{r.variant}": r.to_dict() for r in self.reports}}


# --- one volume --------------------------------------------------------------------------------------


def load_nifti(path: str | Path):
    """The ingest Image of a NIfTI file (what triage decodes); MedassistError when it cannot be read."""
    from medassist.ingest.nifti import read_nifti_series

    series = read_nifti_series(str(path))
    if not hasattr(series, "load"):
        raise MedassistError(str(series))
    return series.load()


def reported_tumour_slices(mask, prepared: tumor.PreparedVolume, indices_are: tumor.IndicesAre) -> tuple[int, ...]:
    """The slices across ``prepared``'s plane where ``mask`` (an Image on the volume's grid) is
    non-empty, as stored slice indices when ``indices_are == 'stored'``, else canonical."""
    canonical, _ = vol.reorient_canonical(mask, "pixels")
    if canonical.shape[prepared.axis] != prepared.fractions.size:
        raise MedassistError(f"mask shape {mask.pixels.shape} does not fit the volume")
    other = tuple(a for a in range(3) if a != prepared.axis)
    hits = np.flatnonzero((np.asarray(canonical) > 0).any(axis=other))
    if indices_are == "stored":
        return tuple(sorted(int(prepared.stored_index[i]) for i in hits))  # type: ignore[arg-type]
    return tuple(int(i) for i in hits)


def score_image(model, image, *, source: str, variant: str, name: str, mask=None,
                transform: Transform | None = None) -> VolumeScore:
    """Score one Image as triage does (``prepare_volume`` + ``score_prepared_volume``), after
    ``transform`` when given (timed: ``transform_s``); a MedassistError (e.g. "no brain found", or
    from the transform) becomes the VolumeScore's ``error``."""
    network, spec = tumor._as_model(model)
    threshold = float(spec.threshold)
    seconds = None
    try:
        if transform is not None:
            started = time.perf_counter()
            image = transform(image)
            seconds = round(time.perf_counter() - started, 3)
        prepared = tumor.prepare_volume(spec, image)
        result = tumor.score_prepared_volume(network, spec, prepared)
        tumour = None if mask is None else reported_tumour_slices(mask, prepared, result.indices_are)
    except MedassistError as exc:
        return dataclasses.replace(failed(source, variant, name, threshold, str(exc), masked=mask is not None),
                                   transform_s=seconds)
    inside, slice_scores = result.in_brain, result.slice_scores
    return VolumeScore(
        source=source, variant=variant, name=name, score=round(float(result.score), 6), threshold=threshold,
        flagged=bool(result.flagged), slices=tuple(result.slices), indices_are=result.indices_are,
        plane=result.plane, spacing_mm=round(float(result.spacing_mm), 4), n_slices=int(inside.size),
        n_in_brain=int(inside.sum()), n_slices_over_threshold=int(np.sum(slice_scores[inside] >= threshold)),
        max_slice_score=round(float(slice_scores.max(initial=0.0)), 6), tumour_slices=tumour,
        transform_s=seconds,
    )


def failed(source: str, variant: str, name: str, threshold: float, error: str, *, masked: bool) -> VolumeScore:
    """The VolumeScore of a volume that could not be read or scored (``masked``: a tumour source)."""
    return VolumeScore(source, variant, name, None, threshold, False, (), "", "", None, 0, 0, 0, None,
                       () if masked else None, error=error)


# --- one source --------------------------------------------------------------------------------------


def _timed(report: VolumeScore, started: float) -> VolumeScore:
    log.info("%s/%s %s: score %s flagged %s slices %s%s (%.1f s)", report.source, report.variant, report.name,
             report.score, report.flagged, list(report.slices),
             f" error {report.error}" if report.error else "", time.time() - started)
    return report


def validate_brats(model, cases: Sequence[tumor_data.BratsCase], transform: Transform | None = None) -> SourceReport:
    """The BraTS examples as given, reported slices against the segmentation (any label)."""
    model = tumor._as_model(model)
    volumes = []
    for case in cases:
        started = time.time()
        try:
            image, mask = load_nifti(case.t1c), load_nifti(case.segmentation)
        except MedassistError as exc:
            volumes.append(failed("brats", "as_given", case.case, model[1].threshold, str(exc), masked=True))
            continue
        volumes.append(_timed(score_image(model, image, source="brats", variant="as_given", name=case.case,
                                          mask=mask, transform=transform), started))
    return SourceReport("brats", "as_given", tuple(volumes))


def lgg_volume(slices: tuple[tumor_data.LggSlice, ...], kind: str, folder: Path, spacing_mm: float):
    """A patient's T1c ('image') or mask ('mask') stack as triage would read it: written to a NIfTI
    in ``folder`` (``tumor_data.write_axial_nifti``) and loaded by ingest."""
    path = folder / f"{slices[0].patient}_{kind}.nii.gz"
    return load_nifti(tumor_data.write_axial_nifti(tumor_data.lgg_stack(slices, kind), path,
                                                   slice_spacing_mm=spacing_mm))


def lgg_mask(slices: tuple[tumor_data.LggSlice, ...], image, folder: Path, spacing_mm: float):
    """A patient's mask on its image's grid. An all-empty mask is built from the image's geometry:
    ingest refuses a constant volume as an image to score, and a mask is not one."""
    if not any(s.tumour for s in slices):
        return dataclasses.replace(image, pixels=np.zeros_like(image.pixels), display=np.zeros_like(image.display))
    return lgg_volume(slices, "mask", folder, spacing_mm)


def validate_lgg(model, patients: Mapping[str, tuple[tumor_data.LggSlice, ...]],
                 slice_spacing_mm: float | None = None, transform: Transform | None = None) -> SourceReport:
    """Each LGG patient's slices as one skull-on stack (``lgg_volume``; spacing
    ``tumor_data.lgg_spacing_mm``), reported slices against the FLAIR-abnormality masks."""
    model = tumor._as_model(model)
    volumes = []
    with tempfile.TemporaryDirectory(prefix="lgg_stacks_") as tmp:
        for patient, slices in patients.items():
            started = time.time()
            spacing = tumor_data.lgg_spacing_mm(len(slices), slice_spacing_mm)
            try:
                image = lgg_volume(slices, "image", Path(tmp), spacing)
                mask = lgg_mask(slices, image, Path(tmp), spacing)
            except MedassistError as exc:
                volumes.append(failed("lgg", "stack", patient, model[1].threshold, str(exc), masked=True))
                continue
            volumes.append(_timed(score_image(model, image, source="lgg", variant="stack", name=patient,
                                              mask=mask, transform=transform), started))
    return SourceReport("lgg", "stack", tuple(volumes))


def validate_ixi(model, subjects: Sequence[tumor_data.IxiSubject], variants: Sequence[str] = IXI_VARIANTS,
                 transform: Transform | None = None) -> list[SourceReport]:
    """The IXI subjects (healthy) as given and skull-stripped (``tumor.skull_strip``): one report per
    variant. ``transform`` is applied to the volume scored, i.e. after the skull strip."""
    model = tumor._as_model(model)
    found: dict[str, list[VolumeScore]] = {v: [] for v in variants}
    for subject in subjects:
        try:
            image = load_nifti(subject.path)
        except MedassistError as exc:
            for variant in variants:
                found[variant].append(failed("ixi", variant, subject.subject, model[1].threshold, str(exc),
                                             masked=False))
            continue
        for variant in variants:
            started = time.time()
            shown = tumor.skull_strip(image) if variant == "skull_stripped" else image
            found[variant].append(_timed(score_image(model, shown, source="ixi", variant=variant,
                                                     name=subject.subject, transform=transform), started))
    return [SourceReport("ixi", v, tuple(found[v])) for v in variants]


# --- all sources --------------------------------------------------------------------------------------


def validate_volumes(model, data_cfg: Mapping | None = None, *, sources: Sequence[str] = SOURCES,
                     limit: int | None = None, lgg_spacing_mm: float | None = None,
                     transform: Transform | None = None) -> VolumeValidation:
    """The volume-level validation of ``model`` (a LoadedModel, (network, spec) or spec JSON path):
    BraTS (all six), the LGG and IXI validation splits (``tumor_data.lgg_split`` / ``ixi_split``
    under ``data_cfg``, a config's data section). ``limit``: at most that many volumes per source
    (smoke runs). ``transform``: applied to each Image before it is scored (module docstring)."""
    network, spec = tumor._as_model(model)
    network.eval()
    model = (network, spec)
    reports: list[SourceReport] = []
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise MedassistError(f"unknown volume sources {sorted(unknown)}; known: {', '.join(SOURCES)}")
    if "brats" in sources:
        cases = tumor_data.read_brats(tumor_data.source_root(data_cfg, "brats"))
        reports.append(validate_brats(model, cases[:limit], transform))
    if "lgg" in sources:
        slices = tumor_data.read_lgg(tumor_data.source_root(data_cfg, "lgg"))
        split = tumor_data.lgg_split(slices, data_cfg)
        patients = {p: s for p, s in tumor_data.lgg_patients(slices).items() if split[p] == "val"}
        reports.append(validate_lgg(model, dict(list(patients.items())[:limit]), lgg_spacing_mm, transform))
    if "ixi" in sources:
        subjects = tumor_data.read_ixi(tumor_data.source_root(data_cfg, "ixi"))
        split = tumor_data.ixi_split(subjects, data_cfg)
        reports += validate_ixi(model, [s for s in subjects if split[s.subject] == "val"][:limit],
                                transform=transform)
    return VolumeValidation(spec.name, spec.version, float(spec.threshold), tuple(reports),
                            assumptions=assumptions(data_cfg, lgg_spacing_mm))


def assumptions(data_cfg: Mapping | None, lgg_spacing_mm: float | None) -> dict[str, str]:
    """What the reports rest on, written into the JSON."""
    spacing = (f"{lgg_spacing_mm:g} mm (given)" if lgg_spacing_mm is not None else
               f"{tumor_data.LGG_COVERAGE_MM:g} mm coverage / number of slices (the stacks carry no geometry)")
    splits = {s: {k: tumor_data.source_config(data_cfg, s)[k] for k in ("val_percent", "salt")} for s in ("lgg", "ixi")}
    return {
        "lgg_slice_spacing": spacing,
        "lgg_pixel_spacing": f"{tumor_data.LGG_PIXEL_MM:g} mm (assumed)",
        "lgg_orientation": "slice 1 inferior, rows anterior -> posterior, columns patient right -> left",
        "split": f"hash_split by patient (LGG, stratified by institution) and subject (IXI): {splits}",
        "tumour_slices": "BraTS: any segmentation label (oedema included); LGG: FLAIR-abnormality mask",
        "score_path": "ingest NIfTI -> tumor.prepare_volume -> tumor.score_prepared_volume (as triage)",
    }
