"""Fixtures for the triage tests: a throwaway model and in-memory series."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from medassist.datamodel import Image, Series
from medassist.errors import MedassistError
from medassist.triage.testing import synthetic_radiograph, write_throwaway_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A models folder holding one random-weights 'fracture_xray' (input 64, widen 0.25)."""
    folder = tmp_path_factory.mktemp("models")
    write_throwaway_model(folder)
    return folder


def _image(seed: int) -> Image:
    pixels = synthetic_radiograph(80, 60, seed).astype(np.float32)[None]
    return Image(pixels=pixels, display=pixels / 255.0)


def _broken(path: str) -> Image:
    raise MedassistError(f"{path}: pixel data could not be decoded")


def make_series(index: int, *, modality: str = "DX", body_part: str = "HAND", broken: bool = False) -> Series:
    """An in-memory series whose loader makes a synthetic radiograph (or raises, when broken)."""
    path = f"/data/series{index:03d}.dcm"
    loader = functools.partial(_broken, path) if broken else functools.partial(_image, index)
    return Series(
        study_uid=f"1.2.3.{index}", series_uid=f"1.2.3.{index}.1", patient_id=f"PID{index}",
        accession=f"ACC{index}", modality=modality, body_part=body_part, source_path=path,
        paths=(path,), loader=loader,
    )


@pytest.fixture
def series_factory():
    """``make_series`` as a fixture (conftest modules are not imported by name)."""
    return make_series
