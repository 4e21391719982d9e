"""The worklist row's subgroup columns: the age-band rule, sex and study date as carried, and
worklists written before those columns existed."""

from __future__ import annotations

import csv
import json

import pytest

from medassist.datamodel import (AGE_BANDS, WORKLIST_COLUMNS, Series, WorklistRow, age_band, dicom_date, dicom_sex,
                                 read_worklist)
from medassist.triage.worklist import write_worklist

OLD_COLUMNS = ("study_uid", "series_uid", "patient_id", "accession", "modality", "body_part", "model",
               "model_version", "finding", "score", "threshold", "flagged", "slices", "saliency_path",
               "source_path", "error")  # the worklist's columns before manufacturer, sex, age_band, study_date


@pytest.mark.parametrize(("age", "band"), [
    ("045Y", "40-64"), ("017Y", "0-17"), ("018Y", "18-39"), ("039Y", "18-39"), ("040Y", "40-64"),
    ("064Y", "40-64"), ("065Y", "65+"), ("102Y", "65+"), ("006M", "0-17"), ("215M", "0-17"), ("216M", "18-39"),
    ("010W", "0-17"), ("003D", "0-17"), (" 070y ", "65+"), (52, "40-64"), (17.9, "0-17"),
])
def test_age_band_of_dicom_age_strings_and_years(age, band):
    assert age_band(age) == band and band in AGE_BANDS


@pytest.mark.parametrize("age", [None, "", "   ", "Y", "45 years", "-12Y", "12X", "1e3", "045Y045Y", "4.5.0Y",
                                 float("nan"), float("inf"), object()])
def test_a_missing_or_malformed_age_is_an_empty_band_never_an_exception(age):
    assert age_band(age) == ""


def test_sex_and_study_date_are_kept_only_in_their_dicom_forms():
    assert [dicom_sex(v) for v in ("M", "f", " O ", "", None, "X", "male")] == ["M", "F", "O", "", "", "", ""]
    assert dicom_date("20261130") == "20261130"
    assert [dicom_date(v) for v in ("2026-11-30", "20261331", "20260230", "2026113", "", None)] == [""] * 6


def _series(**values) -> Series:
    base = dict(study_uid="2.25.1", series_uid="2.25.1.1", patient_id="P", accession="A", modality="DX",
                body_part="HAND", source_path="/data/1.dcm", paths=("/data/1.dcm",), loader=lambda: None)
    return Series(**{**base, **values})


def test_a_row_carries_the_band_never_the_age():
    row = WorklistRow.for_series(_series(sex="f", age="045Y", manufacturer=" ACME ", study_date="20261130"))
    assert (row.sex, row.age_band, row.manufacturer, row.study_date) == ("F", "40-64", "ACME", "20261130")
    assert "045Y" not in json.dumps(row.as_record())
    bare = WorklistRow.for_series(_series(age="old", study_date="30.11.2026"))
    assert (bare.sex, bare.age_band, bare.manufacturer, bare.study_date) == ("", "", "", "")


def test_the_new_columns_round_trip_through_csv_and_json(tmp_path):
    row = WorklistRow.for_series(_series(sex="M", age="070Y", manufacturer="=HYPERLINK(1)", study_date="20261130"),
                                 model="m", model_version="1", finding="fracture", score=0.7, threshold=0.5,
                                 flagged=True)
    csv_path, json_path = write_worklist(tmp_path, [row])
    with open(csv_path, newline="", encoding="utf-8") as handle:
        assert tuple(next(csv.reader(handle))) == WORKLIST_COLUMNS
    for path in (csv_path, json_path):
        [back] = read_worklist(path)
        assert (back.manufacturer, back.sex, back.age_band, back.study_date) == ("=HYPERLINK(1)", "M", "65+",
                                                                                 "20261130")


def test_a_worklist_written_before_the_new_columns_still_reads(tmp_path):
    values = ["2.25.1", "2.25.1.1", "P", "A", "DX", "HAND", "m", "1", "fracture", "0.7", "0.5", "true", "", "",
              "/data/1.dcm", ""]
    with open(tmp_path / "worklist.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(OLD_COLUMNS)
        writer.writerow(values)
    (tmp_path / "old.json").write_text(json.dumps([dict(zip(OLD_COLUMNS, values))]))
    for path in (tmp_path / "worklist.csv", tmp_path / "old.json"):
        [row] = read_worklist(path)
        assert (row.body_part, row.score, row.flagged) == ("HAND", 0.7, True)
        assert (row.manufacturer, row.sex, row.age_band, row.study_date) == ("", "", "", "")


def test_a_record_read_back_as_written_gives_the_same_record():
    # the triage journal: a row read back must be written again byte for byte (a resumed run's
    # worklist is the uninterrupted one), even where the text has spaces a reader would strip
    row = WorklistRow(study_uid="2.25.1", series_uid="2.25.1.1", patient_id=" P ", modality="dx",
                      source_path="/data/scan.dcm ", model="m", model_version="1", finding="fracture",
                      score=0.1234567, threshold=0.5, flagged=False, slices=(3, 1))
    record = row.as_record()
    assert WorklistRow.from_record(record, as_written=True).as_record() == record
    read = WorklistRow.from_record(record)  # a reader's view: stripped, modality upper-cased
    assert (read.patient_id, read.modality, read.source_path) == ("P", "DX", "/data/scan.dcm")
