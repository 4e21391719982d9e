"""Tiled scoring of a fracture model: the whole input against a grid of magnified windows of it.

Why: on the shipped ``fracture_xray`` 1.1.0, scoring windows of half the image side shown at the
input size (max over a 3x3 grid) ranked the other-source radiographs of
``../shared/data/fracture_external_dev`` better than the whole image (inference only; blurring or
zooming out did not), and candidate 2.0.0e (``configs/experiments/fracture_xray_2.0.0e.yaml``) is
trained on such windows. This measures both ways of scoring, for the shipped model or for training
checkpoints, on the FracAtlas validation split (from the training cache, as the trainer scores it)
and on the external set (prepared as inference prepares a radiograph):

* ``whole``: the prepared 448 px input, each score head (image, cell_max, mean);
* ``tiles``: ``--grid`` x ``--grid`` windows of ``--fraction`` of the input side (evenly spaced,
  corners included), each resized to the input size (bilinear) and scaled by its own percentiles
  (``models.augment.magnify`` / ``rescale_percentiles``, the training steps of ``magnify_windows``),
  pooled over the windows by max and by mean.

AUROCs only (sklearn); the external figures carry a bootstrap interval for the mean head. Nothing
derived from the external images is written inside the repository.

    nice -n 10 .venv/bin/python benchmarks/fracture_tile_scoring.py --out /tmp/tiles.json \\
        [--checkpoint ../checkpoints/fracture_xray_2.0.0e/epoch_4.pt ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
EXTERNAL_ROOT = REPO.parent / "shared" / "data" / "fracture_external_dev"
FRACATLAS_ROOT = REPO.parent / "shared" / "data" / "fracatlas"
FRACATLAS_CACHE = REPO / "cache" / "fracatlas_448.npz"
HEADS = ("image", "cell_max", "mean")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON report")
    p.add_argument("--checkpoint", type=Path, action="append", default=[],
                   help="a training checkpoint (last.pt-style, key 'net'); repeatable; default: the shipped weights")
    p.add_argument("--fraction", type=float, default=0.5, help="window side as a fraction of the input side")
    p.add_argument("--grid", type=int, default=3, help="windows per side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="first N images of each set (smoke runs)")
    return p.parse_args(argv)


def windows(x: torch.Tensor, fraction: float, grid: int, percentiles: tuple[float, float]) -> torch.Tensor:
    """(N, 1, S, S) inputs -> (N, grid*grid, 1, S, S) magnified, re-scaled windows."""
    from medassist.models.augment import magnify, rescale_percentiles

    size = x.shape[-1]
    side = int(round(size * fraction))
    starts = np.linspace(0, size - side, grid).round().astype(int)
    cut = torch.stack([x[:, :, t : t + side, c : c + side] for t in starts for c in starts], 1)
    flat = cut.reshape(-1, 1, side, side)
    big, _ = magnify(flat, torch.zeros_like(flat), size)
    return rescale_percentiles(big, *percentiles).reshape(x.shape[0], grid * grid, 1, size, size)


@torch.no_grad()
def score_set(net, inputs: np.ndarray, args, percentiles) -> tuple[dict, dict]:
    """Whole-input probabilities {head: (N,)} and window probabilities {head: (N, grid*grid)}."""
    from medassist.models.heads import head_probabilities

    whole: dict[str, list] = {h: [] for h in HEADS}
    tiled: dict[str, list] = {h: [] for h in HEADS}
    for start in range(0, len(inputs), 8):
        x = torch.from_numpy(np.asarray(inputs[start : start + 8], dtype=np.float32))[:, None]
        w = head_probabilities(*net.forward_all(x.contiguous(memory_format=torch.channels_last)))
        t = windows(x, args.fraction, args.grid, percentiles)
        flat = t.reshape(-1, 1, *t.shape[-2:]).contiguous(memory_format=torch.channels_last)
        p = head_probabilities(*net.forward_all(flat))
        for h in HEADS:
            whole[h].append(np.asarray(w.of(h), dtype=np.float64))
            tiled[h].append(np.asarray(p.of(h), dtype=np.float64).reshape(len(x), -1))
    return ({h: np.concatenate(v) for h, v in whole.items()}, {h: np.concatenate(v) for h, v in tiled.items()})


def aurocs(labels: np.ndarray, whole: dict, tiled: dict, with_ci: bool) -> dict:
    """AUROC per head and pooling; the mean head's with a 95% bootstrap interval when ``with_ci``."""
    from sklearn.metrics import roc_auc_score

    from medassist.metrics import metrics_with_ci

    out = {f"whole_{h}": round(float(roc_auc_score(labels, whole[h])), 4) for h in HEADS}
    out.update({f"tiles_max_{h}": round(float(roc_auc_score(labels, tiled[h].max(1))), 4) for h in HEADS})
    out.update({f"tiles_mean_{h}": round(float(roc_auc_score(labels, tiled[h].mean(1))), 4) for h in HEADS})
    if with_ci:
        for name, scores in (("whole_mean", whole["mean"]), ("tiles_max_mean", tiled["mean"].max(1))):
            m = metrics_with_ci(labels, scores, 0.5)
            out[f"{name}_ci"] = [None if v is None else round(float(v), 4) for v in m["ci"]["auroc"]]
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from medassist.models import fracatlas, fracture_external, registry, splits
    from medassist.models.networks import build_network
    from medassist.yamlfile import read_yaml

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shipped = registry.load_named_or_file("fracture_xray", torch.device("cpu"))
    spec = shipped.spec
    records = fracture_external.read_external(EXTERNAL_ROOT)[: args.limit]
    external = (fracture_external.prepare_external(records, spec.preprocess),
                np.array([r.fractured for r in records]))
    cache = np.load(FRACATLAS_CACHE)
    data = read_yaml(REPO / "configs" / "fracture_xray.yaml", "training config")["data"]
    split = splits.block_settings(data)
    val = np.array([fracatlas.split_of(r.image_id, **split) == "val" for r in fracatlas.read_records(FRACATLAS_ROOT)])
    val_images = cache["images"][val][: args.limit].astype(np.float32) / 255.0
    validation = (val_images, cache["labels"][val][: args.limit])

    models = [("shipped " + spec.version, shipped.network)] if not args.checkpoint else []
    for path in args.checkpoint:
        net = build_network(spec.network, spec.network_args)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["net"])
        models.append((str(path), net.eval().to(memory_format=torch.channels_last)))
    report = {"fraction": args.fraction, "grid": args.grid, "models": {}}
    for name, net in models:
        entry = {}
        for set_name, (inputs, labels) in (("external_dev", external), ("fracatlas_val", validation)):
            started = time.time()
            whole, tiled = score_set(net, inputs, args, spec.preprocess.percentiles)
            entry[set_name] = aurocs(labels, whole, tiled, with_ci=set_name == "external_dev")
            print(f"{name} {set_name}: {entry[set_name]} ({time.time() - started:.0f} s)", flush=True)
        report["models"][name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
