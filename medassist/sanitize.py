"""Text that leaves the program, made safe: CSV cells a spreadsheet will not run, messages without credentials.

* ``csv_writer``: every CSV the package writes is written by it: each text cell through
  ``csv_safe``, RFC 4180 line ends; every reader of those files passes the cells back through
  ``csv_unsafe`` and gets the original text.
* ``redact_credentials``: every message, log line or exception that may carry a URL (PACS,
  send targets) goes through it, so a password in ``http://user:secret@host/`` is never shown.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import IO

# OWASP CSV injection: a cell starting with one of these is run as a formula by spreadsheets.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"  # shown as text by spreadsheets; also marks a cell csv_safe changed
REDACTED = "***"

# user info runs to the last "@" before the path (passwords hold "@" and "/" unencoded too);
# dicom://AET@host:port is left alone: its "user" is the AE title, not a credential
_URL_USERINFO = re.compile(r"(?P<scheme>\b(?!dicom://)[A-Za-z][A-Za-z0-9+.-]*://)[^\s?#]*@")
_SECRET_QUERY = re.compile(r"(?P<name>[?&](?:password|passwd|pwd|token|access_token|api_key|apikey|secret)=)[^&#\s]*",
                           re.IGNORECASE)


def csv_safe(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: text starting like a formula (``FORMULA_START``) or
    with an apostrophe gets an apostrophe in front (``csv_unsafe`` removes it). Anything that is not
    text (numbers: a negative score stays a number) passes unchanged."""
    if isinstance(value, str) and value.startswith((*FORMULA_START, QUOTE)):
        return QUOTE + value
    return value


class SafeCsvWriter:
    """``csv.writer`` that passes every cell through ``csv_safe`` (see ``csv_writer``)."""

    def __init__(self, handle: IO[str]) -> None:
        self._writer = csv.writer(handle, lineterminator="\r\n")

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([csv_safe(cell) for cell in row])

    def writerows(self, rows: Iterable[Iterable[object]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(handle: IO[str]) -> SafeCsvWriter:
    """The package's CSV writer: text cells ``csv_safe``, CRLF line ends (RFC 4180). CRLF because
    Python's writer quotes a cell holding a line end character only when it is in the line
    terminator: with LF line ends a carriage return inside a cell went out bare and split the row."""
    return SafeCsvWriter(handle)


def csv_unsafe(cell: object) -> object:
    """The text ``csv_safe`` was given, from the cell it wrote (exact for every string); anything
    that is not text (a csv reader's None or list for a short or long row) passes unchanged."""
    if isinstance(cell, str) and cell.startswith(QUOTE):
        return cell[1:]
    return cell


def redact_credentials(text: object) -> str:
    """``text`` with URL user info (``scheme://user:password@``) and secret-looking query
    parameters (``?password=``, ``token=``, ...) replaced by ``***``."""
    redacted = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", str(text))
    return _SECRET_QUERY.sub(lambda m: f"{m['name']}{REDACTED}", redacted)
