"""The limits file: configs/monitor.yaml equals the built-in defaults; bad files are refused."""

from __future__ import annotations

from dataclasses import fields

import pytest
import yaml

from medassist.errors import MedassistError
from medassist.monitor.limits import REPO_LIMITS, Limits, load_limits, parse_limits


def test_the_shipped_limits_file_sets_every_default():
    raw = yaml.safe_load(REPO_LIMITS.read_text())
    assert set(raw) == {f.name for f in fields(Limits)}
    limits, source = load_limits()
    assert limits == Limits() and source == str(REPO_LIMITS)
    assert limits.psi_major == 0.25 and limits.kappa_floor == 0.40


def test_every_limit_has_a_comment_above_it():
    lines = REPO_LIMITS.read_text().splitlines()
    commented = {line.split(":")[0] for i, line in enumerate(lines)
                 if line and not line.startswith("#") and any(lines[j].startswith("#") for j in range(max(0, i - 3), i))}
    assert commented == {f.name for f in fields(Limits)}


def test_a_partial_file_overrides_only_what_it_sets(tmp_path):
    path = tmp_path / "limits.yaml"
    path.write_text("min_studies: 5\nks_alpha: 0.001\n")
    limits, source = load_limits(path)
    assert limits.min_studies == 5 and limits.ks_alpha == 0.001 and limits.psi_major == Limits().psi_major
    assert source == str(path)


@pytest.mark.parametrize("raw, words", [
    ({"psi_limit": 0.2}, "unknown limit(s) psi_limit"),
    ({"min_studies": 0}, "min_studies must be a whole number >= 1"),
    ({"min_studies": 2.5}, "min_studies must be a whole number"),
    ({"psi_major": "high"}, "psi_major must be a number"),
    ({"flag_rate_confidence": 1.0}, "flag_rate_confidence must lie between 0 and 1"),
    ({"kappa_floor": 2}, "kappa_floor must lie in -1..1"),
    ({"psi_moderate": 0.3}, "psi_moderate 0.3 is above psi_major 0.25"),
    ([1, 2], "expected a mapping"),
])
def test_bad_limits_are_refused_naming_the_field(raw, words):
    with pytest.raises(MedassistError, match="limits.yaml") as info:
        parse_limits(raw, where="limits.yaml")
    assert words in str(info.value)
