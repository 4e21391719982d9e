"""Training from a YAML config: `medassist train configs/<model>.yaml`.

Writes the weights, their sha256 and ModelSpec JSON into the package's weights folder, and the
validation metrics into the model card. Checkpoints each epoch so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from medassist.audit.metrics import binary_metrics, threshold_for_sensitivity, youden_threshold
from medassist.models.networks import build_network
from medassist.models.spec import ModelSpec, PreprocessSpec

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]


def load_config(path: str | Path) -> dict:
    """Read a training config; relative data/output paths are resolved from the repository root."""
    return yaml.safe_load(Path(path).read_text())


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


# --- augmentation: batch-wise on tensors, the same warp for images and masks -----------------


def random_affine_grid(batch: int, size: int, aug: dict, gen: torch.Generator) -> torch.Tensor:
    """Sampling grids for random rotation, scale, translation and horizontal flip."""
    angle = (torch.rand(batch, generator=gen) * 2 - 1) * math.radians(aug.get("rotate_deg", 0))
    low, high = aug.get("scale", [1.0, 1.0])
    scale = low + torch.rand(batch, generator=gen) * (high - low)
    shift = (torch.rand(batch, 2, generator=gen) * 2 - 1) * aug.get("translate", 0.0) * 2
    flip = torch.where(torch.rand(batch, generator=gen) < (0.5 if aug.get("hflip") else 0.0), -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos * flip, -sin, shift[:, 0]
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin * flip, cos, shift[:, 1]
    return F.affine_grid(theta, [batch, 1, size, size], align_corners=False)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, aug: dict, gen: torch.Generator):
    """Warp images (bilinear) and masks (nearest) identically, then jitter contrast and gamma."""
    grid = random_affine_grid(images.shape[0], images.shape[-1], aug, gen)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    n = images.shape[0]
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * aug.get("contrast", 0.0)
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * aug.get("gamma", 0.0))
    images = ((images.clamp(0, 1) ** gamma) * contrast).clamp(0, 1)
    return images, masks


# --- the loop ------------------------------------------------------------------------------------


def cell_targets(masks: torch.Tensor, cell_shape: tuple[int, int]) -> torch.Tensor:
    """A cell is positive when any mask pixel falls inside it."""
    return F.adaptive_max_pool2d(masks, cell_shape)


@torch.no_grad()
def predict_scores(net: nn.Module, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Image-head and cell-max probabilities for uint8 (N, S, S) inputs (on the network's device)."""
    net.eval()
    device = next(net.parameters()).device
    image_p, cell_p = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).float().div_(255.0)[:, None]
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        logits, cells = net.forward_all(x)
        image_p.append(torch.sigmoid(logits[:, 0]).cpu().numpy())
        cell_p.append(torch.sigmoid(cells.amax(dim=(1, 2, 3))).cpu().numpy())
    image = np.concatenate(image_p)
    cell = np.concatenate(cell_p)
    return {"image": image, "cell_max": cell, "mean": (image + cell) / 2}


def balanced_sampler(labels: np.ndarray, positive_fraction: float, gen: torch.Generator):
    """Draw an epoch (len(labels) indices) with the given share of positives."""
    pos = labels == 1
    weights = np.where(pos, positive_fraction / pos.sum(), (1 - positive_fraction) / (~pos).sum())
    return torch.multinomial(torch.as_tensor(weights), len(labels), replacement=True, generator=gen)


def lr_cycles(cfg_train: dict) -> list[dict]:
    """Learning-rate cycles (warm restarts): ``train.cycles`` or one cycle of ``epochs`` at ``learning_rate``."""
    if "cycles" in cfg_train:
        return [dict(c) for c in cfg_train["cycles"]]
    return [{"epochs": cfg_train["epochs"], "learning_rate": cfg_train["learning_rate"]}]


