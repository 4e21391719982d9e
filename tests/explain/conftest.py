"""Fixtures for the explain tests: a small dev model, the shipped fracture model when present, samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medassist.models.networks import build_network
from medassist.models.registry import WEIGHTS_DIR, LoadedModel, load_model, spec_by_name
from medassist.models.spec import ModelSpec, PreprocessSpec

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DX = [
    "PAT01/STUDY1/SER1/IM0001",
    "PAT02/STUDY1/SER1/IM0001.dcm",
    "PAT03/STUDY1/SER1/IM0001",
    "PAT04/STUDY1/SER1/IM0001.dcm",
    "PAT05/STUDY1/SER1/IM0001",
    "PAT06/STUDY1/SER1/IM0001.dcm",
    "PAT07/STUDY1/SER1/IM0001",
    "PAT08/STUDY1/SER1/IM0001.dcm",
]
SHIPPED = "fracture_xray"


def dev_spec(input_size: int = 448, score_head: str = "image") -> ModelSpec:
    return ModelSpec(
        name="dev_localising_resnet", version="0", finding="fracture", labels=("no", "yes"),
        threshold=0.5, weights="none.pt", sha256="", network="localising_resnet",
        network_args={"widen_factor": 0.5}, preprocess=PreprocessSpec(input_size=input_size),
        modalities=("DX",), score_head=score_head,
    )


def dev_model(input_size: int = 448, seed: int = 0, score_head: str = "image") -> LoadedModel:
    """A randomly initialised LocalisingResNet (the shipped architecture), eval mode, CPU."""
    torch.manual_seed(seed)
    net = build_network("localising_resnet", {"widen_factor": 0.5}).eval()
    return LoadedModel(spec=dev_spec(input_size, score_head), network=net, device=torch.device("cpu"))


def shipped_available() -> bool:
    return (WEIGHTS_DIR / f"{SHIPPED}.json").is_file() and (WEIGHTS_DIR / f"{SHIPPED}.pt").is_file()


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shipped_model() -> LoadedModel:
    if not shipped_available():
        pytest.skip(f"shipped weights {SHIPPED}.pt not in {WEIGHTS_DIR} yet")
    return load_model(spec_by_name(SHIPPED), torch.device("cpu"))


@pytest.fixture(scope="session")
def model() -> LoadedModel:
    """The shipped fracture model when its weights are present, else the random-init dev model."""
    if shipped_available():
        return load_model(spec_by_name(SHIPPED), torch.device("cpu"))
    return dev_model()


def read_sample_dx(relative: str) -> np.ndarray:
    """A sample DX file's pixels as float32 0..1 (bright = dense)."""
    import pydicom

    ds = pydicom.dcmread(REPO / "samples" / "export" / relative)
    arr = ds.pixel_array.astype(np.float32)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() - arr
    low, high = float(arr.min()), float(arr.max())
    return (arr - low) / (high - low) if high > low else np.zeros_like(arr)


@pytest.fixture(scope="session")
def sample_images() -> list[np.ndarray]:
    images = []
    for rel in SAMPLE_DX:
        if (REPO / "samples" / "export" / rel).is_file():
            images.append(read_sample_dx(rel))
    if not images:
        pytest.skip("samples/export DX files are missing")
    return images
