"""What the trainers share: config reading, repository-relative paths, file hashes, the cell targets
of box supervision and writing the shipped model (weights, ModelSpec JSON). ``train`` (the fracture
trainer and the dispatch by task) and ``tumor_train`` both build on it; neither imports the other
back."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from medassist.errors import MedassistError
from medassist.models.spec import InputKind, ModelSpec, PreprocessSpec
from medassist.yamlfile import read_yaml

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]


def load_config(path: str | Path) -> dict:
    """Read a training config; relative data/output paths are resolved from the repository root."""
    return read_yaml(path, "training config")


def resolve(path: str) -> Path:
    """A config path, relative to the repository root unless absolute."""
    p = Path(path)
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def initial_weights(init: Mapping) -> dict:
    """The state dict a run starts from (``train.init_from: {weights, sha256}``): weights trained
    here earlier (e.g. the released version), checked against their sha256, loaded with
    ``weights_only=True``. Nothing comes from outside the project."""
    path = resolve(init["weights"])
    found = sha256_of(path)
    if found != init["sha256"]:
        raise MedassistError(f"train.init_from: {path} has sha256 {found}, the config expects {init['sha256']}")
    log.info("starting from %s (sha256 %s...)", path, found[:12])
    return torch.load(path, map_location="cpu", weights_only=True)


def cell_targets(masks: torch.Tensor, cell_shape: tuple[int, int]) -> torch.Tensor:
    """A cell is positive when any mask pixel falls inside it."""
    return F.adaptive_max_pool2d(masks, cell_shape)


def optimise(opt: torch.optim.Optimizer, sched, loss: torch.Tensor) -> float:
    """One training step of both training loops: gradients of ``loss``, the optimiser and the
    learning-rate schedule stepped; returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def log_progress(epoch: int, step: int, steps_per_epoch: int, running: float, batch_size: int,
                 started: float, logger: logging.Logger) -> None:
    """Every 20th step: the epoch's mean loss so far and the images per second."""
    if step % 20 == 0:
        logger.info("epoch %d step %d/%d loss %.4f (%.1f img/s)", epoch, step, steps_per_epoch,
                    running / (step + 1), (step + 1) * batch_size / (time.time() - started))


def write_shipped_model(config: dict, net: nn.Module, pre: PreprocessSpec, *, threshold: float,
                        score_head: str, validation: dict) -> ModelSpec:
    """Save weights atomically, hash them, and write the ModelSpec JSON and model card."""
    out_dir = resolve(config["output"]["weights_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{config['name']}.pt"
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = weights.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(weights)
    spec = ModelSpec(
        name=config["name"],
        version=str(config["version"]),
        finding=config["finding"],
        labels=tuple(config["labels"]),
        threshold=round(float(threshold), 6),
        weights=weights.name,
        sha256=sha256_of(weights),
        network=config["network"]["name"],
        network_args=config["network"]["args"],
        preprocess=pre,
        modalities=tuple(config["scope"]["modalities"]),
        body_parts=tuple(config["scope"].get("body_parts", [])),
        excluded_body_parts=tuple(config["scope"].get("excluded_body_parts", [])),
        score_head=score_head,
        saliency_method=config.get("saliency_method", "gradcam"),
        input_kind=config.get("input_kind", InputKind.IMAGE2D.value),
        training_data=config["provenance"]["training_data"],
        licence=config["provenance"]["licence"],
        training_command=f"medassist train configs/{config['name']}.yaml",
        validation=validation,
    )
    (out_dir / f"{config['name']}.json").write_text(spec.to_json())
    log.info("wrote %s (sha256 %s)", weights, spec.sha256)
    return spec
