"""The monitor's limits: when a figure becomes an alert. Defaults here; ``configs/monitor.yaml``
holds the same values with a comment on each (a test keeps the two equal).

A limits file may set any subset of the fields; an unknown name or a bad value is a
MedassistError naming the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from medassist.errors import MedassistError
from medassist.yamlfile import checked_number, read_config

REPO_LIMITS = Path(__file__).resolve().parents[2] / "configs" / "monitor.yaml"


@dataclass(frozen=True)
class Limits:
    """Alert limits and the statistics' settings (see configs/monitor.yaml for the reasoning)."""

    min_studies: int = 30
    psi_bins: int = 10
    min_reference_per_bin: int = 5
    psi_moderate: float = 0.10
    psi_major: float = 0.25
    ks_alpha: float | None = None
    flag_rate_confidence: float = 0.99
    kappa_floor: float = 0.40
    min_reviewed: int = 20
    bootstrap_resamples: int = 1000
    confidence_level: float = 0.95
    seed: int = 0


_COUNTS = {"min_studies": 1, "psi_bins": 2, "min_reference_per_bin": 1, "min_reviewed": 1, "bootstrap_resamples": 0,
           "seed": 0}  # integer fields and their smallest allowed value
_OPEN_UNIT = ("ks_alpha", "flag_rate_confidence", "confidence_level")  # strictly between 0 and 1
_OPTIONAL = ("ks_alpha",)


def load_limits(path: str | Path | None = None) -> tuple[Limits, str]:
    """The limits from ``path`` (default: the checkout's configs/monitor.yaml when there is one,
    else the built-in defaults), and where they came from, in words."""
    raw, where = read_config(path, REPO_LIMITS, "monitor limits")
    if where is None:
        return Limits(), "built-in defaults (no configs/monitor.yaml beside this medassist)"
    return parse_limits(raw, where=where), where


def parse_limits(raw: Any, *, where: str = "monitor limits") -> Limits:
    """A Limits from a mapping of field names to values, every value checked."""
    if not isinstance(raw, dict):
        raise MedassistError(f"{where}: expected a mapping of limit names to values")
    known = {f.name for f in fields(Limits)}
    unknown = sorted(set(map(str, raw)) - known)
    if unknown:
        raise MedassistError(f"{where}: unknown limit(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = {name: _checked(name, value, where) for name, value in raw.items()}
    limits = Limits(**values)
    if limits.psi_moderate > limits.psi_major:
        raise MedassistError(f"{where}: psi_moderate {limits.psi_moderate} is above psi_major {limits.psi_major}")
    return limits


def _checked(name: str, value: Any, where: str) -> Any:
    if value is None and name in _OPTIONAL:
        return None
    return checked_number(name, value, where, whole_from=_COUNTS.get(name), open_unit=name in _OPEN_UNIT,
                          closed=(-1.0, 1.0) if name == "kappa_floor" else None,
                          minimum=0.0 if name.startswith("psi_") else None)
