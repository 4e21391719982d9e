"""monitor.json's shape, report.html's escaping and plots, no patient identifiers, atomic writes."""

from __future__ import annotations

import base64
import json
import os
import re

import pytest

from medassist.monitor.report import ALERT_KEYS, HTML_NAME, JSON_NAME
from medassist.monitor.run import run_monitor


@pytest.fixture
def runs(tmp_path, mon):
    """A reference and a shifted current run (alerts), reviewed, with a body part that is markup."""
    ref = mon.write_run(tmp_path / "ref", mon.finding_records(mon.beta_scores(300, seed=1), prefix="ref"))
    records = mon.finding_records(mon.beta_scores(200, seed=2, shift=0.2), prefix="cur",
                                  body_parts=("HAND", "<script>alert(1)</script>"))
    cur = mon.write_run(tmp_path / "cur", records)
    mon.review(cur, records[:40], lambda i, r: "reject" if i % 2 else "accept")
    return ref, cur


def test_monitor_json_starts_with_alerts_of_exactly_the_documented_keys(tmp_path, runs):
    ref, cur = runs
    run_monitor([cur], tmp_path / "out", reference=ref)
    text = (tmp_path / "out" / JSON_NAME).read_text()
    report = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    assert next(iter(report)) == "alerts" and report["alerts"]
    assert {tuple(alert) for alert in report["alerts"]} == {ALERT_KEYS}
    assert {a["kind"] for a in report["alerts"]} >= {"drift", "flag_rate", "agreement"}
    assert report["reference"]["run"] == str(ref)
    [model] = report["models"]
    assert (model["model"], model["version"]) == ("fracture_xray", "1.1.0")
    assert model["runs"][0]["agreement"]["n_decided"] == 40
    assert report["subgroups"]["reported"] == ["body_part", "modality", "manufacturer", "sex", "age_band"]
    assert set(report["subgroups"]["not_available"]) == {"age"}  # only its band is carried


def test_the_report_names_no_patient_and_escapes_text_from_the_data(tmp_path, runs):
    ref, cur = runs
    run_monitor([cur], tmp_path / "out", reference=ref)
    page = (tmp_path / "out" / HTML_NAME).read_text()
    data = (tmp_path / "out" / JSON_NAME).read_text()
    for text in (page, data):
        assert "PAT-" not in text and "ACC-" not in text and "/data/" not in text  # IDs, accessions, file paths
        assert "2.25.cur" not in text  # no study or series UID either
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)</script>" in json.loads(data)["models"][0]["runs"][0]["scores_by_subgroup"]["body_part"]
    assert "fracture_xray" in page and "1.1.0" in page
    [png] = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n")


def test_a_failed_write_leaves_the_previous_report_whole(tmp_path, runs, monkeypatch):
    ref, cur = runs
    out = tmp_path / "out"
    run_monitor([cur], out, reference=ref)
    before = (out / JSON_NAME).read_bytes()

    def broken(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        run_monitor([cur, ref], out, reference=ref)
    assert (out / JSON_NAME).read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == sorted([HTML_NAME, JSON_NAME])  # no temporary file left