def cycle_of(epoch: int, cycles: list[dict]) -> tuple[int, int]:
    """(index of the cycle that contains ``epoch``, that cycle's first epoch)."""
    first = 0
    for index, cycle in enumerate(cycles):
        if epoch < first + cycle["epochs"]:
            return index, first
        first += cycle["epochs"]
    return len(cycles) - 1, first - cycles[-1]["epochs"]


def one_cycle(opt: torch.optim.Optimizer, cycle: dict, steps_per_epoch: int):
    """A one-cycle schedule (15% warm-up, cosine decay) over one cycle's epochs."""
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cycle["learning_rate"], total_steps=cycle["epochs"] * steps_per_epoch, pct_start=0.15
    )


def train_fracture(config: dict, device: torch.device = torch.device("cpu")) -> ModelSpec:
    """Train the fracture model end to end from its config; returns the written ModelSpec.

    ``config["train"]["max_steps"]`` (optional) stops each epoch early: for smoke runs only.
    """
    from medassist.models import fracatlas

    cfg_train = config["train"]
    torch.manual_seed(cfg_train["seed"])
    torch.set_num_threads(cfg_train.get("threads", 2))
    pre = PreprocessSpec(
        input_size=config["preprocess"]["input_size"],
        source=config["preprocess"]["source"],
        percentiles=tuple(config["preprocess"]["percentiles"]),
    )
    data_root = resolve(config["data"]["root"])
    records = fracatlas.read_records(data_root)
    polygons = fracatlas.read_polygons(data_root)
    cache = fracatlas.build_cache(records, polygons, pre, resolve(config["output"]["cache"]))
    split = np.array(
        [
            fracatlas.split_of(
                r.image_id,
                block_size=config["data"]["block_size"],
                n_folds=config["data"]["n_folds"],
                val_fold=config["data"]["val_fold"],
            )
            for r in records
        ]
    )
    train_idx, val_idx = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    labels = cache["labels"]
    log.info("train %d images (%d fractured), validation %d (%d fractured)",
             len(train_idx), labels[train_idx].sum(), len(val_idx), labels[val_idx].sum())

    log.info("training on %s", device)
    net = build_network(config["network"]["name"], config["network"]["args"])
    net = net.to(device).to(memory_format=torch.channels_last)
    cycles = lr_cycles(cfg_train)
    epochs, batch_size = sum(c["epochs"] for c in cycles), cfg_train["batch_size"]
    steps_per_epoch = len(train_idx) // batch_size
    if cfg_train.get("max_steps"):  # smoke runs only: each epoch stops early
        steps_per_epoch = min(steps_per_epoch, int(cfg_train["max_steps"]))
    opt = torch.optim.AdamW(net.parameters(), lr=cycles[0]["learning_rate"], weight_decay=cfg_train["weight_decay"])
    sched = one_cycle(opt, cycles[0], steps_per_epoch)
    ckpt_dir = resolve(config["output"]["checkpoints"])
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, history = 0, []
    last = ckpt_dir / "last.pt"
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        start_epoch = int(state["epoch"]) + 1
        cycle, first = cycle_of(start_epoch, cycles)
        sched = one_cycle(opt, cycles[cycle], steps_per_epoch)
        if start_epoch != first:  # resuming inside a cycle: continue its schedule
            sched.load_state_dict(state["sched"])
        history = json.loads((ckpt_dir / "history.json").read_text())
        log.info("resuming after epoch %d", start_epoch)

    gen = torch.Generator().manual_seed(cfg_train["seed"])
    images_u8, masks_u8 = cache["images"], cache["masks"]
    cell_bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(cfg_train["cell_pos_weight"], device=device))
    image_bce = nn.BCEWithLogitsLoss()
    for epoch in range(start_epoch, epochs):
        cycle, first = cycle_of(epoch, cycles)
        if epoch == first and epoch != start_epoch:  # warm restart: a new one-cycle schedule
            sched = one_cycle(opt, cycles[cycle], steps_per_epoch)
        gen.manual_seed(cfg_train["seed"] * 1000 + epoch)
        order = train_idx[balanced_sampler(labels[train_idx], cfg_train["positive_fraction"], gen).numpy()]
        net.train()
        t0, running = time.time(), 0.0
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * batch_size : (step + 1) * batch_size])
            x = torch.from_numpy(images_u8[idx]).float().div_(255.0)[:, None]
            m = torch.from_numpy(masks_u8[idx]).float()[:, None]
            x, m = augment_batch(x, m, cfg_train["augment"], gen)  # on the CPU, from the seeded generator
            x, m = x.to(device, non_blocking=True), m.to(device, non_blocking=True)
            y = torch.from_numpy(labels[idx]).float().to(device)
            logits, cells = net.forward_all(x.contiguous(memory_format=torch.channels_last))
            loss = image_bce(logits[:, 0], y) + cfg_train["cell_loss_weight"] * cell_bce(
                cells, cell_targets(m, cells.shape[-2:])
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            if step % 20 == 0:
                log.info("epoch %d step %d/%d loss %.4f (%.1f img/s)", epoch, step, steps_per_epoch,
                         running / (step + 1), (step + 1) * batch_size / (time.time() - t0))
        val = predict_scores(net, images_u8[val_idx], batch_size=32)
        aurocs = {k: binary_metrics(labels[val_idx], v, 0.5)["auroc"] for k, v in val.items()}
        history.append({"epoch": epoch, "loss": running / steps_per_epoch, "val_auroc": aurocs,
                        "seconds": time.time() - t0})
        log.info("epoch %d done: loss %.4f val AUROC %s (%.0f s)", epoch, running / steps_per_epoch,
                 {k: round(v, 4) for k, v in aurocs.items()}, time.time() - t0)
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch}, ckpt_dir / "last.tmp")
        (ckpt_dir / "last.tmp").replace(last)
        (ckpt_dir / "history.json").write_text(json.dumps(history, indent=1))

    return finish_fracture(config, net, pre, cache, train_idx, val_idx, history)


