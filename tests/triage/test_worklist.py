"""The worklist files (columns, ordering, atomic writes) and the resume journal."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from medassist.datamodel import WORKLIST_COLUMNS, IngestProblem, WorklistRow
from medassist.errors import MedassistError
from medassist.triage import TriageOptions, triage_series
from medassist.triage.journal import JOURNAL_NAME, Journal, result_key, run_lock
from medassist.triage.testing import write_throwaway_model
from medassist.triage.worklist import (
    NOT_APPLICABLE,
    QUARANTINE_NAME,
    remove_stale_temporaries,
    row_kind,
    sort_records,
    write_worklist,
)


def record(**values) -> WorklistRow:
    return WorklistRow(**{"study_uid": "", "series_uid": "", **values})  # every other column empty


def scored(name: str, score: float, threshold: float) -> WorklistRow:
    return record(source_path=name, model="m", finding="fracture", score=score, threshold=threshold,
                  flagged=score >= threshold)


def test_order_scored_flagged_first_then_not_applicable_then_errors():
    rows = [
        record(source_path="err", error="truncated"),
        scored("low", 0.2, 0.5),
        record(source_path="na", finding=NOT_APPLICABLE, error="no shipped model applies to US / unknown body part"),
        scored("high-unflagged", 0.9, 0.95),  # another model's threshold: not flagged
        scored("mid-flagged", 0.6, 0.5),
        scored("top-flagged", 0.8, 0.5),
        record(source_path="decode", model="m", finding="fracture", error="bad pixels"),
    ]
    ordered = [r.source_path for r in sort_records(rows)]
    assert ordered == ["top-flagged", "mid-flagged", "high-unflagged", "low", "na", "decode", "err"]
    assert [row_kind(r) for r in sort_records(rows)][-3:] == ["not_applicable", "error", "error"]


def test_a_row_has_the_same_kind_when_written_and_when_read_back():
    from dataclasses import replace

    from medassist.datamodel import RowKind

    cases = {
        RowKind.SCORED: scored("s", 0.7, 0.5),
        RowKind.NOT_APPLICABLE: record(source_path="na", finding=NOT_APPLICABLE,
                                       error="no shipped model applies to US / HAND"),
        RowKind.ERROR: record(source_path="decode", model="m", finding="fracture", error="bad pixels"),
    }
    for kind, rec in cases.items():
        rec = replace(rec, study_uid="1.2", series_uid="1.2.3")
        assert row_kind(rec) == kind and WorklistRow.from_record(rec.as_record()).kind == kind
    # a worklist written before the finding said so: no model named, the error says none applies
    legacy = replace(record(source_path="old", error="no model applies to CT"), study_uid="1", series_uid="1.1")
    assert row_kind(legacy) == RowKind.NOT_APPLICABLE == WorklistRow.from_record(legacy.as_record()).kind
    # an error that merely mentions a model is an error
    broken = replace(record(source_path="x", model="m", error="model m: no pixel data applies"), study_uid="1",
                     series_uid="1.2")
    assert row_kind(broken) == RowKind.ERROR == WorklistRow.from_record(broken.as_record()).kind


def test_csv_cells_a_spreadsheet_would_run_are_neutralised_and_read_back_as_they_were(tmp_path):
    """OWASP CSV injection: text from DICOM headers and file names lands in worklist.csv and quarantine.csv."""
    from medassist.datamodel import read_worklist
    from medassist.triage.worklist import read_worklist_csv

    risky = ["=HYPERLINK(\"http://evil\")", "+1", "-1+2", "@SUM(A1)", "\tTAB", "\r=CR", "'quoted"]
    rows = [record(study_uid="1.2", series_uid=f"1.2.{i}", patient_id=text, accession=text, body_part=text,
                   model="m", finding="fracture", score=0.5 + i / 100, threshold=0.5, flagged=True,
                   source_path=f"{text}.dcm") for i, text in enumerate(risky)]
    rows.append(record(source_path="-bad.dcm", error="=cmd|' /C calc'!A0"))
    csv_path, json_path = write_worklist(tmp_path, rows)

    for name in (csv_path.name, QUARANTINE_NAME):
        with open(tmp_path / name, newline="") as fh:
            cells = [cell for line in csv.reader(fh) for cell in line]
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells), name
    assert "-bad.dcm" in (tmp_path / QUARANTINE_NAME).read_text()
    # Readers get the original text back: the raw cells exactly, and the rows read from the CSV
    # equal those read from the JSON (which has no quoting; read_worklist strips both alike).
    raw = read_worklist_csv(csv_path)
    assert sorted(r["patient_id"] for r in raw[:len(risky)]) == sorted(risky)
    assert raw[-1]["error"] == "=cmd|' /C calc'!A0"
    from_json = read_worklist(json_path)
    assert read_worklist(csv_path) == from_json
    assert {r.patient_id for r in from_json} >= {t.strip() for t in risky}


def test_csv_has_exact_columns_and_true_false(tmp_path):
    rows = [scored("a", 0.7, 0.5), scored("b", 0.1, 0.5), record(source_path="c", error="broken")]
    csv_path, json_path = write_worklist(tmp_path, rows)
    with open(csv_path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        body = list(reader)
    assert tuple(header) == WORKLIST_COLUMNS
    flagged = [line[header.index("flagged")] for line in body]
    assert flagged == ["true", "false", ""]
    loaded = json.loads(json_path.read_text())
    assert [tuple(r) for r in loaded] == [WORKLIST_COLUMNS] * 3
    assert [r["flagged"] for r in loaded] == [True, False, None]
    assert loaded[2]["score"] is None


def test_a_worklist_write_that_fails_keeps_the_old_worklist(tmp_path, monkeypatch):
    # the writer itself is medassist.atomic (tests/test_atomic.py); here: the worklist goes through it
    target = tmp_path / "worklist.csv"
    target.write_text("old\n")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_worklist(tmp_path, [scored("a", 0.7, 0.5)])
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worklist.csv"], "no temporary left behind"


def test_quarantine_lists_every_error_row_with_the_file_it_names(tmp_path):
    rows = [
        scored("/in/good.dcm", 0.7, 0.5),
        record(source_path="/in/us.dcm", finding=NOT_APPLICABLE, error="no shipped model applies to US / HAND"),
        record(source_path="/in/cut.dcm", error="pixel data truncated: expected 512 bytes, found 100"),
        record(source_path="/in/ser", series_uid="1.2", model="m", finding="fracture",
               error="/in/ser/IM2: JPEG 2000 stream undecodable: failed to decode image (pylibjpeg)"),
        record(source_path="/in/ser", series_uid="1.2", model="m2", finding="tumour",
               error="/in/ser/IM2: JPEG 2000 stream undecodable: failed to decode image (pylibjpeg)"),
        record(source_path="/in/slow.dcm", model="m", finding="fracture",
               error="/in/slow.dcm: decoding took longer than 120 s (--series-timeout)"),
    ]
    write_worklist(tmp_path, rows)

    with open(tmp_path / QUARANTINE_NAME, newline="") as fh:
        listed = list(csv.reader(fh))
    assert listed == [
        ["path", "reason"],
        ["/in/cut.dcm", "pixel data truncated: expected 512 bytes, found 100"],
        ["/in/ser/IM2", "JPEG 2000 stream undecodable: failed to decode image (pylibjpeg)"],  # once for two models
        ["/in/slow.dcm", "decoding took longer than 120 s (--series-timeout)"],
    ]
    write_worklist(tmp_path, rows[:2])
    assert (tmp_path / QUARANTINE_NAME).read_text() == "path,reason\n", "rewritten with the worklist"


def test_a_killed_run_leaves_no_quarantine_temporary_behind(tmp_path):
    stale = tmp_path / f".{QUARANTINE_NAME}.abc123.tmp"
    stale.write_text("path,reason\n/half")
    remove_stale_temporaries(tmp_path)
    assert not stale.exists()


def test_journal_ignores_a_torn_last_line_and_appends_on_a_fresh_line(tmp_path):
    path = tmp_path / JOURNAL_NAME
    with Journal(path) as journal:
        journal.record(result_key("1.1", "m", "1"), {"score": 0.1})
        journal.record(result_key("1.2", "m", "1"), {"score": 0.2})
    with open(path, "a") as fh:
        fh.write('{"key": ["result", "1.3", "m", "1"], "status": "do')  # killed mid-write
    with Journal(path) as journal:
        assert journal.finished(result_key("1.1", "m", "1")) == {"score": 0.1}
        assert journal.finished(result_key("1.3", "m", "1")) is None
        journal.record(result_key("1.3", "m", "1"), {"score": 0.3})
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    with Journal(path) as journal:
        assert journal.finished(result_key("1.3", "m", "1")) == {"score": 0.3}


def test_journal_errors_are_retried_and_identical_lines_not_repeated(tmp_path):
    path = tmp_path / JOURNAL_NAME
    key = result_key("1.1", "m", "1")
    with Journal(path) as journal:
        journal.record(key, {"error": "x"}, status="error")
        assert journal.finished(key) is None
        journal.record(key, {"score": 0.5})
        journal.record(key, {"score": 0.5})
        assert journal.finished(key) == {"score": 0.5}
    assert len(path.read_text().splitlines()) == 2


def test_a_second_run_into_the_same_folder_is_refused_while_one_runs(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(MedassistError, match="another triage run"):
            with run_lock(tmp_path):
                pass


def run(series, out, model_dir, **kwargs):
    problems = kwargs.pop("problems", [])
    options = TriageOptions(device="cpu", batch_size=4, num_workers=0, weights_dir=model_dir, progress=False, **kwargs)
    return triage_series(series, problems, out, options)


def rows_of(out: Path) -> list[dict]:
    with open(out / "worklist.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_rerun_resumes_without_duplicates_or_loss(tmp_path, model_dir, series_factory):
    series = [series_factory(i) for i in range(6)] + [series_factory(90, modality="US")]
    problems = [IngestProblem("/data/bad.dcm", "pixel data truncated")]
    out = tmp_path / "out"
    first = run(series, out, model_dir, problems=problems, checkpoint_every=2)
    rows = rows_of(out)
    journal_lines = (out / JOURNAL_NAME).read_text().splitlines()
    assert len(rows) == 8 and first.n_findings == 6 and first.n_errors == 1 and first.n_not_applicable == 1

    again = run(series, out, model_dir, problems=problems)
    assert again.n_resumed == 6
    assert rows_of(out) == rows
    assert (out / JOURNAL_NAME).read_text().splitlines() == journal_lines, "nothing re-journaled"


def test_killed_run_resumes_from_the_journal(tmp_path, model_dir, series_factory):
    series = [series_factory(i) for i in range(6)]
    full = tmp_path / "full"
    run(series, full, model_dir)
    expected = rows_of(full)

    # A run killed after 3 series, in the middle of writing the 4th journal line.
    out = tmp_path / "killed"
    out.mkdir()
    lines = (full / JOURNAL_NAME).read_text().splitlines(keepends=True)
    (out / JOURNAL_NAME).write_text("".join(lines[:3]) + lines[3][:25])
    summary = run(series, out, model_dir)
    assert summary.n_resumed == 3
    assert rows_of(out) == expected
    keys = [tuple(json.loads(line)["key"]) for line in (out / JOURNAL_NAME).read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 6


def test_a_resumed_row_is_written_as_the_uninterrupted_run_wrote_it(tmp_path, model_dir, series_factory):
    import dataclasses

    # text a reader would strip (a file name ending in a space) comes back from the journal as written
    series = [dataclasses.replace(series_factory(i), source_path=f"/data/scan {i}.dcm ") for i in range(3)]
    out = tmp_path / "out"
    run(series, out, model_dir)
    written = {name: (out / name).read_bytes() for name in ("worklist.csv", "worklist.json", QUARANTINE_NAME)}
    assert b"scan 0.dcm " in written["worklist.json"]
    again = run(series, out, model_dir)
    assert again.n_resumed == 3
    assert {name: (out / name).read_bytes() for name in written} == written


def test_new_model_version_rescores(tmp_path, model_dir, series_factory):
    series = [series_factory(i) for i in range(3)]
    out = tmp_path / "out"
    run(series, out, model_dir)
    models_v2 = tmp_path / "models_v2"
    write_throwaway_model(models_v2, version="0.0.2-test", seed=1)
    summary = run(series, out, models_v2)
    rows = rows_of(out)
    assert summary.n_resumed == 0
    assert len(rows) == 3 and {r["model_version"] for r in rows} == {"0.0.2-test"}


def test_checkpoints_space_out_as_the_worklist_grows(tmp_path, model_dir, series_factory, monkeypatch):
    import medassist.triage.run as triage_run

    sizes: list[int] = []
    real_write = triage_run.write_worklist

    def counting_write(out_dir, records):
        records = list(records)
        sizes.append(len(records))
        return real_write(out_dir, records)

    monkeypatch.setattr(triage_run, "write_worklist", counting_write)
    series = [series_factory(i) for i in range(60)]
    run(series, tmp_path / "out", model_dir, checkpoint_every=2)
    gaps = [b - a for a, b in zip(sizes[1:], sizes[2:-1])]  # after the plan's first write, before the last
    assert sizes[-1] == 60 and len(rows_of(tmp_path / "out")) == 60
    assert gaps and all(gap >= max(2, size // 10) for gap, size in zip(gaps, sizes[2:-1]))
    assert len(sizes) < 2 + 60 // 2, "a fixed interval of 2 would have written 30 times"


def test_journal_lines_reach_the_file_at_once_and_are_fsynced_in_groups(tmp_path, monkeypatch):
    import medassist.triage.journal as journal_module

    synced: list[int] = []
    real_fsync = journal_module.os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / JOURNAL_NAME
    with Journal(path, sync_interval_s=3600) as journal:
        for i in range(100):
            journal.record(result_key(f"1.{i}", "m", "1"), {"score": i / 100})
            assert len(path.read_text().splitlines()) == i + 1, "each line is flushed before the run goes on"
        assert synced == []
        journal.sync()
        assert len(synced) == 1
    assert len(synced) == 2  # and once more on close
    with Journal(path, sync_interval_s=0.0) as journal:  # an interval of 0: every line is fsynced
        journal.record(result_key("2.1", "m", "1"), {"score": 0.5})
    assert len(synced) == 4
