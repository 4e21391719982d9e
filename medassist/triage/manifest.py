"""``OUT/files.csv``: what triage did with every input file, one line per file.

Columns ``path, status, series_uid, reason`` (``FILES_COLUMNS``), sorted by path. ``status`` is one of:

* ``used``           - the file is (one of the files of) a series with a score in the worklist;
* ``not applicable`` - its series is in the worklist, but no shipped model covers it (``reason`` says why);
* ``pending``        - its series has no row yet (a run stopped before it; the next run completes it);
* ``duplicate``      - the same SOP instance as a file of ``series_uid``, counted once (``reason`` names it);
* ``not an image``   - not an image series: junk in a folder, a DICOMDIR, SR, SEG, RT plan, presentation state;
* ``unsupported``    - readable, but of a kind no model reads (4D NIfTI, parametric maps, private syntaxes);
* ``error``          - unreadable or undecodable: the file's own ingest problem, or its series' error row.

Every file discovery visited is listed once, by the path it was found under, including each file of
a multi-file series. The list is rebuilt from discovery and the worklist's rows at every worklist
checkpoint and written atomically with it (``write_manifest``), so a resumed run rewrites it
complete. Cells are written like the worklist's (``sanitize.csv_writer``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medassist.atomic import write_atomic
from medassist.datamodel import IngestProblem, RowKind, Series, WorklistRow
from medassist.sanitize import csv_unsafe, csv_writer
from medassist.triage.worklist import FILES_NAME

FILES_COLUMNS = ("path", "status", "series_uid", "reason")
USED, NOT_APPLICABLE, PENDING = "used", "not applicable", "pending"
DUPLICATE, NOT_AN_IMAGE, UNSUPPORTED, ERROR = "duplicate", "not an image", "unsupported", "error"
if TYPE_CHECKING:
    from medassist.ingest.dicom import Skipped

_PROBLEM_STATUS = {"duplicate": DUPLICATE, "unsupported": UNSUPPORTED}
_SKIPPED_STATUS = {"unsupported": UNSUPPORTED}  # not-dicom, dicomdir, non-image: not an image
_OUTCOME_RANK = {USED: 0, NOT_APPLICABLE: 1, ERROR: 2}


@dataclass(frozen=True)
class FileEntry:
    """One line of files.csv."""

    path: str
    status: str
    series_uid: str = ""
    reason: str = ""


def file_entries(series: Sequence[Series], problems: Sequence[IngestProblem], skipped: Sequence[Skipped],
                 rows: Iterable[WorklistRow]) -> list[FileEntry]:
    """Every file once, sorted by path: a series' files get their series' outcome in ``rows``
    (the worklist's rows), a problem's and a skipped file's status come from discovery."""
    outcomes = series_outcomes(rows)
    entries: dict[str, FileEntry] = {}
    for item in series:
        status, reason = outcomes.get(item.series_uid, (PENDING, ""))
        for path in item.paths:
            entries.setdefault(path, FileEntry(path, status, item.series_uid, reason))
    for problem in problems:
        status = _PROBLEM_STATUS.get(problem.kind, ERROR)
        entries.setdefault(problem.path, FileEntry(problem.path, status, problem.series_uid, problem.reason))
    for skip in skipped:
        entries.setdefault(skip.path, FileEntry(skip.path, _SKIPPED_STATUS.get(skip.kind, NOT_AN_IMAGE), "", skip.reason))
    return [entries[path] for path in sorted(entries)]


def series_outcomes(rows: Iterable[WorklistRow]) -> dict[str, tuple[str, str]]:
    """series UID -> (status, reason) from its rows: used if any model scored it, else not
    applicable, else the first error (without the leading source path)."""
    outcomes: dict[str, tuple[str, str]] = {}
    for row in rows:
        uid = row.series_uid or ""
        if not uid:  # an ingest problem's row: no series
            continue
        status = {RowKind.SCORED: USED, RowKind.NOT_APPLICABLE: NOT_APPLICABLE}.get(row.kind, ERROR)
        reason = "" if status == USED else _without_source(row)
        current = outcomes.get(uid)
        if current is None or _OUTCOME_RANK[status] < _OUTCOME_RANK[current[0]]:
            outcomes[uid] = (status, reason)
    return outcomes


def _without_source(row: WorklistRow) -> str:
    """A row's error text, without the "<source path>: " it starts with."""
    error, source = row.error or "", row.source_path or ""
    return error.removeprefix(f"{source}: ") if source else error


def render_manifest(entries: Sequence[FileEntry]) -> str:
    """files.csv's text: a header of FILES_COLUMNS, one line per entry."""
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(FILES_COLUMNS)
    writer.writerows((e.path, e.status, e.series_uid, e.reason) for e in entries)
    return buffer.getvalue()


def write_manifest(out_dir: Path, entries: Sequence[FileEntry]) -> Path:
    """Atomically (re)write ``out_dir``/files.csv."""
    path = Path(out_dir) / FILES_NAME
    write_atomic(path, render_manifest(entries), private=True)
    return path


def read_manifest(path: Path) -> list[dict[str, str]]:
    """files.csv as a list of string dicts, cells as they were before ``csv_safe``."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: csv_unsafe(v) for k, v in row.items()} for row in csv.DictReader(handle)]
