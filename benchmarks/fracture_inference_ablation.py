"""Inference-time ablation of the shipped fracture model: cheap changes, no training, each alone.

Measures, on the FracAtlas validation split (the block split of ``configs/fracture_xray.yaml``) and
on the other-source set ``../shared/data/fracture_external_dev`` (MURA-like upper limb), the AUROC
of the shipped ``fracture_xray`` weights under:

1. ``baseline``: the shipped inference path (``prepare_2d`` at the spec's preprocessing, spec head);
2. ``content_crop``: the grey image cropped to the bounding box of its non-background content
   (``content_box``) before preparation;
3. TTA: mean score over {identity, horizontal flip}, and over {identity, hflip, rotate +-10 deg}
   (flip and rotation of the prepared input);
4. each score head (image, cell_max, mean) of the baseline;
5. ``equalize_nonzero`` applied to the prepared input (the model was trained without it);
6. multi-scale: max and mean of the whole-image score and four overlapping corner crops of
   ``--quadrant-frac`` (0.6) of each side, each crop re-prepared at the input size;
7. grey inversion: the grey image inverted (255 - grey) before preparation;

plus the AUROC of trivial image statistics (pixel count, mean grey, fraction of near-black
pixels), which shows whether acquisition shortcuts separate the classes.

External-dev AUROCs carry a bootstrap 95% interval (``medassist.metrics.metrics_with_ci``, seed 0)
and a paired bootstrap interval of the difference to the baseline (same images resampled).

    nice -n 19 .venv/bin/python benchmarks/fracture_inference_ablation.py --out /tmp/fracture_ablation.json

Every raw-image-derived input is prepared once per set and cached (float16) under ``--cache-dir``
(default /tmp/fracture_ablation_cache), scores per variant likewise, so a rerun only recomputes
what is missing. Nothing derived from the external images is written inside the repository:
only the figures (AUROCs) go to ``--out``. One torch thread by default (other jobs share the CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXTERNAL_ROOT = REPO.parent / "shared" / "data" / "fracture_external_dev"
FRACATLAS_ROOT = REPO.parent / "shared" / "data" / "fracatlas"
FRACATLAS_CACHE = REPO / "cache" / "fracatlas_448.npz"

# inputs prepared from the raw grey image, one slot each in the cached (N, len, S, S) array
RAW_VARIANTS = ("base", "crop", "q_tl", "q_tr", "q_bl", "q_br", "invert")
QUADRANTS = ("q_tl", "q_tr", "q_bl", "q_br")
NEAR_BLACK = 10  # grey level (0..255) at or below which a pixel counts as near-black


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/fracture_ablation.json"), help="JSON report")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/fracture_ablation_cache"))
    p.add_argument("--external-root", type=Path, default=EXTERNAL_ROOT)
    p.add_argument("--fracatlas-root", type=Path, default=FRACATLAS_ROOT)
    p.add_argument("--model", default="fracture_xray")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quadrant-frac", type=float, default=0.6, help="side fraction of each corner crop")
    p.add_argument("--rotate-deg", type=float, default=10.0)
    p.add_argument("--n-resamples", type=int, default=1000)
    p.add_argument("--limit", type=int, default=None, help="N images spread over each set (smoke runs)")
    return p.parse_args(argv)


# --- the input changes ---------------------------------------------------------------------------


def content_box(grey: np.ndarray, *, low_pct: float = 1.0, high_pct: float = 99.5, level: float = 0.05,
                open_px: int = 3, margin: float = 0.02, min_area: float = 0.10) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the non-background content of a grey (rows, cols) image.

    Foreground: pixels above ``low + level * (high - low)`` (``low``/``high`` the ``low_pct``/
    ``high_pct`` percentiles), cleaned by a binary opening of ``open_px`` (removes JPEG noise and
    thin scan lines in black borders), on a copy subsampled to <= ~512 px for speed. The box of the
    foreground, widened by ``margin`` of each side, is the content; a box under ``min_area`` of the
    image (or no foreground) keeps the whole image.
    """
    from scipy import ndimage

    rows, cols = grey.shape
    step = max(1, max(rows, cols) // 512)
    small = np.asarray(grey[::step, ::step], dtype=np.float32)
    low, high = np.percentile(small, (low_pct, high_pct))
    whole = (0, rows, 0, cols)
    if high <= low:
        return whole
    mask = ndimage.binary_opening(small > low + level * (high - low), structure=np.ones((open_px, open_px)))
    r = np.flatnonzero(mask.any(axis=1))
    c = np.flatnonzero(mask.any(axis=0))
    if not len(r) or not len(c):
        return whole
    top, bottom = r[0] * step, min(rows, (r[-1] + 1) * step)
    left, right = c[0] * step, min(cols, (c[-1] + 1) * step)
    dr, dc = int(round(margin * rows)), int(round(margin * cols))
    top, bottom, left, right = max(0, top - dr), min(rows, bottom + dr), max(0, left - dc), min(cols, right + dc)
    if (bottom - top) * (right - left) < min_area * rows * cols:
        return whole
    return int(top), int(bottom), int(left), int(right)


def corner_crops(grey: np.ndarray, frac: float) -> list[np.ndarray]:
    """Four overlapping corner crops (top-left, top-right, bottom-left, bottom-right), each ``frac``
    of the rows and of the columns (frac > 0.5: neighbours overlap by 2 * frac - 1)."""
    rows, cols = grey.shape
    h, w = max(1, int(round(frac * rows))), max(1, int(round(frac * cols)))
    return [grey[:h, :w], grey[:h, cols - w:], grey[rows - h:, :w], grey[rows - h:, cols - w:]]


def rotate(inputs, degrees: float):
    """Rotate (N, S, S) prepared inputs about their centre (bilinear, zero fill)."""
    import torch
    import torch.nn.functional as F

    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=torch.float32)
    x = inputs[:, None]
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


