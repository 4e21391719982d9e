"""The shipped models: their specs, which series each applies to, and integrity-checked loading.

Each shipped model is a pair in ``medassist/models/weights/``: ``NAME.json`` (a ModelSpec) and the
weights file it names. Specs are read through ``integrity.trusted_spec``: a shipped spec must be
the released one (its sha256 pinned in ``medassist/models/released.py``), a spec from another
folder must be released or signed with the site key; every spec's values are validated. Weights
are checked against the pinned (shipped folder) or the spec's sha256 and loaded, from the bytes
that were checked, with ``torch.load(weights_only=True)``: a tampered or truncated file is refused
with a clear error.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medassist.datamodel import Series
from medassist.errors import MedassistError
from medassist.models.heads import score_probability
from medassist.models.integrity import SHIPPED_DIR, check_released_spec, is_shipped_folder, sha256_bytes, trusted_spec
from medassist.models.spec import ModelSpec

WEIGHTS_DIR = SHIPPED_DIR


def shipped_specs(weights_dir: Path = WEIGHTS_DIR) -> list[ModelSpec]:
    """Every model spec in ``weights_dir``, sorted by name, each released or signed (``trusted_spec``)."""
    return [trusted_spec(p) for p in sorted(Path(weights_dir).glob("*.json"))]


def spec_by_name(name: str, weights_dir: Path = WEIGHTS_DIR) -> ModelSpec:
    """One shipped spec by name; an unknown name raises MedassistError listing the known ones."""
    specs = {s.name: s for s in shipped_specs(weights_dir)}
    if name not in specs:
        raise MedassistError(f"unknown model {name!r}; shipped models: {', '.join(sorted(specs)) or 'none'}")
    return specs[name]


def applies_to(spec: ModelSpec, series: Series) -> bool:
    """Whether a model's scope (modality, body part) covers this series."""
    return scope_miss(spec, series) is None


def models_for(series: Series, specs: list[ModelSpec]) -> list[ModelSpec]:
    """The shipped models whose scope covers this series."""
    return [s for s in specs if applies_to(s, series)]


def scope_miss(spec: ModelSpec, series: Series) -> str | None:
    """Why ``spec`` does not cover this series (None when it does)."""
    modality = series.modality.upper()
    if modality not in spec.modalities:
        return f"{spec.name} reads {'/'.join(spec.modalities)}, not {modality or 'an unknown modality'}"
    return body_part_miss(spec, series.body_part)


def body_part_miss(spec: ModelSpec, body_part: str) -> str | None:
    """Why ``spec`` does not cover this body part (None when it does): excluded, or outside its list."""
    body = body_part.upper()
    if body and body in spec.excluded_body_parts:
        return f"{spec.name} was not trained or validated on {body}"
    if spec.body_parts and body not in spec.body_parts:
        known = ", ".join(b for b in spec.body_parts if b) or "none"
        return (f"{spec.name} was not trained or validated on {body or 'a series without a body part'} "
                f"(its body parts: {known})")
    return None


def not_applicable_reason(series: Series, specs: list[ModelSpec] = ()) -> str:
    """The worklist's explanation when no shipped model covers a series: the generic line, then why
    each model that reads this modality leaves it out (anatomy it was never trained on, say)."""
    body = series.body_part or "unknown body part"
    reason = f"no shipped model applies to {series.modality or 'unknown modality'} / {body}"
    misses = [scope_miss(s, series) for s in specs if series.modality.upper() in s.modalities]
    return reason + "".join(f"; {m}" for m in misses if m)


def verify_weights(spec: ModelSpec, weights_dir: Path = WEIGHTS_DIR) -> Path:
    """The weights path, after checking it exists and has the sha256 it must have."""
    return read_weights(spec, weights_dir)[0]


def read_weights(spec: ModelSpec, weights_dir: Path = WEIGHTS_DIR) -> tuple[Path, bytes]:
    """The weights path and bytes, checked against the spec's sha256 (in the shipped folder the
    spec must be the released one, so that is the pinned sha256)."""
    check_released_spec(spec, weights_dir)
    path = Path(weights_dir) / spec.weights
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise MedassistError(f"{path}: weights file for model {spec.name} is missing") from exc
    except OSError as exc:
        raise MedassistError(f"{path}: weights file for model {spec.name} cannot be read "
                             f"({exc.strerror or exc})") from exc
    digest = sha256_bytes(data)
    if digest != spec.sha256:
        whose = f"the released {spec.name} {spec.version}" if is_shipped_folder(weights_dir) else "the spec's"
        raise MedassistError(
            f"{path}: sha256 {digest[:16]}... does not match {whose} {spec.sha256[:16]}...; "
            "the weights were modified or corrupted and will not be used"
        )
    return path, data


