"""Leave-one-region-out check of the fracture recipe on FracAtlas (issue 15), at a reduced protocol.

How much of what the fracture model learns carries to anatomy it never saw? For each left-out
region R, the model is trained from scratch on the FracAtlas training split without any image that
shows R (``train.exclude_regions``), and a reference is trained the same way on every region; both
are scored on the validation split, per region. FracAtlas's validation split has fractures only in
hand and leg images (hip and shoulder images show none there), so those two are the folds.

The protocol is cut to fit the 2-core CPU: ``configs/fracture_xray.yaml``'s recipe (network, loss,
augmentation, sampling) at ``--input-size`` (default 224 instead of 448) for one one-cycle schedule
of ``--epochs`` (default 6 instead of 2 x 12); the figures compare fold with reference under the
same protocol, not with the shipped model. Each run resumes from its checkpoints in ``--work``
(default ``../checkpoints/fracture_loro``, outside the repository); the figures go to ``--out``.

    PYTHONPATH=. nice -n 5 .venv/bin/python scripts/fracture_loro.py
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from medassist.metrics import metrics_with_ci
from medassist.models import fracatlas
from medassist.models.registry import load_model
from medassist.models.spec import read_spec
from medassist.models.splits import block_settings
from medassist.models.train import predict_scores, resolve, train_fracture

REPO = Path(__file__).resolve().parents[1]
FOLDS = ("hand", "leg")  # the regions with fractures in FracAtlas's validation split
REFERENCE = "all_regions"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "fracture_xray.yaml")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--work", type=Path, default=REPO.parent / "checkpoints" / "fracture_loro")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fracture_loro.json")
    p.add_argument("--max-steps", type=int, help="smoke runs only: steps per epoch")
    return p.parse_args(argv)


def run_config(base: dict, run: str, args: argparse.Namespace) -> dict:
    """The reduced-protocol config of one run (``run``: a left-out region, or REFERENCE)."""
    config = copy.deepcopy(base)
    config["preprocess"]["input_size"] = args.input_size
    first = config["train"]["cycles"][0]
    config["train"]["cycles"] = [{"epochs": args.epochs, "learning_rate": first["learning_rate"]}]
    if run != REFERENCE:
        config["train"]["exclude_regions"] = [run]
    if args.max_steps:
        config["train"]["max_steps"] = args.max_steps
    folder = args.work / run
    config["output"] = {"weights_dir": str(folder / "model"), "model_card": str(folder / "model" / "card.md"),
                        "cache": str(REPO / "cache" / f"fracatlas_{args.input_size}.npz"),
                        "checkpoints": str(folder / "checkpoints")}
    return config


def per_region(spec_path: Path, config: dict) -> dict:
    """Validation AUROC (bootstrap CI) of a written model, overall and per fold region."""
    spec = read_spec(spec_path)
    model = load_model(spec, torch.device("cpu"), weights_dir=spec_path.parent)
    records = fracatlas.read_records(resolve(config["data"]["root"]))
    split = np.array([fracatlas.split_of(r.image_id, **block_settings(config["data"])) for r in records])
    val = np.flatnonzero(split == "val")
    with np.load(resolve(config["output"]["cache"])) as cache:
        images, labels = cache["images"][val], cache["labels"][val]
    scores = predict_scores(model.network, images, 32).of(spec.score_head)
    regions = [set(records[i].region.split("+")) for i in val]
    figures = {"overall": metrics_with_ci(labels, scores, spec.threshold, n_resamples=500)}
    for region in FOLDS:
        keep = np.array([region in r for r in regions])
        figures[region] = metrics_with_ci(labels[keep], scores[keep], spec.threshold, n_resamples=500)
        figures[region]["n"], figures[region]["fractured"] = int(keep.sum()), int(labels[keep].sum())
    return {"score_head": spec.score_head, "threshold": spec.threshold, "validation": figures}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    base = yaml.safe_load(args.config.read_text())
    results: dict = {"protocol": {"input_size": args.input_size, "epochs": args.epochs,
                                  "recipe": str(args.config.relative_to(REPO))}, "runs": {}}
    for run in (REFERENCE, *FOLDS):
        config = run_config(base, run, args)
        spec_path = Path(config["output"]["weights_dir"]) / f"{config['name']}.json"
        started = time.time()
        if not spec_path.exists():
            train_fracture(config)
        results["runs"][run] = per_region(spec_path, config) | {"seconds": round(time.time() - started)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        logging.info("%s: %s", run, {k: round(v["auroc"], 3) for k, v in results["runs"][run]["validation"].items()})
    print(json.dumps({run: {k: round(v["auroc"], 3) for k, v in r["validation"].items()}
                      for run, r in results["runs"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