# --- the two sets, prepared once -----------------------------------------------------------------


def fracatlas_val_records(root: Path):
    """The FracAtlas validation split of the training config (block // 100 % 5 == 4)."""
    from medassist.models import fracatlas, splits
    import yaml

    data = yaml.safe_load((REPO / "configs" / "fracture_xray.yaml").read_text())["data"]
    split = splits.block_settings(data)
    return [r for r in fracatlas.read_records(root) if fracatlas.split_of(r.image_id, **split) == "val"]


def prepare_set(name: str, records, spec_pre, args) -> dict:
    """The set's raw-derived inputs (N, len(RAW_VARIANTS), S, S) float16, labels, image statistics,
    crop boxes; cached as ``{cache_dir}/{name}_inputs.npy`` + ``{name}_meta.npz``."""
    from medassist.ingest.images import load_jpeg_grayscale
    from medassist.preprocess.transforms import prepare_2d

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    arr_path, meta_path = args.cache_dir / f"{name}_inputs.npy", args.cache_dir / f"{name}_meta.npz"
    labels = np.array([r.fractured for r in records], dtype=np.int64)
    if arr_path.exists() and meta_path.exists():
        meta = dict(np.load(meta_path))
        if np.array_equal(meta["labels"], labels) and float(meta["quadrant_frac"]) == args.quadrant_frac:
            return {"inputs": np.load(arr_path, mmap_mode="r"), **meta}
    size = spec_pre.input_size
    inputs = np.lib.format.open_memmap(arr_path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float16,
                                       shape=(len(records), len(RAW_VARIANTS), size, size))
    stats = np.zeros((len(records), 3), dtype=np.float64)  # pixel count, mean grey, near-black fraction
    boxes = np.zeros((len(records), 4), dtype=np.int64)
    shapes = np.zeros((len(records), 2), dtype=np.int64)
    t0 = time.time()
    for i, rec in enumerate(records):
        grey_u8 = load_jpeg_grayscale(rec.path)
        grey = grey_u8.astype(np.float32)
        shapes[i] = grey.shape
        stats[i] = (grey.size, float(grey.mean()), float((grey_u8 <= NEAR_BLACK).mean()))
        top, bottom, left, right = boxes[i] = content_box(grey)
        sources = [grey, grey[top:bottom, left:right], *corner_crops(grey, args.quadrant_frac), 255.0 - grey]
        for j, src in enumerate(sources):
            inputs[i, j] = prepare_2d(np.ascontiguousarray(src), spec_pre)[0][0].numpy().astype(np.float16)
        if (i + 1) % 100 == 0:
            print(f"  {name}: prepared {i + 1}/{len(records)} ({time.time() - t0:.0f} s)", flush=True)
    inputs.flush()
    del inputs
    arr_path.with_suffix(".tmp.npy").replace(arr_path)
    meta = {"labels": labels, "stats": stats, "boxes": boxes, "shapes": shapes,
            "quadrant_frac": np.float64(args.quadrant_frac)}
    np.savez(meta_path, **meta)
    return {"inputs": np.load(arr_path, mmap_mode="r"), **meta}


# --- scoring -------------------------------------------------------------------------------------


