"""The plain MONAI pipeline a MONAI user would write around medassist's shipped fracture network.

The baseline of ``benchmarks/bench_vs_monai.py`` (issue 20), run there as its own process: every
``*.dcm`` under DIR through MONAI's dictionary transforms and ``monai.data.DataLoader``, the shipped
network (loaded, sha256-checked, by ``medassist.models.registry.load_model``) forward under
``torch.no_grad()``, the spec's score (sigmoid of the logits, the ``mean`` head: image and largest
cell probability averaged), one CSV row per file. No medassist decoding, preprocessing, triage,
journal or worklist.

``PydicomReader(swap_ij=False)``: MONAI's default (``swap_ij=True``) transposes the image to ITK's
(x, y) order, and the network was trained on rows x columns as displayed; a user checking one output
would set it. The chain is the spec's: percentile scaling 0.5/99.5 to 0-1 clipped, resize of the
longest side to 448 (area), centred zero pad to 448 x 448.

    PYTHONPATH=. .venv/bin/python benchmarks/monai_baseline.py DIR --out scores.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
from monai.data import DataLoader, Dataset
from monai.data.image_reader import PydicomReader
from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityRangePercentilesd,
                              SpatialPadd)

from medassist.models.heads import score_probability
from medassist.models.registry import load_model, spec_by_name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the CSV of scores (path, score)")
    p.add_argument("--model", default="fracture_xray")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    args = p.parse_args(argv)
    started = time.perf_counter()

    spec = spec_by_name(args.model)
    model = load_model(spec, torch.device("cpu"))
    low, high = spec.preprocess.percentiles
    size = spec.preprocess.input_size
    transforms = Compose([
        LoadImaged(keys="image", reader=PydicomReader(swap_ij=False)),
        EnsureChannelFirstd(keys="image"),
        ScaleIntensityRangePercentilesd(keys="image", lower=low, upper=high, b_min=0.0, b_max=1.0, clip=True),
        Resized(keys="image", spatial_size=size, size_mode="longest", mode="area"),
        SpatialPadd(keys="image", spatial_size=(size, size)),
    ])
    files = sorted(str(f) for f in args.folder.rglob("*.dcm"))
    loader = DataLoader(Dataset([{"image": f} for f in files], transforms), batch_size=args.batch_size,
                        num_workers=args.workers)

    rows, first_batch = [], None
    with torch.no_grad():
        for batch in loader:
            x = torch.as_tensor(batch["image"]).float()
            image_logits, cells = model.network.forward_all(x)
            scores = score_probability(image_logits, cells, spec.score_head)
            rows += zip(batch["image_meta_dict"]["filename_or_obj"] if "image_meta_dict" in batch
                        else batch["image"].meta["filename_or_obj"], scores.tolist())
            if first_batch is None:
                first_batch = time.perf_counter()
    done = time.perf_counter()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "score"])
        writer.writerows((path, f"{score:.6f}") for path, score in rows)
    # steady state: images after the first batch over the time after it (start-up and warm-up excluded)
    steady = (len(rows) - args.batch_size) / (done - first_batch) if first_batch and len(rows) > args.batch_size \
        and done > first_batch else None
    print(f"monai_baseline: {len(rows)} images in {done - started:.1f} s in process"
          + (f", steady state {steady:.2f} images/s" if steady else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
