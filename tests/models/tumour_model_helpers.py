"""A tiny untrained tumour network with its spec, shared by the tumour model tests."""

from __future__ import annotations

import torch
from torch import nn

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