def score_variant(name: str, variant: str, data: dict, net, args) -> dict[str, np.ndarray]:
    """Every head's probabilities (N,) for one variant of a set; cached per (set, variant)."""
    import torch

    from medassist.models.fracture_external import score_inputs
    from medassist.preprocess.transforms import equalize_nonzero

    path = args.cache_dir / f"{name}_scores_{variant}.npz"
    n = len(data["labels"])
    if path.exists():
        cached = dict(np.load(path))
        if len(cached["mean"]) == n:
            return cached
    slot = RAW_VARIANTS.index(variant if variant in RAW_VARIANTS else "base")
    parts: dict[str, list[np.ndarray]] = {"image": [], "cell_max": [], "mean": []}
    chunk = 64
    for start in range(0, n, chunk):
        x = torch.from_numpy(np.asarray(data["inputs"][start : start + chunk, slot], dtype=np.float32))
        if variant == "hflip":
            x = x.flip(-1)
        elif variant == "rot_pos":
            x = rotate(x, args.rotate_deg)
        elif variant == "rot_neg":
            x = rotate(x, -args.rotate_deg)
        elif variant == "equalize":
            x = equalize_nonzero(x)
        probs = score_inputs(net, np.ascontiguousarray(x.numpy()), args.batch_size)
        for head in parts:
            parts[head].append(np.asarray(probs.of(head), dtype=np.float64))
    out = {head: np.concatenate(v) for head, v in parts.items()}
    np.savez(path, **out)
    return out


# --- metrics -------------------------------------------------------------------------------------


def auroc_ci(labels: np.ndarray, scores: np.ndarray, threshold: float, n_resamples: int) -> dict:
    from medassist.metrics import metrics_with_ci

    m = metrics_with_ci(labels, scores, threshold, n_resamples=n_resamples, seed=0)
    return {"auroc": m["auroc"], "ci": m["ci"]["auroc"], "sensitivity": m["sensitivity"],
            "specificity": m["specificity"]}


