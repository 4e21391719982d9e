"""The other-source radiographs in ``../shared/data/fracture_external_dev`` (MURA-like upper limb).

Used to measure how a fracture model trained on FracAtlas holds up on another hospital's images
and to choose between candidates; never for training (its images appear to derive from MURA,
whose terms allow research use only), never copied into the repo.

Labels are YOLO files, one per image (classes in ``data.yaml``): an image with any fracture class
is fractured, with the region its class names; an empty or missing label file, or the ``humerus``
anatomy box alone (class 4), is an image without an annotated fracture, region unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medassist.ingest.images import load_jpeg_grayscale
from medassist.models.heads import HeadProbabilities, concatenate, head_probabilities
from medassist.models.spec import PreprocessSpec
from medassist.preprocess.transforms import prepare_2d

# class 4 ("humerus") is an anatomy box, not a fracture: it is not a fracture region
FRACTURE_REGIONS = {0: "elbow", 1: "fingers", 2: "forearm", 3: "humerus", 5: "shoulder", 6: "wrist"}
# each region's DICOM Body Part Examined, as a model's scope names it
REGION_BODY_PARTS = {"elbow": "ELBOW", "fingers": "FINGER", "forearm": "FOREARM", "humerus": "HUMERUS",
                     "shoulder": "SHOULDER", "wrist": "WRIST"}


@dataclass(frozen=True)
class ExternalRecord:
    """One other-source radiograph: its file, whether a fracture is annotated, and where."""

    path: Path
    fractured: int
    region: str


def read_external(root: str | Path) -> list[ExternalRecord]:
    """Every image of the set with its label, sorted by file name."""
    root = Path(root)
    records = []
    for image in sorted((root / "images").glob("*.jpg")):
        label_file = root / "labels" / f"{image.stem}.txt"
        classes = set()
        if label_file.exists():
            classes = {int(line.split()[0]) for line in label_file.read_text().splitlines() if line.split()}
        regions = sorted(FRACTURE_REGIONS[c] for c in classes if c in FRACTURE_REGIONS)
        records.append(ExternalRecord(image, int(bool(regions)), "+".join(regions) if regions else "unknown"))
    return records


def prepare_external(records: list[ExternalRecord], spec: PreprocessSpec) -> np.ndarray:
    """The network inputs (N, S, S) float32, prepared exactly as inference prepares a radiograph."""
    inputs = np.zeros((len(records), spec.input_size, spec.input_size), dtype=np.float32)
    for i, rec in enumerate(records):
        grey = load_jpeg_grayscale(rec.path).astype(np.float32)
        inputs[i] = prepare_2d(grey, spec)[0][0].numpy()
    return inputs


@torch.no_grad()
def score_inputs(net: nn.Module, inputs: np.ndarray, batch_size: int = 32) -> HeadProbabilities:
    """Every score head's probabilities (numpy, (N,)) for prepared (N, S, S) float inputs."""
    net.eval()
    device = next(net.parameters()).device
    parts = []
    for start in range(0, len(inputs), batch_size):
        x = torch.from_numpy(inputs[start : start + batch_size])[:, None].to(device)
        parts.append(head_probabilities(*net.forward_all(x.contiguous(memory_format=torch.channels_last))))
    return concatenate(parts)