def check_outputs(spec: ModelSpec, network: nn.Module, path: Path) -> None:
    """The network's outputs fit the spec's labels: output 0 is the finding's logit, and the type
    labels a spec declares (``validation.inference.type_labels``) are the outputs after it."""
    head = getattr(network, "image_head", None)
    outputs = getattr(head, "out_features", None)
    if outputs is None:
        return
    types = (spec.validation.get("inference") or {}).get("type_labels")
    expected = 1 + len(types) if isinstance(types, list) else None
    if outputs < 1 or (expected is not None and outputs != expected):
        raise MedassistError(f"{path}: network {spec.network} has {outputs} output(s); labels {list(spec.labels)} "
                             f"and type labels {types} need {expected or 1}, refused")


@dataclass
class LoadedModel:
    """A spec with its network, in eval mode on a device."""

    spec: ModelSpec
    network: nn.Module
    device: torch.device

    runtime = "torch"  # what scores: "torch" here, "onnx" in onnx_runtime.OnnxLoadedModel

    @property
    def scoring_network(self) -> nn.Module:
        """The network scoring calls ``forward_all`` on (volume scoring): the torch one here; saliency
        always uses ``network``."""
        return self.network

    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities of the finding for a (N, 1, S, S) batch, shape (N,), on the CPU."""
        return self.scores_and_features(batch)[0]

    @torch.no_grad()
    def scores_and_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (N,) on the CPU and the last feature map (N, C, h, w) on the device, float32.

        The feature map is what GradCAM attributes to: ``explain.saliency_map(features=...)``
        computes the map from it without a second pass through the backbone.
        """
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, enabled=self.device.type == "cuda"):
            feats = self.network.features(x)
            image_logits, cells = self.network.heads(feats)
        return score_probability(image_logits, cells, self.spec.score_head).cpu(), feats.float()


def load_model(spec: ModelSpec, device: torch.device, weights_dir: Path = WEIGHTS_DIR) -> LoadedModel:
    """Verify the weights' sha256, load the checked bytes with weights_only=True, check the outputs
    against the labels, return the model in eval mode with frozen parameters (inference only:
    saliency needs gradients of activations, not weights)."""
    path, data = read_weights(spec, weights_dir)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpicklable or foreign object is refused by weights_only
        raise MedassistError(f"{path}: refused to load weights ({exc})") from exc
    from medassist.models.networks import build_network  # here: MONAI's eager import costs ~3 s a process

    try:
        network = build_network(spec.network, spec.network_args)
    except (KeyError, TypeError, ValueError) as exc:
        raise MedassistError(f"{path}: model {spec.name}: cannot build network {spec.network!r} ({exc})") from exc
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise MedassistError(f"{path}: weights do not fit network {spec.network} ({exc})") from exc
    check_outputs(spec, network, path)
    network = network.to(device).eval().requires_grad_(False)
    # channels_last on every device: oneDNN's CPU convolutions run this network ~25% faster in
    # it (47 vs 63 ms per 448 px image on one core), and cuDNN's tensor cores want it
    network = network.to(memory_format=torch.channels_last)
    return LoadedModel(spec=spec, network=network, device=device)


def load_named_or_file(model: str | Path, device: torch.device) -> LoadedModel:
    """A model from a shipped name, or from a spec JSON path with its weights beside it (a candidate
    kept outside the repository); the weights are checked as ``load_model`` checks them."""
    from medassist.models.spec import read_spec

    path = Path(model)
    if path.suffix == ".json" and path.is_file():
        return load_model(read_spec(path), device, weights_dir=path.parent)
    return load_model(spec_by_name(str(model)), device, WEIGHTS_DIR)


def choose_device(requested: str = "auto") -> torch.device:
    """The one place that decides the device: CUDA when present (or asked for), else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise MedassistError(f"--device {requested}: CUDA is not available on this machine")
    return torch.device(requested)
