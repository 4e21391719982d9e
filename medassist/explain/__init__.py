"""explain stage: Captum saliency maps for a finding, mapped back to the source geometry.

Per batch, from triage::

    maps = saliency_map(model, inputs)                  # (N, S, S) input frame, gradcam by default
    for m, box, display, stem in zip(maps, letterboxes, displays, stems):
        npy, png = write_saliency(to_source_geometry(m, box), display, out_dir, stem)

or ``explain_and_write`` for the same in one call. ``sanity`` holds the model-randomisation check,
``localisation`` the pointing game / energy-inside evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medassist.explain.output import render_overlay, saliency_stem, write_saliency
from medassist.explain.saliency import (
    DEFAULT_METHOD,
    METHODS,
    FindingLogit,
    saliency_map,
    saliency_maps_source,
    to_source_geometry,
)
from medassist.models.registry import LoadedModel
from medassist.preprocess.transforms import Letterbox


def explain_and_write(
    model: LoadedModel,
    inputs: torch.Tensor,
    letterboxes: Sequence[Letterbox],
    displays: Sequence[np.ndarray],
    out_dir: str | Path,
    stems: Sequence[str],
    *,
    method: str = DEFAULT_METHOD,
    **options,
) -> list[tuple[Path, Path]]:
    """Saliency for a batch of inputs, each mapped to its source geometry and written.

    ``inputs``: (N, 1, S, S); ``letterboxes``, ``displays`` (source-geometry 0..1 images) and
    ``stems`` (``saliency_stem``): one per input. Returns [(npy_path, png_path), ...] in order.
    """
    n = len(inputs)
    if not (len(letterboxes) == len(displays) == len(stems) == n):
        raise ValueError(
            f"{n} inputs but {len(letterboxes)} letterboxes, {len(displays)} displays, {len(stems)} stems"
        )
    maps = saliency_maps_source(model, inputs, letterboxes, method=method, **options)
    return [write_saliency(m, d, out_dir, s) for m, d, s in zip(maps, displays, stems)]


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "FindingLogit",
    "explain_and_write",
    "render_overlay",
    "saliency_map",
    "saliency_maps_source",
    "saliency_stem",
    "to_source_geometry",
    "write_saliency",
]
