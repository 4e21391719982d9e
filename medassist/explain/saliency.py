"""Saliency maps for a finding (Captum), in the network-input frame and in the source geometry.

Three Captum methods attribute the finding's logit (the logit of the spec's ``score_head``; see
``medassist.models.heads.score_logit`` for what it is under each head), and a fourth map is the
network's own localising output:

* ``gradcam`` (default, cheap): ``LayerGradCam`` on ``network.target_layer``, ReLU, upsampled
  bilinearly to the input size with ``LayerAttribution.interpolate``. The parameters are frozen
  and the input does not require gradients, so autograd records nothing below the target layer:
  the backward pass runs from the logit to the target layer's output only (pool + linear).
  Given the target layer's output from the scoring pass (``features=``), the forward pass is
  the heads only as well (``FindingFromFeatures``): the same map at a small fraction of the cost.
* ``cell_probability``: the cell head's finding probability per cell (the head that the training
  masks supervise, e.g. FracAtlas's fracture polygons), upsampled bilinearly like GradCAM; from the
  scoring pass's feature map it costs the heads only. Not an attribution: where the model says the
  finding is, which is what its ``cell_max`` and ``mean`` scores read. The fracture model's map
  (its spec's ``saliency_method``): its peak lands on the fracture more often than GradCAM's
  (``benchmarks/fracture_localisation_maps.py``).
* ``integrated_gradients``: zero (black) baseline, ``n_steps`` Gauss-Legendre steps, evaluated
  ``internal_batch_size`` at a time so memory stays bounded.
* ``occlusion``: a zero patch of ``window`` pixels slid by ``stride``; attribution is the drop in
  the logit.

Every map is rectified (ReLU: evidence *for* the finding; ``rectify=False`` keeps the sign),
float32, shaped (N, S, S), in the letterboxed network-input frame. ``to_source_geometry`` undoes
the centred pad and the resize (``Letterbox.to_source``) so a map lies on the source pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from medassist.models.heads import parse_score_head, score_logit
from medassist.models.registry import LoadedModel
from medassist.preprocess.transforms import Letterbox

METHODS = ("gradcam", "cell_probability", "integrated_gradients", "occlusion")
DEFAULT_METHOD = "gradcam"


def method_for(spec, requested: str | None = None) -> str:
    """The saliency method for a model: ``requested`` when given, else the spec's own
    (``ModelSpec.saliency_method``); an unknown name raises ValueError."""
    return known_method(requested or spec.saliency_method)


def known_method(method: str) -> str:
    """``method`` when it is one of ``METHODS``; ValueError naming the known ones otherwise."""
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; known: {', '.join(METHODS)}")
    return method


# Defaults sized for a 448 input on a CPU.
IG_STEPS = 32
IG_INTERNAL_BATCH = 8
OCCLUSION_WINDOW = 32
OCCLUSION_STRIDE = 16
OCCLUSION_FORWARD_BATCH = 32  # images per forward pass while occluding (batch x perturbations)


class FindingLogit(nn.Module):
    """The finding's logit as a (N, 1) output, from the head the spec scores with.

    Hooks placed on the wrapped network's layers (GradCAM) see the same forward pass.
    """

    def __init__(self, network: nn.Module, score_head: str = "image") -> None:
        super().__init__()
        self.network = network
        self.score_head = parse_score_head(score_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return score_logit(*self.network.forward_all(x), self.score_head)


class FindingFromFeatures(nn.Module):
    """The finding's logit from the target layer's output: the network's heads only.

    ``feature_map`` (an identity) stands for the target layer, so ``LayerGradCam`` on it gives
    exactly the GradCAM of the whole network at its target layer, from the feature map the
    scoring pass already computed: no second pass through the backbone.
    """

    def __init__(self, network: nn.Module, score_head: str = "image") -> None:
        super().__init__()
        self.network = network
        self.score_head = parse_score_head(score_head)
        self.feature_map = nn.Identity()

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return score_logit(*self.network.heads(self.feature_map(feats)), self.score_head)


@contextmanager
def frozen(network: nn.Module) -> Iterator[nn.Module]:
    """Parameters without gradients and the network in eval mode, restored afterwards (only what
    had to change is touched: triage calls this per flagged finding).

    With no parameter requiring a gradient, autograd builds no graph through the layers below the
    one a method attributes to, and never computes parameter gradients.
    """
    thawed = [p for p in network.parameters() if p.requires_grad]  # a loaded model has none
    was_training = network.training
    for p in thawed:
        p.requires_grad_(False)
    if was_training:
        network.eval()
    try:
        yield network
    finally:
        for p in thawed:
            p.requires_grad_(True)
        if was_training:
            network.train()


def _as_batch(inputs: torch.Tensor, size: int | None) -> torch.Tensor:
    """(S, S), (N, S, S) (one prepare_2d output is (1, S, S)) or (N, 1, S, S) -> (N, 1, S, S) float32."""
    x = torch.as_tensor(inputs)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
        raise ValueError(f"expected inputs shaped (N, 1, S, S), got {tuple(inputs.shape)}")
    if size is not None and x.shape[-1] != size:
        raise ValueError(f"inputs are {x.shape[-1]} px square; the model expects {size}")
    return x.float()


def saliency_map(
    model: LoadedModel,
    inputs: torch.Tensor,
    *,
    method: str = DEFAULT_METHOD,
    n_steps: int = IG_STEPS,
    internal_batch_size: int = IG_INTERNAL_BATCH,
    window: int = OCCLUSION_WINDOW,
    stride: int = OCCLUSION_STRIDE,
    perturbations_per_eval: int | None = None,
    rectify: bool = True,
    features: torch.Tensor | None = None,
) -> np.ndarray:
    """Saliency of the finding for a batch of network inputs.

    ``inputs``: (N, 1, S, S) as ``prepare_2d`` makes them (stacked), on any device.
    Returns (N, S, S) float32, non-negative, in the network-input (letterboxed) frame.
    ``n_steps``/``internal_batch_size`` apply to integrated gradients, ``window``/``stride``/
    ``perturbations_per_eval`` to occlusion; ``features`` serves GradCAM and ``cell_probability``.
    ``rectify=False`` keeps the sign (evidence against
    the finding is negative); only the sanity checks want that. ``features``: the target layer's
    output for these inputs from the scoring pass (``LoadedModel.scores_and_features``); GradCAM
    then runs on the heads only, which costs a small fraction of a forward pass.
    """
    known_method(method)
    x = _as_batch(inputs, model.spec.preprocess.input_size).to(model.device)
    x = x.contiguous(memory_format=torch.channels_last)  # the loaded network's layout (load_model)
    size = x.shape[-1]
    if method == "cell_probability" and features is None:
        # the scoring runtime's own cell logits (ONNX Runtime's too): no torch network is needed
        attr = _cell_probability_of(model.scoring_network, x)
    else:
        attr = _attribution(model, x, method, n_steps=n_steps, internal_batch_size=internal_batch_size,
                            window=window, stride=stride, perturbations_per_eval=perturbations_per_eval,
                            rectify=rectify, features=features)
    attr = attr.detach().float()
    if attr.shape[-2:] != (size, size):
        from captum.attr import LayerAttribution

        attr = LayerAttribution.interpolate(attr, (size, size), interpolate_mode="bilinear")
    maps = attr.sum(dim=1)  # channels -> one map
    if rectify:
        maps = torch.relu(maps)  # keep the evidence for the finding
    return maps.cpu().numpy().astype(np.float32, copy=False)


def _attribution(model: LoadedModel, x: torch.Tensor, method: str, *, n_steps: int, internal_batch_size: int,
                 window: int, stride: int, perturbations_per_eval: int | None, rectify: bool,
                 features: torch.Tensor | None) -> torch.Tensor:
    """The raw attribution (N, C, h, w) of ``method`` on the torch network (Captum needs gradients)."""
    network = model.network
    forward = FindingLogit(network, model.spec.score_head)
    with frozen(network):
        if method == "cell_probability":
            assert features is not None
            attr = _cell_probability_from_features(network, features.to(model.device))
        elif method == "gradcam" and features is not None:
            attr = _gradcam_from_features(network, model.spec.score_head, features.to(model.device), rectify)
        elif method == "gradcam":
            attr = _gradcam(forward, network, x, rectify)
        elif method == "integrated_gradients":
            attr = _integrated_gradients(forward, x, n_steps, internal_batch_size)
        else:
            attr = _occlusion(forward, x, window, stride, perturbations_per_eval)
    return attr


def _target_layer(network: nn.Module) -> nn.Module:
    layer = getattr(network, "target_layer", None)
    if not isinstance(layer, nn.Module):
        raise ValueError(f"{type(network).__name__} has no target_layer for GradCAM")
    return layer


def _gradcam(forward: nn.Module, network: nn.Module, x: torch.Tensor, rectify: bool = True) -> torch.Tensor:
    from captum.attr import LayerGradCam

    x = x.detach().requires_grad_(False)
    cam = LayerGradCam(forward, _target_layer(network))
    return cam.attribute(x, target=0, relu_attributions=rectify)


def _gradcam_from_features(network: nn.Module, score_head: str, feats: torch.Tensor, rectify: bool = True
                           ) -> torch.Tensor:
    from captum.attr import LayerGradCam

    heads = FindingFromFeatures(network, score_head)
    cam = LayerGradCam(heads, heads.feature_map)
    return cam.attribute(feats.detach().float(), target=0, relu_attributions=rectify)


def _cell_probability_from_features(network: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """The cell head's probabilities (N, 1, h, w) from the feature map at the target layer."""
    with torch.no_grad():
        _, cells = network.heads(feats.float())
        return torch.sigmoid(cells.float())