def finish_fracture(config, net, pre, cache, train_idx, val_idx, history) -> ModelSpec:
    """Choose head and threshold on validation, write weights + spec + card."""
    labels = cache["labels"]
    val = predict_scores(net, cache["images"][val_idx], batch_size=32)
    head = max(val, key=lambda k: binary_metrics(labels[val_idx], val[k], 0.5)["auroc"])
    scores = val[head]
    threshold = youden_threshold(labels[val_idx], scores)
    val_metrics = binary_metrics(labels[val_idx], scores, threshold)
    train_sub = train_idx[:: max(1, len(train_idx) // 800)]
    train_metrics = binary_metrics(labels[train_sub], predict_scores(net, cache["images"][train_sub], 32)[head], threshold)
    operating_points = {
        f"sensitivity_{int(s * 100)}": threshold_for_sensitivity(labels[val_idx], scores, s) for s in (0.9, 0.95, 0.99)
    }
    return write_shipped_model(
        config, net, pre, threshold=threshold, score_head=head,
        validation={"validation": val_metrics, "training_subset": train_metrics,
                    "operating_points": operating_points, "history": history},
    )


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
        input_kind=config.get("input_kind", "image2d"),
        training_data=config["provenance"]["training_data"],
        licence=config["provenance"]["licence"],
        training_command=f"medassist train configs/{config['name']}.yaml",
        validation=validation,
    )
    (out_dir / f"{config['name']}.json").write_text(spec.to_json())
    log.info("wrote %s (sha256 %s)", weights, spec.sha256)
    return spec


def train_from_config(path: str | Path, device: str = "auto") -> ModelSpec:
    """Dispatch a config to the trainer for its task, on ``device`` (auto: CUDA when present)."""
    from medassist.models.registry import choose_device
    from medassist.models.tumor import train_tumor

    trainers = {"fracture": train_fracture, "tumor": train_tumor}
    config = load_config(path)
    return trainers[config["task"]](config, device=choose_device(device))
