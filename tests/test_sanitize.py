"""medassist.sanitize: CSV cells a spreadsheet will not run, and credentials out of every message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medassist.sanitize import FORMULA_START, csv_safe, csv_unsafe, redact_credentials


@pytest.mark.parametrize("cell", ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\r=1", "'=1"])
def test_cells_a_spreadsheet_would_run_get_an_apostrophe(cell):
    safe = csv_safe(cell)
    assert safe == "'" + cell and not safe.startswith(FORMULA_START)
    assert csv_unsafe(safe) == cell


@pytest.mark.parametrize("value", ["1.2.840.1", "fracture", "", "a=b", 0.25, -0.5, 3, None, True])
def test_other_cells_and_numbers_pass_unchanged(value):
    assert csv_safe(value) == value  # a negative number stays a number: it is no formula


@given(st.text())
def test_csv_unsafe_undoes_csv_safe_for_every_string(text):
    assert csv_unsafe(csv_safe(text)) == text


def test_csv_unsafe_leaves_what_a_csv_reader_gives_for_ragged_rows():
    assert csv_unsafe(None) is None and csv_unsafe(["x"]) == ["x"]


@pytest.mark.parametrize(("text", "expected"), [
    ("http://user:secret@pacs:8042/dicom-web: PACS unreachable", "http://***@pacs:8042/dicom-web: PACS unreachable"),
    ("https://user:p@ss/w0rd@pacs/dicom-web", "https://***@pacs/dicom-web"),
    ("401 for url: http://u:secret@h/studies?limit=100", "401 for url: http://***@h/studies?limit=100"),
    ("https://token-only@pacs/x and http://plain/y", "https://***@pacs/x and http://plain/y"),
    ("http://pacs/dicom-web?access_token=secret&limit=1", "http://pacs/dicom-web?access_token=***&limit=1"),
    ("dicom://PACS@127.0.0.1:4242: association rejected", "dicom://PACS@127.0.0.1:4242: association rejected"),
    ("http://pacs:8042/dicom-web", "http://pacs:8042/dicom-web"),
])
def test_credentials_are_redacted_and_nothing_else(text, expected):
    assert redact_credentials(text) == expected
    assert "secret" not in redact_credentials(text)


def test_csv_writer_neutralises_every_text_cell_and_keeps_a_carriage_return_inside_its_cell():
    import csv
    import io

    from medassist.sanitize import csv_writer

    buffer = io.StringIO()
    csv_writer(buffer).writerows([["id", "note"], ["1.2", "\r=1+1"], [-0.5, "a\rb"]])
    back = list(csv.reader(io.StringIO(buffer.getvalue(), newline="")))
    assert back == [["id", "note"], ["1.2", "'\r=1+1"], ["-0.5", "a\rb"]]  # three rows: no cell split a row
    assert [csv_unsafe(cell) for cell in back[1]] == ["1.2", "\r=1+1"]
