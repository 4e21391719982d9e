"""The worklist: which rows it holds, in which order, and how it is written (atomically).

Conventions (the contract the review app and any downstream reader rely on):

* Columns are exactly ``WORKLIST_COLUMNS``, in that order, in both ``worklist.csv`` and
  ``worklist.json`` (a JSON array of objects).
* A **scored** row: one model's finding for one series; ``score`` in 0..1, ``flagged`` is
  ``score >= threshold``, ``error`` is empty.
* A **not-applicable** row: a series no shipped model covers. ``finding`` is exactly
  ``"not applicable"`` (``NOT_APPLICABLE``), ``model``/``score``/``threshold``/``flagged`` are empty
  and ``error`` holds the reason, e.g. ``"no shipped model applies to US / unknown body part"``.
* An **error** row: a file that could not be read (ingest problem; only ``source_path`` and
  ``error`` are filled) or a series a model could not score (identifiers, ``model`` and
  ``model_version`` filled, ``score`` empty, ``error`` naming the file and the reason).
  ``WorklistRow.kind`` tells the three apart.
* Order (priority): scored rows first - flagged before unflagged, then highest score first (with one
  model this is simply highest score first) - then not-applicable rows, then error rows; ties are
  broken by source path, series UID and model so the order is deterministic.
* In the CSV, ``flagged`` is ``true``/``false`` and a missing value is an empty cell; in the JSON a
  missing value is ``null``. The CSV files have CRLF line ends (RFC 4180); text cells that a
  spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or carriage
  return), and those starting with an apostrophe, get an apostrophe in front
  (``sanitize.csv_writer``); readers take it off (``sanitize.csv_unsafe``). Numbers are written as
  numbers, never changed.
* ``quarantine.csv`` (columns ``path, reason``) lists every file or series behind an error row, with
  the file named in the error where there is one; it is rewritten (atomically) with the worklist.
* ``files.csv`` (columns ``path, status, series_uid, reason``) lists every input file once with what
  became of it (``medassist.triage.manifest``); the run rewrites it with every worklist checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from medassist.atomic import write_atomic
from medassist.datamodel import NOT_APPLICABLE, WORKLIST_COLUMNS, IngestProblem, RowKind, Series, WorklistRow
from medassist.sanitize import csv_unsafe, csv_writer

CSV_NAME = "worklist.csv"
JSON_NAME = "worklist.json"
QUARANTINE_NAME = "quarantine.csv"
FILES_NAME = "files.csv"  # what became of each input file: medassist.triage.manifest
QUARANTINE_COLUMNS = ("path", "reason")


def problem_record(problem: IngestProblem) -> WorklistRow:
    """An error row for a file ingest could not read."""
    return WorklistRow(
        study_uid="", series_uid="", patient_id="", accession="", modality="", body_part="",
        source_path=problem.path, error=problem.reason,
    )


def not_applicable_record(series: Series, reason: str) -> WorklistRow:
    """A row for a series no shipped model covers; ``reason`` goes into ``error``."""
    return WorklistRow.for_series(series, finding=NOT_APPLICABLE, error=reason)


def row_kind(row: WorklistRow) -> RowKind:
    """The kind of a row (``WorklistRow.kind``: one rule for rows written and rows read back)."""
    return row.kind


_KIND_RANK = {RowKind.SCORED: 0, RowKind.NOT_APPLICABLE: 1, RowKind.ERROR: 2}


def priority_key(row: WorklistRow) -> tuple:
    """Sort key: scored (flagged first, highest score first), then not applicable, then errors.
    The score is the one written (``as_record`` rounds it to 6 places), so rows the worklist shows
    as equal tie on the same columns."""
    kind = row.kind
    scored = kind == RowKind.SCORED
    return (
        _KIND_RANK[kind],
        not (scored and bool(row.flagged)),
        -round(float(row.score), 6) if scored and row.score is not None else 0.0,
        row.source_path or "",
        row.series_uid or "",
        row.model or "",
    )


def sort_records(rows: Iterable[WorklistRow]) -> list[WorklistRow]:
    """Rows in worklist (priority) order."""
    return sorted(rows, key=priority_key)


def csv_cell(value: object) -> object:
    """One CSV cell: booleans as true/false, None as empty, numbers as numbers, anything else as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    return str(value)


def render_csv(rows: Sequence[WorklistRow]) -> str:
    """The worklist as CSV text with a header of WORKLIST_COLUMNS (cells from ``as_record``)."""
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(WORKLIST_COLUMNS)
    for row in rows:
        record = row.as_record()
        writer.writerow([csv_cell(record[col]) for col in WORKLIST_COLUMNS])
    return buffer.getvalue()


def render_json(rows: Sequence[WorklistRow]) -> str:
    """The worklist as a JSON array of objects keyed by WORKLIST_COLUMNS (in column order), values
    from ``as_record``."""
    records = [row.as_record() for row in rows]
    return json.dumps([{col: record[col] for col in WORKLIST_COLUMNS} for record in records], indent=1) + "\n"


def quarantine_entry(row: WorklistRow) -> tuple[str, str]:
    """(path, reason) of an error row: the file its error names, if it names one inside the row's
    source path, and the reason without that prefix; else the source path and the whole error."""
    source, error = row.source_path or "", row.error or ""
    named, separator, reason = error.partition(": ")
    inside = named == source or named.startswith(source.rstrip("/\\") + os.sep)
    if separator and source and inside:
        return named, reason
    return source, error


def quarantine_entries(rows: Iterable[WorklistRow]) -> list[tuple[str, str]]:
    """The quarantine list: one (path, reason) per distinct error, sorted by path."""
    entries = {quarantine_entry(r) for r in rows if r.kind == RowKind.ERROR}
    return sorted(entries)


def render_quarantine(entries: Sequence[tuple[str, str]]) -> str:
    """The quarantine list as CSV text with a ``path,reason`` header."""
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(QUARANTINE_COLUMNS)
    writer.writerows(entries)
    return buffer.getvalue()


def remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporary files a killed run left behind (call while holding the run lock)."""
    for name in (CSV_NAME, JSON_NAME, QUARANTINE_NAME, FILES_NAME):
        for tmp in Path(out_dir).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def write_worklist(out_dir: Path, rows: Iterable[WorklistRow]) -> tuple[Path, Path]:
    """Sort the rows and atomically (re)write ``worklist.csv``, ``worklist.json`` and
    ``quarantine.csv``; returns the worklist's two paths."""
    ordered = sort_records(rows)
    csv_path, json_path = Path(out_dir) / CSV_NAME, Path(out_dir) / JSON_NAME
    write_atomic(csv_path, render_csv(ordered), private=True)
    write_atomic(json_path, render_json(ordered), private=True)
    write_atomic(Path(out_dir) / QUARANTINE_NAME, render_quarantine(quarantine_entries(ordered)), private=True)
    return csv_path, json_path


def read_worklist_csv(path: Path) -> list[dict[str, str]]:
    """The CSV worklist as a list of string dicts (for tests and tools), cells as they were before
    ``csv_safe``."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: csv_unsafe(v) for k, v in row.items()} for row in csv.DictReader(handle)]
