"""Model-parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

A saliency method that explains the *model* must give different maps once the model's learned
weights are replaced by random ones. ``randomised_copy`` re-initialises a copy of a model, either
all of it (``mode="full"``) or its top ``n_stages`` stages from the output down
(``mode="cascading"``); ``map_rank_correlation`` compares two maps by Spearman rank correlation.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from medassist.models.registry import LoadedModel


def randomisation_stages(network: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The network's stages from the output back to the input, for cascading randomisation.

    A network with a MONAI/torchvision-style ResNet ``backbone`` and ``*_head`` modules gives
    heads, layer4 .. layer1, stem. Any other network: its parameterised leaf modules, last first.
    """
    backbone = getattr(network, "backbone", None)
    layer_names = ("layer4", "layer3", "layer2", "layer1")
    if backbone is not None and all(hasattr(backbone, n) for n in layer_names):
        heads = [m for name, m in network.named_children() if name.endswith("head")]
        stages: list[tuple[str, list[nn.Module]]] = []
        if heads:
            stages.append(("heads", heads))
        if getattr(backbone, "fc", None) is not None:
            stages.insert(0, ("fc", [backbone.fc]))
        stages.extend((n, [getattr(backbone, n)]) for n in layer_names)
        stem = [getattr(backbone, n) for n in ("conv1", "bn1") if getattr(backbone, n, None) is not None]
        if stem:
            stages.append(("stem", stem))
        return stages
    leaves = [
        (name, [m]) for name, m in network.named_modules()
        if not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    ]
    return list(reversed(leaves))


def _reinitialise(module: nn.Module) -> None:
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()  # BatchNorm's also resets its running statistics


def randomised_copy(
    model: LoadedModel,
    *,
    mode: str = "full",
    n_stages: int | None = None,
    seed: int = 0,
) -> LoadedModel:
    """A copy of ``model`` (same architecture and spec) with re-initialised weights.

    ``mode="full"``: every stage; ``mode="cascading"``: the top ``n_stages`` stages (default 1)
    of ``randomisation_stages``, output first, as in Adebayo et al.'s cascading test. The original
    model is untouched. Initialisation is seeded, so the copy is reproducible.
    """
    if mode not in ("full", "cascading"):
        raise ValueError(f"unknown randomisation mode {mode!r}; expected 'full' or 'cascading'")
    network = copy.deepcopy(model.network)
    stages = randomisation_stages(network)
    if mode == "full":
        chosen = stages
    else:
        k = 1 if n_stages is None else int(n_stages)
        if not 1 <= k <= len(stages):
            raise ValueError(f"n_stages must be 1..{len(stages)}, got {n_stages}")
        chosen = stages[:k]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _, modules in chosen:
            for module in modules:
                _reinitialise(module)
    network.eval()
    spec = replace(model.spec, name=f"{model.spec.name}-randomised-{mode}", sha256="")
    return LoadedModel(spec=spec, network=network, device=model.device)


def downsample(map2d: np.ndarray, max_side: int = 64) -> np.ndarray:
    """Area-average a map so its longest side is at most ``max_side`` (no change when smaller)."""
    arr = np.asarray(map2d, dtype=np.float32)
    rows, cols = arr.shape
    factor = max(rows, cols) / max_side
    if factor <= 1:
        return arr
    size = (max(1, round(rows / factor)), max(1, round(cols / factor)))
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    return torch.nn.functional.adaptive_avg_pool2d(t, size)[0, 0].numpy()


def map_rank_correlation(a: np.ndarray, b: np.ndarray, *, max_side: int = 64) -> float:
    """Spearman rank correlation of two same-shaped maps after area-downsampling to ``max_side``.

    A constant map ranks nothing: 0.0 against a varying map, 1.0 against another constant map.
    """
    from scipy.stats import spearmanr

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    x, y = downsample(a, max_side).ravel(), downsample(b, max_side).ravel()
    flat_x, flat_y = np.ptp(x) == 0, np.ptp(y) == 0
    if flat_x or flat_y:
        return 1.0 if (flat_x and flat_y) else 0.0
    rho = float(spearmanr(x, y).statistic)
    return 0.0 if math.isnan(rho) else rho


def randomisation_check(
    model: LoadedModel,
    inputs: torch.Tensor,
    letterboxes: list,
    *,
    method: str = "gradcam",
    seeds: tuple[int, ...] = (0, 1, 2, 3),
    mode: str = "full",
    n_stages: int | None = None,
    max_side: int = 64,
) -> dict:
    """Spearman correlations between the model's maps and its randomised copies' maps, in source geometry.

    Two comparisons per image and seed:
    ``signed``: the maps before the ReLU (never constant, so never trivially 'different');
    ``rectified``: the maps as shipped, over the pairs where neither map is all-zero (a randomised
    head often makes the whole map negative, which the ReLU turns into a blank map).
    """
    from medassist.explain.saliency import saliency_map

    batch = torch.as_tensor(inputs)
    trained = {rect: saliency_map(model, batch, method=method, rectify=rect) for rect in (False, True)}
    signed: list[float] = []
    rectified: list[float] = []
    blank = 0
    for seed in seeds:
        other = randomised_copy(model, mode=mode, n_stages=n_stages, seed=seed)
        for rect, out in ((False, signed), (True, rectified)):
            maps = saliency_map(other, batch, method=method, rectify=rect)
            for a, b, box in zip(trained[rect], maps, letterboxes):
                if rect and (a.max() <= 0 or b.max() <= 0):
                    blank += 1
                    continue
                out.append(map_rank_correlation(box.to_source(a), box.to_source(b), max_side=max_side))

    def stats(values: list[float]) -> dict:
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            return {"n": 0, "mean": float("nan"), "median": float("nan"), "max": float("nan"), "values": []}
        return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
                "max": float(v.max()), "mean_abs": float(np.abs(v).mean()), "values": [round(float(x), 4) for x in v]}

    return {"method": method, "mode": mode, "seeds": list(seeds), "signed": stats(signed),
            "rectified": stats(rectified), "rectified_blank_pairs": blank}
