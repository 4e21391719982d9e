"""Training from a YAML config: `medassist train configs/<model>.yaml`.

Writes the weights, their sha256 and ModelSpec JSON into the package's weights folder, and the
validation metrics into the model card. Checkpoints each epoch so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medassist.metrics import binary_metrics, metrics_with_ci, threshold_for_sensitivity, youden_threshold
from medassist.models.augment import augment_batch, magnify, random_crops, rescale_percentiles
from medassist.models.fracture_external import prepare_external, read_external, score_inputs
from medassist.models.heads import SCORE_HEADS, HeadProbabilities
from medassist.models.networks import build_network
from medassist.models.spec import ModelSpec, PreprocessSpec
from medassist.models.splits import block_settings
from medassist.models.train_common import (
    cell_targets,
    initial_weights,
    load_config,
    log_progress,
    optimise,
    resolve,
    sha256_of,
    write_shipped_model,
)
from medassist.preprocess.transforms import equalize_nonzero

log = logging.getLogger(__name__)


# --- the loop ------------------------------------------------------------------------------------


def predict_scores(net: nn.Module, images: np.ndarray, batch_size: int, *,
                   equalize: bool = False) -> HeadProbabilities:
    """Every score head's probabilities for uint8 (N, S, S) cached inputs.

    ``equalize``: histogram-equalise each input first, as the spec's preprocessing does.
    """
    inputs = torch.from_numpy(images).float().div_(255.0)
    if equalize:
        inputs = equalize_nonzero(inputs)
    return score_inputs(net, inputs.numpy(), batch_size)


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


def resume_schedule(sched, saved: dict, steps_done: int) -> None:
    """Continue a one-cycle schedule from its checkpoint; when the config's cycle length changed since
    (a run shortened or lengthened part-way), re-plan it: the new schedule stepped to where the run is."""
    if saved.get("total_steps") == sched.total_steps:
        sched.load_state_dict(saved)
        return
    log.warning("cycle length changed since the checkpoint (%s -> %d steps): schedule re-planned at step %d",
                saved.get("total_steps"), sched.total_steps, steps_done)
    for _ in range(min(steps_done, sched.total_steps - 1)):
        sched.optimizer.step()  # no gradients: parameters unchanged; keeps torch's step-order check quiet
        sched.step()


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
        equalize=bool(config["preprocess"].get("equalize", False)),
    )
    data_root = resolve(config["data"]["root"])
    records = fracatlas.read_records(data_root)
    polygons = fracatlas.read_polygons(data_root)
    # caches hold the percentile-scaled letterbox only: equalisation follows augmentation
    unequalized = dataclasses.replace(pre, equalize=False)
    cache = fracatlas.build_cache(records, polygons, unequalized, resolve(config["output"]["cache"]))
    train_size = int(cfg_train.get("cache_size", pre.input_size))  # augmentation samples from this
    train_cache = cache if train_size == pre.input_size else fracatlas.build_cache(
        records, polygons, dataclasses.replace(unequalized, input_size=train_size),
        resolve(config["output"]["train_cache"]))
    external = external_inputs(config, pre)
    split = np.array(
        [
            fracatlas.split_of(r.image_id, **block_settings(config["data"]))
            for r in records
        ]
    )
    train_idx, val_idx = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if cfg_train.get("exclude_hardware"):  # 84 of 86 hardware images are fractured: a shortcut, not evidence
        hardware = np.array([r.hardware for r in records], dtype=bool)
        log.info("training without the %d hardware images of the training split", int(hardware[train_idx].sum()))
        train_idx = train_idx[~hardware[train_idx]]
    if cfg_train.get("exclude_regions"):  # leave-one-region-out: that anatomy is never trained on
        train_idx = without_regions(train_idx, records, cfg_train["exclude_regions"])
    labels = cache["labels"]
    log.info("train %d images (%d fractured), validation %d (%d fractured)",
             len(train_idx), labels[train_idx].sum(), len(val_idx), labels[val_idx].sum())

    log.info("training on %s", device)
    net = build_network(config["network"]["name"], config["network"]["args"])
    if cfg_train.get("init_from"):
        net.load_state_dict(initial_weights(cfg_train["init_from"]))
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
            resume_schedule(sched, state["sched"], (start_epoch - first) * steps_per_epoch)
        history = json.loads((ckpt_dir / "history.json").read_text())
        log.info("resuming after epoch %d", start_epoch)

    gen = torch.Generator().manual_seed(cfg_train["seed"])
    images_u8, masks_u8 = train_cache["images"], train_cache["masks"]
    has_mask = masks_u8.reshape(len(masks_u8), -1).max(axis=1) > 0
    cell_bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(cfg_train["cell_pos_weight"], device=device))
    image_bce = nn.BCEWithLogitsLoss()
    crop = int(cfg_train.get("crop_size") or 0)  # local-evidence training: windows of the full-size input
    crop_on_finding = float(cfg_train.get("crop_on_finding", 0.6))
    # magnified windows: each window resized back to the input size and scaled by its own
    # percentiles, as a tile of a radiograph is prepared at inference (``prepare_2d`` of the crop)
    magnify_windows = bool(cfg_train.get("magnify_windows", False))
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
            # on the CPU, from the seeded generator
            x, m = augment_batch(x, m, cfg_train["augment"], gen, out_size=None if crop else pre.input_size)
            if pre.equalize:  # over the whole image, as inference does (before any window is cut)
                x = equalize_nonzero(x)
            if crop:
                x, m = random_crops(x, m, crop, gen, on_finding=crop_on_finding)
                if magnify_windows:
                    x, m = magnify(x, m, pre.input_size)
                    x = rescale_percentiles(x, *pre.percentiles)
            y = torch.from_numpy(labels[idx]).float()
            if cfg_train.get("label_from_mask"):  # a crop that lost every fracture pixel shows none
                kept = m.amax(dim=(1, 2, 3)) > 0
                y = torch.where(torch.from_numpy(has_mask[idx]) & ~kept, 0.0, y)
            x, m, y = x.to(device, non_blocking=True), m.to(device, non_blocking=True), y.to(device)
            logits, cells = net.forward_all(x.contiguous(memory_format=torch.channels_last))
            loss = image_bce(logits[:, 0], y) + cfg_train["cell_loss_weight"] * cell_bce(
                cells, cell_targets(m, cells.shape[-2:])
            )
            running += optimise(opt, sched, loss)
            log_progress(epoch, step, steps_per_epoch, running, batch_size, t0, log)
        val = predict_scores(net, cache["images"][val_idx], batch_size=32, equalize=pre.equalize)
        aurocs = {k: binary_metrics(labels[val_idx], val.of(k), 0.5)["auroc"] for k in SCORE_HEADS}
        entry = {"epoch": epoch, "loss": running / steps_per_epoch, "val_auroc": aurocs}
        if external is not None:
            ext = score_inputs(net, external.inputs)
            entry["external_dev_auroc"] = {k: binary_metrics(external.labels, ext.of(k), 0.5)["auroc"]
                                           for k in SCORE_HEADS}
        entry["seconds"] = time.time() - t0
        history.append(entry)
        log.info("epoch %d done: loss %.4f val AUROC %s external-dev AUROC %s (%.0f s)", epoch,
                 running / steps_per_epoch, {k: round(v, 4) for k, v in aurocs.items()},
                 {k: round(v, 4) for k, v in entry.get("external_dev_auroc", {}).items()}, time.time() - t0)
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch}, ckpt_dir / "last.tmp")
        (ckpt_dir / "last.tmp").replace(last)
        (ckpt_dir / "history.json").write_text(json.dumps(history, indent=1))

    return finish_fracture(config, net, pre, cache, train_idx, val_idx, history, external)


def without_regions(indices: np.ndarray, records: list, regions: list[str]) -> np.ndarray:
    """``indices`` less the records showing any of ``regions`` (a record's region may be "hand+leg")."""
    left_out = set(regions)
    keep = np.array([not (set(records[i].region.split("+")) & left_out) for i in indices], dtype=bool)
    log.info("training without the %d images of region(s) %s", int((~keep).sum()), ", ".join(sorted(left_out)))
    return indices[keep]


@dataclasses.dataclass(frozen=True)
class ExternalInputs:
    """The other-source set prepared once: inputs (N, S, S) float32, labels and regions."""

    inputs: np.ndarray
    labels: np.ndarray
    regions: np.ndarray


def external_inputs(config: dict, pre: PreprocessSpec) -> ExternalInputs | None:
    """``data.external_dev`` prepared as inference prepares it, or None when the config has none."""
    root = config["data"].get("external_dev")
    if not root:
        return None
    if not resolve(root).exists():
        log.warning("data.external_dev %s is missing: no other-source figures in this run, and the head and "
                    "threshold are chosen on the validation split alone", resolve(root))
        return None
    records = read_external(resolve(root))
    return ExternalInputs(prepare_external(records, pre), np.array([r.fractured for r in records]),
                          np.array([r.region for r in records]))


def threshold_across_sources(sources: dict[str, tuple[np.ndarray, np.ndarray]], sensitivity: float) -> float:
    """The highest threshold at which every source (labels, scores) keeps at least ``sensitivity``."""
    return min(threshold_for_sensitivity(y, s, sensitivity) for y, s in sources.values())


def external_report(external: ExternalInputs, scores: np.ndarray, threshold: float) -> dict:
    """Other-source metrics with bootstrap intervals, overall and per fracture region (a region's
    fractured images against every image without an annotated fracture)."""
    report = {"overall": metrics_with_ci(external.labels, scores, threshold)}
    negatives = external.labels == 0
    for region in sorted(set(external.regions[external.labels == 1])):
        keep = negatives | (external.regions == region)
        report[region] = metrics_with_ci(external.labels[keep], scores[keep], threshold, n_resamples=300)
    return report


def finish_fracture(config, net, pre, cache, train_idx, val_idx, history, external=None) -> ModelSpec:
    """Choose head and threshold, write weights + spec + card.

    Head: the best validation AUROC, or with an external-dev set the best mean of validation and
    external-dev AUROC. Threshold: ``train.threshold_sensitivity`` set, the highest one that keeps
    that sensitivity on validation and on the external-dev set both; else validation's Youden point.
    """
    labels = cache["labels"]
    y_val = labels[val_idx]
    val = predict_scores(net, cache["images"][val_idx], batch_size=32, equalize=pre.equalize)
    ext = score_inputs(net, external.inputs) if external is not None else None

    def choice(head: str) -> float:
        auroc = binary_metrics(y_val, val.of(head), 0.5)["auroc"]
        return auroc if ext is None else (auroc + binary_metrics(external.labels, ext.of(head), 0.5)["auroc"]) / 2

    head = max(SCORE_HEADS, key=choice)
    scores = val.of(head)
    target = config["train"].get("threshold_sensitivity")
    if target:
        sources = {"validation": (y_val, scores)}
        if ext is not None:
            sources["external_dev"] = (external.labels, ext.of(head))
        threshold = threshold_across_sources(sources, float(target))
    else:
        threshold = youden_threshold(y_val, scores)
    val_metrics = binary_metrics(y_val, scores, threshold)
    train_sub = train_idx[:: max(1, len(train_idx) // 800)]
    train_scores = predict_scores(net, cache["images"][train_sub], 32, equalize=pre.equalize).of(head)
    train_metrics = binary_metrics(labels[train_sub], train_scores, threshold)
    operating_points = {
        f"sensitivity_{int(s * 100)}": threshold_for_sensitivity(y_val, scores, s) for s in (0.9, 0.95, 0.99)
    }
    validation = {"validation": val_metrics, "training_subset": train_metrics,
                  "operating_points": operating_points, "history": history}
    if ext is not None:
        validation["external_dev"] = external_report(external, ext.of(head), threshold)
        validation["head_choice"] = {k: {"validation_auroc": binary_metrics(y_val, val.of(k), 0.5)["auroc"],
                                         "external_dev_auroc": binary_metrics(external.labels, ext.of(k), 0.5)["auroc"]}
                                     for k in SCORE_HEADS}
    return write_shipped_model(config, net, pre, threshold=threshold, score_head=head, validation=validation)


def train_from_config(path: str | Path, device: str = "auto") -> ModelSpec:
    """Dispatch a config to the trainer for its task, on ``device`` (auto: CUDA when present)."""
    from medassist.models.registry import choose_device
    from medassist.models.tumor_train import train_tumor

    trainers = {"fracture": train_fracture, "tumor": train_tumor}
    config = load_config(path)
    return trainers[config["task"]](config, device=choose_device(device))
