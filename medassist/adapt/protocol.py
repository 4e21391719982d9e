"""The adaptation protocol: what may change, how it is fitted, what must hold (configs/adapt_protocol.yaml).

Loaded into a frozen :class:`Protocol`; the defaults here equal the YAML's (a test keeps them equal).
An unknown key, a missing section value of the wrong type, or a value out of range is a
MedassistError naming the file and the key. ``Protocol.sha256`` identifies the values that governed an
adaptation (canonical JSON of every field), stored in the adapted spec.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from medassist.errors import MedassistError
from medassist.yamlfile import checked_number, read_config

REPO_PROTOCOL = Path(__file__).resolve().parents[2] / "configs" / "adapt_protocol.yaml"
MAY_CHANGE_KEYS = ("threshold", "recalibration", "weights")


@dataclass(frozen=True)
class Protocol:
    """The predetermined change-control protocol (see configs/adapt_protocol.yaml for the reasoning)."""

    change_threshold: bool = True
    change_recalibration: bool = False
    change_weights: bool = False
    target_sensitivity: float = 0.80
    max_threshold_change: float = 0.30
    threshold_min: float = 0.02
    threshold_max: float = 0.98
    locked_share: float = 0.30
    min_reviewed: int = 100
    min_positives: int = 20
    min_negatives: int = 20
    min_locked_positives: int = 10
    min_locked_negatives: int = 10
    confidence: float = 0.95
    sensitivity_margin: float = 0.0
    specificity_margin: float = 0.10

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def sha256(self) -> str:
        """sha256 of the protocol's values (canonical JSON): the same values, the same hash."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


_COUNTS = ("min_reviewed", "min_positives", "min_negatives", "min_locked_positives", "min_locked_negatives")
_OPEN_UNIT = ("target_sensitivity", "locked_share", "confidence", "threshold_min", "threshold_max")
_MARGINS = ("max_threshold_change", "sensitivity_margin", "specificity_margin")  # 0..1


def load_protocol(path: str | Path | None = None) -> tuple[Protocol, str]:
    """The protocol from ``path`` (default: this checkout's configs/adapt_protocol.yaml, else the
    built-in defaults) and where it came from."""
    raw, where = read_config(path, REPO_PROTOCOL, "adaptation protocol")
    if where is None:
        return Protocol(), "built-in defaults (no configs/adapt_protocol.yaml beside this medassist)"
    return parse_protocol(raw, where=where), where


def parse_protocol(raw: Any, *, where: str = "adaptation protocol") -> Protocol:
    """A Protocol from the YAML's mapping (``may_change`` a mapping of its own), every value checked."""
    if not isinstance(raw, dict):
        raise MedassistError(f"{where}: expected a mapping of protocol keys to values")
    known = sorted(f.name for f in fields(Protocol) if not f.name.startswith("change_"))
    unknown = sorted(str(k) for k in raw if k != "may_change" and k not in known)
    if unknown:
        raise MedassistError(f"{where}: unknown key(s) {', '.join(unknown)} (known: may_change, {', '.join(known)})")
    flat: dict[str, Any] = {k: v for k, v in raw.items() if k != "may_change"}
    if "may_change" in raw:
        value = raw["may_change"]
        if not isinstance(value, dict):
            raise MedassistError(f"{where}: may_change must be a mapping of {', '.join(MAY_CHANGE_KEYS)}")
        unknown = sorted(str(k) for k in value if k not in MAY_CHANGE_KEYS)
        if unknown:
            raise MedassistError(f"{where}: unknown key(s) {', '.join('may_change.' + k for k in unknown)} "
                                 f"(known: {', '.join(MAY_CHANGE_KEYS)})")
        for part, allowed in value.items():
            if not isinstance(allowed, bool):
                raise MedassistError(f"{where}: may_change.{part} must be true or false, got {allowed!r}")
            flat[f"change_{part}"] = allowed
    values = {name: _checked(name, value, where) for name, value in flat.items()}
    protocol = Protocol(**values)
    if protocol.change_weights:
        raise MedassistError(f"{where}: may_change.weights must be false: adaptation never changes the network's "
                             "weights (retrain and release a new version instead)")
    if protocol.change_recalibration:
        raise MedassistError(f"{where}: may_change.recalibration is not implemented (a monotone recalibration "
                             "cannot change which findings are flagged); set it to false")
    if not protocol.change_threshold:
        raise MedassistError(f"{where}: may_change.threshold is false, so nothing may change: nothing to adapt")
    if protocol.threshold_min >= protocol.threshold_max:
        raise MedassistError(f"{where}: threshold_min {protocol.threshold_min} is not below threshold_max "
                             f"{protocol.threshold_max}")
    return protocol


def _checked(name: str, value: Any, where: str) -> Any:
    if name.startswith("change_"):
        return value  # checked above
    return checked_number(name, value, where, whole_from=1 if name in _COUNTS else None,
                          open_unit=name in _OPEN_UNIT, closed=(0.0, 1.0) if name in _MARGINS else None)
