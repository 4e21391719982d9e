"""Which look of another source's radiographs the shipped fracture model responds to: scale,
sharpness, or the image's periphery (inference only, no training).

Each probe changes the grey image of every radiograph of ``../shared/data/fracture_external_dev``
before the shipped inference preparation (``prepare_2d`` at the spec's preprocessing), then reports
the AUROC of each score head (image, cell_max, mean):

* ``zoom_out_Z``: the image centred on a canvas Z times its size, filled with its 1st-percentile
  grey (the anatomy shown smaller);
* ``down_F`` / ``gauss_S``: resolution loss (shrunk by F and grown back, linear) or Gaussian blur;
* ``centre_F``: the central crop of F of each side, shown at the input size (magnified 1/F);
* ``mask_F``: the same central box kept in place, the periphery set to black (no magnification);
* ``tiles_0.5``: a 3x3 grid of crops of half of each side, each prepared as an image, pooled by
  max and by mean (mean and cell_max heads).

Nothing derived from the external images is written inside the repository: only AUROCs to
``--out``. One run is about three minutes on two cores.

    nice -n 10 .venv/bin/python benchmarks/fracture_scale_probe.py --out /tmp/fracture_scale_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXTERNAL_ROOT = REPO.parent / "shared" / "data" / "fracture_external_dev"
HEADS = ("image", "cell_max", "mean")


def zoom_out(grey: np.ndarray, factor: float) -> np.ndarray:
    """``grey`` centred on a canvas ``factor`` times its size, filled with its 1st-percentile grey."""
    rows, cols = grey.shape
    canvas = np.full((int(rows * factor), int(cols * factor)), float(np.percentile(grey, 1)), np.float32)
    top, left = (canvas.shape[0] - rows) // 2, (canvas.shape[1] - cols) // 2
    canvas[top : top + rows, left : left + cols] = grey
    return canvas


def down_up(grey: np.ndarray, factor: float) -> np.ndarray:
    """Resolution loss: shrunk by ``factor`` and grown back to the same shape (linear)."""
    from scipy import ndimage

    small = ndimage.zoom(grey, factor, order=1)
    return ndimage.zoom(small, (grey.shape[0] / small.shape[0], grey.shape[1] / small.shape[1]), order=1)


def centre_box(shape: tuple[int, int], fraction: float) -> tuple[slice, slice]:
    """The central box of ``fraction`` of each side."""
    rows, cols = int(shape[0] * fraction), int(shape[1] * fraction)
    top, left = (shape[0] - rows) // 2, (shape[1] - cols) // 2
    return slice(top, top + rows), slice(left, left + cols)


def centre_crop(grey: np.ndarray, fraction: float) -> np.ndarray:
    return grey[centre_box(grey.shape, fraction)]


def centre_mask(grey: np.ndarray, fraction: float) -> np.ndarray:
    out = np.zeros_like(grey)
    box = centre_box(grey.shape, fraction)
    out[box] = grey[box]
    return out


def grid_crops(grey: np.ndarray, fraction: float, grid: int) -> list[np.ndarray]:
    """``grid`` x ``grid`` evenly spaced crops of ``fraction`` of each side, corners included."""
    rows, cols = int(grey.shape[0] * fraction), int(grey.shape[1] * fraction)
    tops = np.linspace(0, grey.shape[0] - rows, grid).astype(int)
    lefts = np.linspace(0, grey.shape[1] - cols, grid).astype(int)
    return [grey[t : t + rows, c : c + cols] for t in tops for c in lefts]


def probes() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Every single-image probe by name."""
    from scipy import ndimage

    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {"baseline": lambda g: g}
    out.update({f"zoom_out_{z}": (lambda g, z=z: zoom_out(g, z)) for z in (1.5, 2.0, 3.0)})
    out.update({f"down_{f}": (lambda g, f=f: down_up(g, f)) for f in (0.5, 0.3)})
    out.update({f"gauss_{s}": (lambda g, s=s: ndimage.gaussian_filter(g, s)) for s in (1.5, 3.0)})
    out.update({f"centre_{f}": (lambda g, f=f: centre_crop(g, f)) for f in (0.35, 0.5, 0.6, 0.7, 0.8)})
    out.update({f"mask_{f}": (lambda g, f=f: centre_mask(g, f)) for f in (0.6, 0.8)})
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    import torch
    from sklearn.metrics import roc_auc_score

    from medassist.ingest.images import load_jpeg_grayscale
    from medassist.models import fracture_external, registry
    from medassist.preprocess.transforms import prepare_2d

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = registry.load_named_or_file("fracture_xray", torch.device("cpu"))
    pre = model.spec.preprocess
    records = fracture_external.read_external(EXTERNAL_ROOT)
    labels = np.array([r.fractured for r in records])
    greys = [load_jpeg_grayscale(r.path).astype(np.float32) for r in records]

    def head_scores(images: list[np.ndarray]) -> dict[str, np.ndarray]:
        inputs = np.stack([prepare_2d(np.ascontiguousarray(g), pre)[0][0].numpy() for g in images])
        probs = fracture_external.score_inputs(model.network, inputs)
        return {h: np.asarray(probs.of(h), dtype=np.float64) for h in HEADS}

    report: dict = {"model": f"{model.spec.name} {model.spec.version}", "n": int(len(labels)),
                    "n_fractured": int(labels.sum()), "auroc": {}}
    for name, probe in probes().items():
        started = time.time()
        scores = head_scores([probe(g) for g in greys])
        report["auroc"][name] = {h: round(float(roc_auc_score(labels, s)), 4) for h, s in scores.items()}
        print(f"{name}: {report['auroc'][name]} ({time.time() - started:.0f} s)", flush=True)
    per_image = [head_scores(grid_crops(g, 0.5, 3)) for g in greys]
    for pool in ("max", "mean"):
        for head in ("mean", "cell_max"):
            pooled = np.array([getattr(np, pool)(s[head]) for s in per_image])
            report["auroc"][f"tiles_0.5_{pool}_{head}"] = round(float(roc_auc_score(labels, pooled)), 4)
    print({k: v for k, v in report["auroc"].items() if k.startswith("tiles")}, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
