"""The shipped models exported to ONNX once per test session, and real sample inputs, for the ONNX tests."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

from medassist.models.registry import spec_by_name
from medassist.models.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "export"
MODELS = ("fracture_xray", "tumor_mri")


@functools.lru_cache(maxsize=None)
def exported_dir() -> Path:
    """A folder holding NAME.onnx for every shipped model, written by ``medassist export-model``."""
    from medassist.cli import main

    folder = Path(tempfile.mkdtemp(prefix="medassist-onnx-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    assert main(["export-model", *MODELS, "--format", "onnx", "--out", str(folder)]) == 0
    return folder


@functools.lru_cache(maxsize=None)
def sample_series():
    """The series of the bundled sample export (discovered once)."""
    from medassist.ingest import discover_series

    series, _problems = discover_series([SAMPLES])
    return tuple(series)


def radiograph_inputs(spec: ModelSpec, n: int = 4) -> torch.Tensor:
    """Network inputs (n, 1, S, S) of the first ``n`` sample radiographs the model applies to."""
    from medassist.models.registry import models_for
    from medassist.families import family_for

    family = family_for(spec)
    inputs = [family.prepare(s.load(), spec).inputs for s in sample_series() if models_for(s, [spec])][:n]
    assert len(inputs) == n
    return torch.cat(inputs)


def volume_inputs(spec: ModelSpec):
    """The prepared sample MR volume (``tumor.PreparedVolume``) of the first sample series it applies to."""
    from medassist.models.registry import models_for
    from medassist.models.tumor import prepare_volume

    series = next(s for s in sample_series() if models_for(s, [spec]))
    return prepare_volume(spec, series.load())


def shipped(name: str) -> ModelSpec:
    return spec_by_name(name)
