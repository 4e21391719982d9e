"""Writing a benchmark's figures: ``OUT.json`` (every number) and ``OUT.md`` (the table), one place."""

from __future__ import annotations

import json
from pathlib import Path


def write_figures(out: Path, figures: dict, markdown: str) -> None:
    """Write ``out``.json and ``out``.md (creating the folder) and print the markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
