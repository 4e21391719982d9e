"""The protocol file, the locked split and the acceptance criteria, piece by piece."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
import yaml

from medassist.adapt.data import is_locked, read_reviewed_cases
from medassist.adapt.fit import evaluate, fit_threshold, metrics_at
from medassist.adapt.protocol import REPO_PROTOCOL, Protocol, load_protocol, parse_protocol
from medassist.errors import MedassistError


def test_the_yaml_holds_the_built_in_defaults():
    protocol, source = load_protocol()
    assert source == str(REPO_PROTOCOL)
    assert protocol == Protocol()
    raw = yaml.safe_load(REPO_PROTOCOL.read_text())
    flat = {k for k in raw if k != "may_change"} | {f"change_{k}" for k in raw["may_change"]}
    assert flat == {f.name for f in fields(Protocol)}  # every field is written (and explained) in the file


@pytest.mark.parametrize("raw, message", [
    ({"locked_shares": 0.3}, "unknown key(s) locked_shares"),
    ({"may_change": {"threshold": True, "preprocessing": True}}, "unknown key(s) may_change.preprocessing"),
    ({"may_change": {"weights": True}}, "may_change.weights must be false"),
    ({"may_change": {"recalibration": True}}, "recalibration is not implemented"),
    ({"locked_share": 1.5}, "locked_share must lie between 0 and 1"),
    ({"min_reviewed": 2.5}, "min_reviewed must be a whole number"),
    ({"specificity_margin": "ten"}, "specificity_margin must be a number"),
])
def test_bad_protocols_are_refused_naming_the_key(tmp_path, raw, message):
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(MedassistError, match=f"{path}: .*{message}".replace("(", r"\(").replace(")", r"\)")):
        load_protocol(path)


def test_the_protocol_hash_follows_its_values():
    assert Protocol().sha256 == parse_protocol({}).sha256
    assert Protocol().sha256 != parse_protocol({"specificity_margin": 0.05}).sha256


def test_the_locked_split_is_deterministic_disjoint_and_about_the_share(site, tmp_path):
    db = site.write_history(tmp_path / "run1", site.site_cases(400, seed=5))
    first = read_reviewed_cases([db], site.MODEL, site.RELEASED.version, locked_share=0.3)
    again = read_reviewed_cases([db], site.MODEL, site.RELEASED.version, locked_share=0.3)
    keys = lambda cases: {(c.series_uid, c.finding) for c in cases}  # noqa: E731
    assert keys(first.locked) == keys(again.locked) and keys(first.fit) == keys(again.fit)
    assert not keys(first.locked) & keys(first.fit)
    assert len(first.locked) + len(first.fit) == 400
    assert 0.22 < len(first.locked) / 400 < 0.38
    # the side depends on series UID and model only: not on the run, the log or the version
    assert all(is_locked(c.series_uid, site.MODEL, 0.3) == c.locked for c in first.cases)
    other = site.write_history(tmp_path / "run2", site.site_cases(400, seed=6), version="1.0.0")
    renamed = read_reviewed_cases([other], site.MODEL, "1.0.0", locked_share=0.3)
    assert keys(renamed.locked) == keys(first.locked)
    assert any(is_locked(c.series_uid, "tumor_mri", 0.3) != c.locked for c in first.cases)


def test_locked_cases_never_move_the_fitted_threshold(site, tmp_path):
    cases = site.site_cases(300, seed=1)
    protocol = Protocol()
    base = read_reviewed_cases([site.write_history(tmp_path / "a", cases)], site.MODEL, site.RELEASED.version,
                               locked_share=protocol.locked_share)
    locked_rows = {c.series_uid for c in base.locked}
    flipped = [not truth if f"2.25.s.2.{i}" in locked_rows else truth for i, (_, truth) in enumerate(cases)]
    changed = read_reviewed_cases([site.write_history(tmp_path / "b", cases, calls=flipped)], site.MODEL,
                                  site.RELEASED.version, locked_share=protocol.locked_share)
    assert [c.positive for c in changed.locked] != [c.positive for c in base.locked]
    assert fit_threshold(changed.fit, site.RELEASED.threshold, protocol).threshold == \
        fit_threshold(base.fit, site.RELEASED.threshold, protocol).threshold


def test_the_fitted_threshold_reaches_the_target_on_the_fit_set(site, tmp_path):
    protocol = Protocol()
    cases = read_reviewed_cases([site.write_history(tmp_path / "a", site.site_cases(300, seed=1))], site.MODEL,
                                site.RELEASED.version, locked_share=protocol.locked_share)
    fit = fit_threshold(cases.fit, site.RELEASED.threshold, protocol)
    assert fit.at_threshold.sensitivity >= protocol.target_sensitivity
    higher = metrics_at(cases.fit, fit.threshold + 1e-6, protocol.confidence)
    assert higher.sensitivity < protocol.target_sensitivity  # the highest threshold that reaches it


def test_a_raised_threshold_fails_the_sensitivity_criterion(site, tmp_path):
    protocol = Protocol()
    cases = read_reviewed_cases([site.write_history(tmp_path / "a", site.site_cases(300, seed=1))], site.MODEL,
                                site.RELEASED.version, locked_share=protocol.locked_share)
    fit = fit_threshold(cases.fit, site.RELEASED.threshold, protocol)
    raised = replace(fit, threshold=0.75)  # within max_threshold_change of 0.47, but misses many positives
    verdict = evaluate(cases.locked, raised, protocol)
    assert not verdict.accepted
    assert [c.name for c in verdict.failed] == ["sensitivity_lower_bound"]
    failed = verdict.failed[0]
    assert failed.measured == verdict.adapted.sensitivity_ci[0] < failed.limit == verdict.released.sensitivity_ci[0]
    assert evaluate(cases.locked, fit, protocol).accepted


def test_decisions_are_dropped_and_counted_by_reason(site, tmp_path):
    from dataclasses import replace

    from medassist.datamodel import read_worklist
    from medassist.triage.worklist import write_worklist

    cases = site.site_cases(20, seed=8)
    first = site.write_history(tmp_path / "a", cases)
    again = site.write_history(tmp_path / "b", cases)  # the same series reviewed again in another run
    rows = read_worklist(first.parent)
    kept = [r for r in rows if r.series_uid != "2.25.s.2.0"]  # one finding gone from the worklist ...
    kept = [replace(r, score=round(r.score + 0.01, 6)) if r.series_uid == "2.25.s.2.1" else r
            for r in kept]  # ... and one re-scored after its review
    write_worklist(first.parent, kept)
    read = read_reviewed_cases([first, again, first.parent], site.MODEL, site.RELEASED.version, locked_share=0.3)
    assert read.dropped == {
        "not in the worklist beside its log": 1,
        "the log's score differs from the worklist's (the run was re-triaged after review)": 1,
        "the same finding in another log (the later decision is used)": 18,
    }
    assert len(read.logs) == 2 and len(read.cases) == 20  # the folder named the same log as its file
    assert {c.log for c in read.cases if c.series_uid in ("2.25.s.2.0", "2.25.s.2.1")} == {str(again)}