def paired_delta(labels: np.ndarray, scores: np.ndarray, base: np.ndarray, n_resamples: int) -> list[float]:
    """95% percentile interval of AUROC(scores) - AUROC(base), the same images resampled (seed 0)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    deltas = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(labels), len(labels))
        y = labels[idx]
        if y.min() == y.max():
            continue
        deltas.append(roc_auc_score(y, scores[idx]) - roc_auc_score(y, base[idx]))
    return [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))]


def main(argv: list[str] | None = None) -> int:
    import torch
    from sklearn.metrics import roc_auc_score

    from medassist.models.fracture_external import read_external
    from medassist.models.registry import load_model, spec_by_name

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(spec_by_name(args.model), torch.device("cpu"))
    spec, net = model.spec, model.network
    head = spec.score_head
    started = time.time()

    sets = {"fracatlas_val": fracatlas_val_records(args.fracatlas_root), "external_dev": read_external(args.external_root)}
    if args.limit:
        sets = {k: v[:: max(1, len(v) // args.limit)][: args.limit] for k, v in sets.items()}
    data = {}
    for name, records in sets.items():
        print(f"preparing {name} ({len(records)} images)", flush=True)
        data[name] = prepare_set(name, records, spec.preprocess, args)

    # the baseline inputs prepared here vs the training cache's uint8 inputs (FracAtlas): same chain?
    cache_check = None
    if FRACATLAS_CACHE.exists() and not args.limit:
        cache = np.load(FRACATLAS_CACHE)
        pos = {i: k for k, i in enumerate(cache["ids"])}
        idx = [pos[r.image_id] for r in sets["fracatlas_val"]]
        ref = cache["images"][idx].astype(np.float32) / 255.0
        diff = np.abs(np.asarray(data["fracatlas_val"]["inputs"][:, 0], dtype=np.float32) - ref)
        cache_check = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
        print(f"baseline inputs vs {FRACATLAS_CACHE.name}: max |diff| {diff.max():.4f}", flush=True)

    score_names = ("base", "hflip", "rot_pos", "rot_neg", "crop", "equalize", *QUADRANTS, "invert")
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for name in sets:
        scores[name] = {}
        for v in score_names:
            t0 = time.time()
            scores[name][v] = score_variant(name, v, data[name], net, args)
            print(f"  scored {name}/{v} ({time.time() - t0:.0f} s, {(time.time() - started) / 60:.1f} min in)",
                  flush=True)

    def variant_scores(name: str) -> dict[str, tuple[np.ndarray, str]]:
        s = scores[name]
        quads = np.stack([s[q][head] for q in QUADRANTS] + [s["base"][head]])
        return {
            "baseline": (s["base"][head], f"shipped path, head {head}"),
            "head=image": (s["base"]["image"], "baseline input, image head"),
            "head=cell_max": (s["base"]["cell_max"], "baseline input, cell_max head"),
            "head=mean": (s["base"]["mean"], "baseline input, mean head"),
            "content_crop": (s["crop"][head], "grey cropped to its content box before preparation"),
            "tta_hflip": ((s["base"][head] + s["hflip"][head]) / 2, "mean of {id, hflip}"),
            "tta_hflip_rot10": ((s["base"][head] + s["hflip"][head] + s["rot_pos"][head] + s["rot_neg"][head]) / 4,
                                f"mean of {{id, hflip, rot +-{args.rotate_deg:g}}}"),
            "equalize": (s["equalize"][head], "equalize_nonzero on the prepared input (not trained with)"),
            "multiscale_max": (quads.max(axis=0), f"max of whole + 4 corner crops ({args.quadrant_frac:g} side)"),
            "multiscale_mean": (quads.mean(axis=0), f"mean of whole + 4 corner crops ({args.quadrant_frac:g} side)"),
            "invert": (s["invert"][head], "grey inverted before preparation"),
        }

    report = {"model": spec.name, "version": spec.version, "score_head": head, "threshold": spec.threshold,
              "n": {k: int(len(v)) for k, v in sets.items()},
              "n_positive": {k: int(data[k]["labels"].sum()) for k in sets},
              "quadrant_frac": args.quadrant_frac, "rotate_deg": args.rotate_deg,
              "baseline_vs_training_cache": cache_check, "variants": {}, "image_statistics": {}, "crop": {}}
    for name in sets:
        labels = data[name]["labels"]
        base = scores[name]["base"][head]
        for variant, (s, note) in variant_scores(name).items():
            entry = report["variants"].setdefault(variant, {"note": note})
            m = auroc_ci(labels, s, spec.threshold, args.n_resamples)
            if variant != "baseline":
                m["delta_vs_baseline"] = float(m["auroc"] - roc_auc_score(labels, base))
                m["delta_ci"] = paired_delta(labels, s, base, args.n_resamples)
            entry[name] = m
        st = data[name]["stats"]
        for j, stat in enumerate(("pixel_count", "mean_grey", "near_black_fraction")):
            report["image_statistics"].setdefault(stat, {})[name] = auroc_ci(labels, st[:, j], float(np.median(st[:, j])),
                                                                           args.n_resamples)
        if name == "external_dev":  # is a variant's gain only image size (the strongest shortcut)?
            px = st[:, 0]
            tertile = np.digitize(px, np.quantile(px, [1 / 3, 2 / 3]))
            strata = {}
            for variant, (s, _) in variant_scores(name).items():
                if variant in ("baseline", "multiscale_mean", "multiscale_max", "content_crop"):
                    fit = np.polyfit(np.log(px), s, 1)  # scores with a linear fit on log pixel count removed
                    strata[variant] = {
                        "auroc_by_pixel_count_tertile": [float(roc_auc_score(labels[tertile == k], s[tertile == k]))
                                                         for k in range(3)],
                        "auroc_after_removing_log_pixel_count": float(roc_auc_score(labels, s - np.polyval(fit, np.log(px)))),
                    }
            report["size_check_external"] = strata
        b, sh = data[name]["boxes"], data[name]["shapes"]
        kept = ((b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])) / (sh[:, 0] * sh[:, 1])
        report["crop"][name] = {"images_cropped_over_5pct": int((kept < 0.95).sum()),
                                "median_area_kept": float(np.median(kept)), "min_area_kept": float(kept.min())}
    report["wall_minutes"] = round((time.time() - started) / 60, 1)

    def fmt(m: dict, ci: bool = True) -> str:
        text = f"{m['auroc']:.3f}"
        if ci:
            text += f" [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"
        return text

    print("\n| variant | FracAtlas val AUROC | external-dev AUROC [95% CI] | Δ external [paired 95% CI] | note |")
    print("|---|---|---|---|---|")
    for variant, entry in report["variants"].items():
        fa, ex = entry["fracatlas_val"], entry["external_dev"]
        delta = "—" if variant == "baseline" else f"{ex['delta_vs_baseline']:+.3f} [{ex['delta_ci'][0]:+.3f}, {ex['delta_ci'][1]:+.3f}]"
        fa_text = fmt(fa, ci=False) + ("" if variant == "baseline" else f" ({fa['delta_vs_baseline']:+.3f})")
        print(f"| {variant} | {fa_text} | {fmt(ex)} | {delta} | {entry['note']} |")
    for stat, entry in report["image_statistics"].items():
        print(f"| stat: {stat} | {fmt(entry['fracatlas_val'], ci=False)} | {fmt(entry['external_dev'])} | — | "
              "trivial image statistic as the score |")
    print(f"\ncrop: {json.dumps(report['crop'])}")
    for variant, entry in report.get("size_check_external", {}).items():
        tert = ", ".join(f"{a:.3f}" for a in entry["auroc_by_pixel_count_tertile"])
        print(f"external size check, {variant}: AUROC by pixel-count tertile [{tert}], "
              f"after removing log pixel count {entry['auroc_after_removing_log_pixel_count']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} ({report['wall_minutes']} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
