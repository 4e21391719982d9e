"""``TriageOptions``: every choice a triage run takes besides its inputs and output folder.

One frozen value, built once (``medassist.cli.triage_options`` from the command line, or by a
caller) and passed unchanged through ``run_triage``/``triage_series``, the Ray backend
(``run_triage_ray``/``triage_series_ray``) and the PACS front ends (``triage_from_pacs``, the
DICOM listener). Its values are checked when it is made, with the messages the triage functions
gave before they took one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medassist.errors import MedassistError
from medassist.models.onnx_runtime import DEFAULT_RUNTIME, check_runtime
from medassist.models.registry import WEIGHTS_DIR
from medassist.triage.inputs import DEFAULT_SERIES_TIMEOUT

if TYPE_CHECKING:
    import torch

EXPLAIN_CHOICES = ("flagged", "all", "none")


@dataclass(frozen=True)
class TriageOptions:
    """How series are found, scored and explained, and how the run reports and saves its progress.

    The defaults are those of ``run_triage``; the command line's own defaults (``--workers``, the
    series timeout when not given) are applied by ``medassist.cli.triage_options``.
    """

    device: str | torch.device = "auto"
    batch_size: int = 8
    num_workers: int = 1
    weights_dir: str | Path = WEIGHTS_DIR
    runtime: str = DEFAULT_RUNTIME
    onnx_dir: str | Path | None = None
    """Scoring. ``device``: "auto" (CUDA when available), "cpu", "cuda" or a torch.device.
    ``batch_size``: images per model batch (>= 1). ``num_workers``: decoding worker processes
    (0: in this process; >= 0). ``weights_dir``: the models folder (shipped specs and weights).
    ``runtime``: what scores, "torch", "onnx" (ONNX Runtime on ``onnx_dir``/NAME.onnx, checked
    against the spec; saliency stays on torch) or "auto", the default (ONNX when it passes those
    checks, else torch); ``onnx_dir`` None: ``onnx_runtime.default_onnx_dir()``, where ``make install``
    exports; see ``medassist.models.onnx_runtime``."""

    modality_override: str | None = None
    series_timeout: float | None = DEFAULT_SERIES_TIMEOUT
    """Input. ``modality_override``: the modality of inputs that carry none (e.g. "MR" for NIfTI),
    used where the series are discovered (``run_triage``, ``run_triage_ray``). ``series_timeout``:
    seconds one series may spend decoding and preprocessing before it becomes an error row (None
    or 0: no limit)."""

    explain: str = "flagged"
    explain_method: str | None = None
    """Saliency. ``explain``: which findings get a saliency map, "flagged", "all" or "none"
    (written under OUT/saliency/, its path relative to OUT in the ``saliency_path`` column).
    ``explain_method``: the saliency method (one of ``explain.saliency.METHODS``); None: each
    model's own (``ModelSpec.saliency_method``, see ``explain.saliency.method_for``)."""

    progress: bool = True
    checkpoint_every: int = 50
    """Progress. ``progress``: a progress bar on stderr (only when stderr is a terminal).
    ``checkpoint_every``: rewrite the worklist after this many finished jobs at least (>= 1; see
    ``run.record_run``)."""

    ray_address: str | None = None
    actors: int | None = None
    """Ray backend only (``triage_series_ray``; the local backend ignores them). ``ray_address``:
    the cluster to join ("auto": the one this machine belongs to); None starts a local one.
    ``actors``: model actors (>= 1; default: one per GPU in the cluster, else one)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0 or self.checkpoint_every < 1:
            raise ValueError("batch_size and checkpoint_every must be >= 1, num_workers >= 0")
        if self.actors is not None and self.actors < 1:
            raise ValueError("batch_size, checkpoint_every and actors must be >= 1")
        check_runtime(self.runtime)
        if self.explain not in EXPLAIN_CHOICES:
            raise MedassistError(f"--explain {self.explain!r}: choose one of {', '.join(EXPLAIN_CHOICES)}")
