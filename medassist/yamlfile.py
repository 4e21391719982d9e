"""Reading the project's YAML files (training configs, monitor limits, the adaptation protocol)."""

from __future__ import annotations

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