def _cell_probability_of(scoring_network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The cell head's probabilities (N, 1, h, w) from whatever scores (``forward_all``: the torch
    network, or ``onnx_runtime.OnnxNetwork``)."""
    with torch.no_grad():
        _, cells = scoring_network.forward_all(x)
        return torch.sigmoid(cells.float())


def _integrated_gradients(forward: nn.Module, x: torch.Tensor, n_steps: int, internal_batch_size: int) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(forward)
    return ig.attribute(
        x.detach(),
        baselines=torch.zeros_like(x),
        target=0,
        n_steps=int(n_steps),
        internal_batch_size=max(1, int(internal_batch_size)),
    )


def _occlusion(
    forward: nn.Module, x: torch.Tensor, window: int, stride: int, perturbations_per_eval: int | None
) -> torch.Tensor:
    from captum.attr import Occlusion

    channels = x.shape[1]
    if perturbations_per_eval is None:
        perturbations_per_eval = max(1, OCCLUSION_FORWARD_BATCH // x.shape[0])
    with torch.no_grad():
        return Occlusion(forward).attribute(
            x.detach(),
            sliding_window_shapes=(channels, window, window),
            strides=(channels, stride, stride),
            baselines=0.0,
            target=0,
            perturbations_per_eval=perturbations_per_eval,
        )


def to_source_geometry(map_input: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """One (S, S) input-frame map -> the source image's (rows, cols): crop the pad, undo the resize
    (``families.radiograph.letterbox_to_source``, negatives clipped)."""
    from medassist.families.radiograph import letterbox_to_source

    return letterbox_to_source(map_input, letterbox)


def saliency_maps_source(
    model: LoadedModel,
    inputs: torch.Tensor,
    letterboxes: Sequence[Letterbox],
    *,
    method: str = DEFAULT_METHOD,
    **options,
) -> list[np.ndarray]:
    """``saliency_map`` for a batch, each map returned in its own source geometry."""
    maps = saliency_map(model, inputs, method=method, **options)
    if len(letterboxes) != len(maps):
        raise ValueError(f"{len(maps)} inputs but {len(letterboxes)} letterboxes")
    return [to_source_geometry(m, box) for m, box in zip(maps, letterboxes)]
