"""A tiny untrained tumour network with its spec, shared by the tumour model tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medassist.datamodel import Geometry, Image

from medassist.models.networks import build_network
from medassist.models.spec import ModelSpec, PreprocessSpec


def tiny_tumour_model(input_size: int = 32, validation: dict | None = None) -> tuple[nn.Module, ModelSpec]:
    """A seeded 4-output LocalisingResNet (presence + 3 types) in eval mode and a spec scoring its cell head."""
    torch.manual_seed(0)
    args = {"layers": [1, 1, 1, 1], "widen_factor": 0.125, "num_outputs": 4}
    net = build_network("localising_resnet", args).eval()
    spec = ModelSpec(
        name="tumor_test", version="0", finding="brain_tumor", labels=("no_tumor", "tumor"), threshold=0.5,
        weights="x.pt", sha256="", network="localising_resnet", network_args=args,
        preprocess=PreprocessSpec(input_size=input_size), modalities=("MR",), score_head="cell_max",
        validation=validation or {},
    )
    return net, spec


def head_image(n: int = 20, size: int = 48, spacing: tuple[float, float, float] = (5.0, 1.0, 1.0)) -> Image:
    """A synthetic axial head: an ellipsoid of 100 on 2 (n slices of size x size), LPS geometry with
    ``spacing`` (slice, row, column mm)."""
    z, y, x = np.mgrid[0:n, 0:size, 0:size]
    r = np.sqrt(((z - n / 2) / (n / 2)) ** 2 + ((y - size / 2) / (size * 0.45)) ** 2 + ((x - size / 2) / (size * 0.4)) ** 2)
    pixels = np.where(r < 1, 100.0, 2.0).astype(np.float32)
    affine = np.diag([0.0, 0.0, 0.0, 1.0])
    affine[2, 0], affine[1, 1], affine[0, 2] = spacing
    return Image(pixels=pixels, display=pixels / 100, geometry=Geometry(spacing=spacing, affine=affine))
