"""Reading the project's YAML files (training configs, monitor limits, the adaptation protocol) and
checking their numbers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from medassist.errors import MedassistError


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed content of ``path`` (None for an empty file); a MedassistError naming the file and
    ``what`` it was meant to be when it cannot be read or is not YAML."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MedassistError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise MedassistError(f"{path}: not a readable YAML file: {exc}") from exc


def read_config(path: str | Path | None, default: Path, what: str) -> tuple[Any, str | None]:
    """A config's mapping (empty for an empty file) from ``path``, or else from ``default`` (the
    checkout's ``configs/`` file), and where it came from; where is None when neither was given or
    found (the caller uses its built-in defaults)."""
    if path is None:
        if not default.is_file():
            return {}, None
        path = default
    return read_yaml(path, what) or {}, str(path)


def checked_number(name: str, value: Any, where: str, *, whole_from: int | None = None, open_unit: bool = False,
                   closed: tuple[float, float] | None = None, minimum: float | None = None) -> int | float:
    """A config value that must be a number (never a bool), with the error naming ``where`` and the key.

    ``whole_from``: a whole number of at least this (returned as int). Otherwise a finite float, and
    ``open_unit``: strictly between 0 and 1; ``closed``: inside ``lo..hi``; ``minimum``: not below it.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MedassistError(f"{where}: {name} must be a number, got {value!r}")
    if whole_from is not None:
        if not float(value).is_integer() or value < whole_from:
            raise MedassistError(f"{where}: {name} must be a whole number >= {whole_from}, got {value!r}")
        return int(value)
    number = float(value)
    if not math.isfinite(number):
        raise MedassistError(f"{where}: {name} must be finite, got {value!r}")
    if open_unit and not 0 < number < 1:
        raise MedassistError(f"{where}: {name} must lie between 0 and 1, got {value!r}")
    if closed is not None and not closed[0] <= number <= closed[1]:
        raise MedassistError(f"{where}: {name} must lie in {closed[0]:g}..{closed[1]:g}, got {value!r}")
    if minimum is not None and number < minimum:
        raise MedassistError(f"{where}: {name} must not be negative, got {value!r}" if minimum == 0 else
                             f"{where}: {name} must be at least {minimum:g}, got {value!r}")
    return number
