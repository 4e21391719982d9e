"""Walk the user's inputs and turn them into Series: the ingest stage's entry point.

Inputs may be folders (walked recursively), single files, DICOMDIR files (their records are
followed), NIfTI files and research volumes (NRRD, MetaImage). Volume files are recognised by their
suffix (``volume_reader``), everything else is looked at as DICOM by content, whatever its name.
Every file is visited once, even when it is reached twice (a folder and the DICOMDIR inside it, say).

Junk found while walking a folder (README, thumbnails...) is skipped quietly; a file the user
named explicitly is reported if it yields nothing, and so is anything that looks like DICOM
but is broken.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from medassist.datamodel import IngestProblem, Series
from medassist.errors import MedassistError
from medassist.ingest.dicom import DicomHeader, Skipped, first_line, quiet_pydicom, read_dicom_header
from medassist.ingest.nifti import is_nifti_path, read_nifti_series
from medassist.ingest.research_volume import is_research_volume_path, read_research_volume_series
from medassist.ingest.series import group_into_series
from medassist.timelimit import DecodeTimeout, time_limit, timeout_if_fired

logger = logging.getLogger(__name__)

# Seconds one file's header may take to read: no real header needs more than a fraction of that,
# a crafted one (a sequence of millions of items, say) could take hours.
HEADER_TIMEOUT_S = 30.0

VolumeReader = Callable[..., "Series | IngestProblem"]
# The volume formats recognised by name, each with its reader: the one place that decides which
# files are volumes (a file matching none is read as DICOM).
VOLUME_READERS: tuple[tuple[Callable[[str], bool], VolumeReader], ...] = (
    (is_nifti_path, read_nifti_series),
    (is_research_volume_path, read_research_volume_series),
)


def volume_reader(path: str) -> VolumeReader | None:
    """The reader of a NIfTI or research volume file (by its name), or None for anything else."""
    return next((reader for matches, reader in VOLUME_READERS if matches(path)), None)


@dataclass(frozen=True)
class InputFile:
    """A file to look at; ``explicit`` when the user (or a DICOMDIR the user named) listed it."""

    path: str
    explicit: bool


@dataclass
class Discovery:
    """What discovery made of every input file: image series, files that could not be used (with
    the reason) and files skipped as no image series (junk in a folder, DICOMDIRs, SR, RT plans...)."""

    series: list[Series]
    problems: list[IngestProblem]
    skipped: list[Skipped]


def discover_series(
    inputs: Sequence[str | Path], *, modality_override: str | None = None
) -> tuple[list[Series], list[IngestProblem]]:
    """Find every image series in ``inputs``; return them with the files that could not be used.

    Reads headers only. ``modality_override`` sets the modality of volume files (NIfTI, NRRD,
    MetaImage; default "MR", or a MetaImage header's) and of DICOM series whose header has none;
    it never replaces a DICOM header's modality.
    """
    found = discover_files(inputs, modality_override=modality_override)
    return found.series, found.problems


def discover_files(inputs: Sequence[str | Path], *, modality_override: str | None = None) -> Discovery:
    """``discover_series``, plus the files skipped as no image series: every input file ends up in
    exactly one of a series' paths, the problems or the skipped files."""
    if isinstance(inputs, (str, Path)):  # a lone path, not a list of them
        inputs = [inputs]
    headers: list[DicomHeader] = []
    found = Discovery([], [], [])
    for item in iter_input_files(inputs, found.problems, found.skipped):
        result = read_input_file(item, modality_override)
        if isinstance(result, Series):
            found.series.append(result)
        elif isinstance(result, DicomHeader):
            headers.append(result)
        elif isinstance(result, IngestProblem):
            found.problems.append(result)
        else:
            logger.debug("%s: skipped: %s", result.path, result.reason)
            found.skipped.append(result)

    dicom_series, duplicates = group_into_series(headers, modality_override=modality_override)
    found.problems.extend(duplicates)
    found.series.extend(dicom_series)
    found.series.sort(key=lambda s: (s.source_path, s.paths[0]))
    for problem in found.problems:
        logger.info("skipped %s", problem)
    logger.info("ingest: %d series, %d problem file(s), %d skipped", len(found.series), len(found.problems),
                len(found.skipped))
    return found


def read_input_file(item: InputFile, modality_override: str | None = None
                    ) -> Series | DicomHeader | Skipped | IngestProblem:
    """What one file is: a volume file's series, a DICOM header, skipped or a problem. An unexpected
    exception (a bug, or a reader's failure on input nobody foresaw) is that file's problem."""
    timed_out = IngestProblem(item.path, f"reading the header took longer than {HEADER_TIMEOUT_S:g} s")
    limit = None
    try:
        with time_limit(HEADER_TIMEOUT_S) as limit:
            reader = volume_reader(item.path)
            if reader is not None:
                result = reader(item.path, modality_override=modality_override)
            else:
                result = read_dicom_header(item.path, explicit=item.explicit)
        if limit.fired and limit.outer:  # the caller's time ran out, and the reader swallowed it
            raise DecodeTimeout(outer=True)
        if limit.fired and isinstance(result, IngestProblem):
            return timed_out  # the reader caught the timeout inside pydicom and called the file unreadable
        return result
    except (Exception, DecodeTimeout) as caught:  # one file must never stop the run
        exc = timeout_if_fired(caught, limit)  # pydicom may have wrapped the timeout in an OSError
        if not isinstance(exc, DecodeTimeout):
            return IngestProblem(item.path, unexpected_failure("read the file's header", exc))
        if exc.outer:  # the caller's time limit, not this header's
            raise exc from None
        return timed_out


def unexpected_failure(action: str, exc: BaseException) -> str:
    """The reason for an exception nobody foresaw: "could not <action> (<Type>: <first line>)"."""
    return f"could not {action} ({type(exc).__name__}: {first_line(exc)})"


def read_series_file(path: str | Path, *, modality_override: str | None = None) -> Series:
    """The one Series in a single file (DICOM or a volume file), or a MedassistError saying why not."""
    found, problems = discover_series([path], modality_override=modality_override)
    if problems:
        raise MedassistError(str(problems[0]))
    if not found:
        raise MedassistError(f"{path}: not an image series")
    if len(found) > 1:
        raise MedassistError(f"{path}: holds {len(found)} series; use discover_series")
    return found[0]


def find_series(source_path: str | Path, series_uid: str = "", *, modality_override: str | None = None) -> Series:
    """The way back from a worklist row to its series: the series ``series_uid`` among those at
    ``source_path`` (the only one there when no UID is given); MedassistError when it is gone."""
    found, _ = discover_series([source_path], modality_override=modality_override)
    match = [s for s in found if s.series_uid == series_uid] if series_uid else []
    if not match and not series_uid and len(found) == 1:
        match = found
    if not match:
        raise MedassistError(f"{source_path}: series {series_uid or '?'} is not there (moved or deleted?)")
    return match[0]


def iter_input_files(inputs: Sequence[str | Path], problems: list[IngestProblem],
                     skipped: list[Skipped] | None = None) -> Iterator[InputFile]:
    """Every file under the inputs, once each, DICOMDIR records expanded; problems appended, and
    the DICOMDIRs followed to ``skipped``."""
    seen: set[str] = set()
    named: list[InputFile] = []
    walked: list[InputFile] = []
    for raw in inputs:
        path = str(raw)
        if os.path.isdir(path):
            walked.extend(InputFile(p, explicit=False) for p in walk_folder(path))
        elif os.path.isfile(path):
            named.append(InputFile(path, explicit=True))
        else:
            problems.append(IngestProblem(path, "no such file or folder"))
    queue = named + walked  # named files first, so a file both named and walked counts as named

    index = 0
    while index < len(queue):
        item = queue[index]
        index += 1
        key = os.path.realpath(item.path)
        if key in seen:
            continue
        seen.add(key)
        if item.explicit and volume_reader(item.path) is None:
            listed = _expand_if_dicomdir(item.path, problems)
            if listed is not None:
                queue[index:index] = [InputFile(p, explicit=True) for p in listed]  # next in line
                if skipped is not None:
                    skipped.append(Skipped(item.path, "dicomdir", f"DICOMDIR listing {len(listed)} file(s)"))
                continue
        yield item


def walk_folder(folder: str) -> Iterator[str]:
    """Files under ``folder`` in sorted order; hidden files and folders are left out."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(root, name)


def _expand_if_dicomdir(path: str, problems: list[IngestProblem]) -> list[str] | None:
    """The files a DICOMDIR lists, or None if ``path`` is not a DICOMDIR."""
    try:
        result = read_dicom_header(path, explicit=True)
    except Exception:  # not a DICOMDIR we can follow; reading it as a file reports the failure
        return None
    if not (isinstance(result, Skipped) and result.kind == "dicomdir"):
        return None
    return dicomdir_files(path, problems)


def dicomdir_files(path: str, problems: list[IngestProblem]) -> list[str]:
    """Files referenced by a DICOMDIR's records (any record type), resolved next to it."""
    try:
        with quiet_pydicom():
            ds = pydicom.dcmread(path, force=True)
            records = list(ds.get("DirectoryRecordSequence") or [])
    except Exception as exc:
        problems.append(IngestProblem(path, f"unreadable DICOMDIR: {first_line(exc)}"))
        return []
    base = os.path.dirname(path)
    files: list[str] = []
    listed = 0
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        listed += 1
        parts = [file_id] if isinstance(file_id, str) else [str(p) for p in file_id]
        target = _resolve(base, parts)
        if target is None:
            missing = os.path.join(base, *parts)
            problems.append(IngestProblem(missing, f"listed in DICOMDIR {path} but not found"))
        elif target not in files:
            files.append(target)
    if not listed:
        problems.append(IngestProblem(path, "DICOMDIR lists no files"))
    return files


def _resolve(base: str, parts: list[str]) -> str | None:
    """Join DICOMDIR file ID components, matching case-insensitively (media are often lowercased)."""
    current = base
    for part in parts:
        candidate = os.path.join(current, part)
        if os.path.exists(candidate):
            current = candidate
            continue
        try:
            matches = [n for n in os.listdir(current) if n.lower() == part.lower()]
        except OSError:
            return None
        if not matches:
            return None
        current = os.path.join(current, matches[0])
    return current if os.path.isfile(current) else None
