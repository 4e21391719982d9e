"""Which map points at the fracture? The shipped fracture model's candidate localisation maps,
scored by the pointing game on the FracAtlas validation fractures (issue 15's localisation target:
the map's peak inside the fracture mask dilated by 5% of the image's longest side on >= 50% of them).

No training: each map comes from the shipped weights, in the network-input frame, mapped back to
the source pixels the way triage maps its saliency, and scored against the fracture polygons:

* ``gradcam_<head>``: GradCAM (Captum ``LayerGradCam``) of the finding's logit under a score head
  (``mean``, the shipped head; ``image``; ``cell_max``), from the scoring pass's feature map;
* ``cell_probability``: the cell head's own fracture probability per cell (the head the FracAtlas
  masks supervise), upsampled bilinearly;
* ``gradcam_mean_x_cell``: the product of the two (GradCAM's evidence where the cell head agrees).

    python benchmarks/fracture_localisation_maps.py --out benchmarks/results/fracture_localisation_maps.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GRADCAM_HEADS = ("mean", "image", "cell_max")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fracatlas"))
    parser.add_argument("--limit", type=int, default=None, help="first N validation fractures only")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def candidate_maps(model, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    """Every candidate map for a batch of prepared inputs, (N, S, S) float32 in the input frame, each
    made by ``explain.saliency.saliency_map`` from one scoring pass's feature map."""
    from medassist.explain.saliency import saliency_map

    _, feats = model.scores_and_features(inputs)
    maps = {f"gradcam_{head}": saliency_map(replace(model, spec=replace(model.spec, score_head=head)), inputs,
                                            method="gradcam", features=feats)
            for head in GRADCAM_HEADS}
    maps["cell_probability"] = saliency_map(model, inputs, method="cell_probability", features=feats)
    maps["gradcam_mean_x_cell"] = maps["gradcam_mean"] * maps["cell_probability"]
    return maps


def main(argv: list[str] | None = None) -> int:
    from medassist.explain.localisation import (
        TOLERANT_SIDE_FRACTION,
        dilate,
        fracture_validation_cases,
        pointing_game_hit,
        preparer_for,
    )
    from medassist.metrics import wilson_interval
    from medassist.models.registry import load_model, spec_by_name

    args = parse_args(argv)
    torch.set_num_threads(2)
    model = load_model(spec_by_name("fracture_xray"), torch.device("cpu"))
    prepare = preparer_for(model.spec)
    hits: dict[str, list[bool]] = {}
    strict: dict[str, list[bool]] = {}
    centre, areas = [], []
    t0 = time.perf_counter()
    cases = list(fracture_validation_cases(args.data, limit=args.limit))
    for start in range(0, len(cases), args.batch_size):
        batch = cases[start : start + args.batch_size]
        prepared = [prepare(np.asarray(c.image, dtype=np.float32), model.spec.preprocess) for c in batch]
        maps = candidate_maps(model, torch.stack([p[0] for p in prepared]))
        for i, (case, (_, to_source, _)) in enumerate(zip(batch, prepared)):
            mask = np.asarray(case.mask, dtype=bool)
            near = dilate(mask, TOLERANT_SIDE_FRACTION * max(mask.shape))
            centre.append(bool(near[near.shape[0] // 2, near.shape[1] // 2]))
            areas.append(float(near.mean()))
            for name, m in maps.items():
                src = to_source(m[i])
                hits.setdefault(name, []).append(pointing_game_hit(src, near))
                strict.setdefault(name, []).append(pointing_game_hit(src, mask))
    report = {
        "model": {"name": model.spec.name, "version": model.spec.version, "score_head": str(model.spec.score_head)},
        "data": "FracAtlas validation split, fractured images with fracture polygons (source pixels)",
        "n_images": len(centre),
        "tolerance": f"mask dilated by {TOLERANT_SIDE_FRACTION:.0%} of the image's longest side",
        "baseline_random_peak": float(np.mean(areas)),
        "baseline_centre_peak": float(np.mean(centre)),
        "maps": {},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    for name in hits:
        values = np.asarray(hits[name], dtype=float)
        low, high = wilson_interval(float(values.sum()), float(values.size))
        report["maps"][name] = {"hit_rate_side": float(values.mean()), "wilson_95": [float(low), float(high)],
                                "hit_rate_strict": float(np.mean(strict[name]))}
        print(f"{name:22s} side {values.mean():.3f} [{low:.3f}, {high:.3f}]  strict {np.mean(strict[name]):.3f}")
    print(f"baselines: random peak {report['baseline_random_peak']:.3f}, centre {report['baseline_centre_peak']:.3f}; "
          f"{report['n_images']} images, {report['seconds']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
