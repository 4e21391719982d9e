"""From DICOM headers to Series: group, drop duplicates, split stacks, order slices.

* Group by (StudyInstanceUID, SeriesInstanceUID).
* A SOPInstanceUID seen twice in a group is counted once (first file by path); the other files
  are reported, and kept only as fallbacks the loader tries if the first one fails to decode.
* Frames that cannot share one (slices, rows, columns) array (different image size, samples or
  orientation, e.g. a localizer inside an axial series) become separate Series with the same UIDs.
* Slices are ordered by position along the slice normal; without geometry by InstanceNumber.
  Frames of multi-frame files are slices like any other.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterable

from medassist.datamodel import IngestProblem, Series
from medassist.ingest.dicom import DicomHeader, FrameRef, first_line
from medassist.ingest.geometry import build_geometry, position_along_normal
from medassist.ingest.pixels import DicomStack, load_dicom_stack
from medassist.ingest.uids import uid_from_path

logger = logging.getLogger(__name__)


def group_into_series(
    headers: Iterable[DicomHeader], *, modality_override: str | None = None
) -> tuple[list[Series], list[IngestProblem]]:
    """Turn image headers into Series (one per stack) plus the duplicates that were dropped."""
    groups: dict[tuple[str, str], list[DicomHeader]] = {}
    for header in sorted(headers, key=lambda h: h.path):
        groups.setdefault(_series_key(header), []).append(header)

    series: list[Series] = []
    problems: list[IngestProblem] = []
    for (study_uid, series_uid), members in groups.items():
        try:
            found, duplicates = _group_series(study_uid, series_uid, members, modality_override)
        except Exception as exc:  # one series' headers must never stop the run
            reason = f"could not group into a series ({type(exc).__name__}: {first_line(exc)})"
            found, duplicates = [], [IngestProblem(h.path, reason) for h in members]
        series.extend(found)
        problems.extend(duplicates)
    return series, problems


def _group_series(
    study_uid: str, series_uid: str, members: list[DicomHeader], modality_override: str | None
) -> tuple[list[Series], list[IngestProblem]]:
    """The Series (one per stack) of one (study, series) group, and its dropped duplicates."""
    kept, alternates, duplicates = _drop_duplicates(members, series_uid)
    stacks = _split_stacks(kept)
    if len(stacks) > 1:
        logger.info(
            "%s: its series holds %d stacks of different size or orientation; one Series each",
            kept[0].path,
            len(stacks),
        )
    return [_make_series(study_uid, series_uid, stack, alternates, modality_override) for stack in stacks], duplicates


def _series_key(header: DicomHeader) -> tuple[str, str]:
    """(study, series) UIDs; a file missing them gets UIDs derived from its path (a series alone)."""
    study = header.study_uid or uid_from_path("study", header.path)
    series = header.series_uid or uid_from_path("series", header.path)
    return study, series


def _drop_duplicates(
    members: list[DicomHeader], series_uid: str = "",
) -> tuple[list[DicomHeader], dict[str, tuple[str, ...]], list[IngestProblem]]:
    """Keep the first file of each SOPInstanceUID; the others become reported fallbacks.

    Returns (kept headers, {kept path: fallback paths}, problems). A fallback must have the
    same image size to stand in for the kept file.
    """
    first_path: dict[str, str] = {}
    by_path = {h.path: h for h in members}
    alternates: dict[str, tuple[str, ...]] = {}
    kept: list[DicomHeader] = []
    problems: list[IngestProblem] = []
    for header in members:
        if header.sop_uid and header.sop_uid in first_path:
            primary = by_path[first_path[header.sop_uid]]
            if (header.rows, header.columns, header.samples, header.n_frames) == (
                primary.rows,
                primary.columns,
                primary.samples,
                primary.n_frames,
            ):
                alternates[primary.path] = alternates.get(primary.path, ()) + (header.path,)
            problems.append(
                IngestProblem(
                    header.path,
                    f"duplicate instance: same SOPInstanceUID as {primary.path}; not counted again "
                    "(used only if that file fails to decode)",
                    kind="duplicate",
                    series_uid=series_uid,
                )
            )
            continue
        if header.sop_uid:
            first_path[header.sop_uid] = header.path
        kept.append(header)
    return kept, alternates, problems


def _split_stacks(members: list[DicomHeader]) -> list[list[DicomHeader]]:
    """Partition headers into stacks that fit one array: same size, samples and orientation."""
    stacks: dict[tuple, list[DicomHeader]] = {}
    for header in members:
        orientation = (
            tuple(round(v, 3) for v in header.orientation) if header.orientation is not None else None
        )
        key = (header.rows, header.columns, header.samples, orientation)
        stacks.setdefault(key, []).append(header)
    return list(stacks.values())


def order_frames(frames: list[FrameRef], orientation: tuple[float, ...] | None) -> list[FrameRef]:
    """Order along the slice normal when every frame has a position, else by InstanceNumber.

    Ties (same position, e.g. several echoes) keep InstanceNumber, then file and frame order.
    """

    def instance(ref: FrameRef) -> float:
        return ref.instance_number if ref.instance_number is not None else math.inf

    if orientation is not None and all(ref.position is not None for ref in frames):

        def along_normal(ref: FrameRef) -> float:
            return position_along_normal(ref.position, orientation)  # type: ignore[arg-type]

        return sorted(frames, key=lambda r: (along_normal(r), instance(r), r.path, r.frame))
    return sorted(frames, key=lambda r: (instance(r), r.path, r.frame))


def _make_series(
    study_uid: str,
    series_uid: str,
    stack: list[DicomHeader],
    alternates: dict[str, tuple[str, ...]],
    modality_override: str | None,
) -> Series:
    """One Series for one stack: ordered slices, geometry, identifiers and a lazy loader."""
    first_header = stack[0]
    orientation = first_header.orientation
    frames = order_frames([f for h in stack for f in h.frames], orientation)
    geometry = build_geometry(
        n_slices=len(frames),
        pixel_spacing=first_header.pixel_spacing,
        orientation=orientation,
        positions=[f.position for f in frames],
        nominal_slice_spacing=first_header.nominal_slice_spacing,
    )
    paths = tuple(dict.fromkeys(f.path for f in frames))
    by_path = {h.path: h for h in stack}
    lead = by_path[paths[0]]  # identifiers come from the file holding the first slice
    loader_input = DicomStack(
        slices=tuple(frames),
        rows=lead.rows,
        columns=lead.columns,
        geometry=geometry,
        alternates={p: alternates[p] for p in paths if p in alternates},
    )
    return Series(
        study_uid=study_uid,
        series_uid=series_uid,
        patient_id=lead.patient_id,
        accession=lead.accession,
        modality=lead.modality or (modality_override or "").upper(),
        body_part=lead.body_part,
        source_path=paths[0] if len(paths) == 1 else os.path.commonpath([os.path.dirname(p) for p in paths]),
        paths=paths,
        loader=functools.partial(load_dicom_stack, loader_input),
        description=lead.description,
        sex=lead.sex,
        age=lead.age,
        manufacturer=lead.manufacturer,
        study_date=lead.study_date,
        n_instances=len(paths),
    )
