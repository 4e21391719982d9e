"""Cost of explaining a finding: plain inference vs GradCAM vs integrated gradients vs occlusion.

    python benchmarks/bench_explain.py                 # CPU, input 448, batch 8; markdown table
    python benchmarks/bench_explain.py --check         # exit 1 if GradCAM adds more than 50%

Triage scores a batch and keeps its last feature map; GradCAM for a flagged finding then runs on
the heads only (``saliency_map(features=...)``), so its added cost is the first GradCAM row. The
standalone row is what a map costs without the scoring pass (the review app, the sanity checks).

Uses the shipped fracture model when its weights are present, else the same architecture with
random weights (the cost does not depend on the weights). Occlusion runs hundreds of forward
passes per image, so it is timed on ``--occlusion-images`` images (its cost per image does not
depend on the batch). Both wall-clock and process CPU time are reported: on a shared machine
CPU time is the steadier of the two.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from medassist.cli import prefer_sleeping_threads

prefer_sleeping_threads()  # as the medassist command does, before torch loads OpenMP

import torch

from medassist.explain import saliency_map
from medassist.models.networks import build_network
from medassist.models.registry import WEIGHTS_DIR, LoadedModel, load_model, spec_by_name
from medassist.models.spec import ModelSpec, PreprocessSpec

GRADCAM_BUDGET = 0.5  # GradCAM may add at most 50% to per-image inference time


def get_model(name: str, size: int) -> tuple[LoadedModel, str]:
    if (WEIGHTS_DIR / f"{name}.json").is_file():
        model = load_model(spec_by_name(name), torch.device("cpu"))
        if model.spec.preprocess.input_size == size:
            return model, f"shipped {name} {model.spec.version}"
    torch.manual_seed(0)
    args = {"layers": [2, 2, 2, 2], "widen_factor": 0.5}
    spec = ModelSpec(
        name="bench", version="0", finding="fracture", labels=("no", "yes"), threshold=0.5,
        weights="none", sha256="", network="localising_resnet", network_args=args,
        preprocess=PreprocessSpec(input_size=size), modalities=("DX",),
    )
    net = build_network("localising_resnet", args).eval()
    return LoadedModel(spec=spec, network=net, device=torch.device("cpu")), "localising_resnet (random weights)"


def timed(fn, images: int, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds per image over ``repeats`` runs, after one warm-up run."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append((time.perf_counter() - w0) / images)
        cpus.append((time.process_time() - c0) / images)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fracture_xray")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--ig-internal-batch", type=int, default=8)
    parser.add_argument("--occlusion-window", type=int, default=32)
    parser.add_argument("--occlusion-stride", type=int, default=16)
    parser.add_argument("--occlusion-images", type=int, default=1)
    parser.add_argument("--skip", nargs="*", default=[], choices=["integrated_gradients", "occlusion"])
    parser.add_argument("--check", action="store_true", help="exit 1 if GradCAM exceeds its budget")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    model, label = get_model(args.model, args.size)
    x = torch.rand(args.batch, 1, args.size, args.size)
    n = args.batch
    rows = []

    rows.append(("inference", n, *timed(lambda: model.scores(x), n, args.repeats), ""))
    _, features = model.scores_and_features(x)
    triage_gradcam = lambda: saliency_map(model, x, method="gradcam", features=features)
    rows.append(("gradcam (triage: from the scoring pass)", n, *timed(triage_gradcam, n, args.repeats),
                 "layer4 map reused; heads-only backward"))
    gradcam = lambda: saliency_map(model, x, method="gradcam")
    rows.append(("gradcam (standalone)", n, *timed(gradcam, n, args.repeats), "own forward pass to layer4"))
    if "integrated_gradients" not in args.skip:
        ig = lambda: saliency_map(model, x, method="integrated_gradients", n_steps=args.ig_steps,
                                  internal_batch_size=args.ig_internal_batch)
        rows.append(("integrated_gradients", n, *timed(ig, n, 1),
                     f"{args.ig_steps} steps, internal batch {args.ig_internal_batch}"))
    if "occlusion" not in args.skip:
        k = max(1, min(args.occlusion_images, n))
        occ = lambda: saliency_map(model, x[:k], method="occlusion", window=args.occlusion_window,
                                   stride=args.occlusion_stride)
        windows = ((args.size - args.occlusion_window) // args.occlusion_stride + 1) ** 2
        rows.append(("occlusion", k, *timed(occ, k, 1),
                     f"window {args.occlusion_window}, stride {args.occlusion_stride} ({windows} forwards/image)"))

    base_wall, base_cpu = rows[0][2], rows[0][3]
    print(f"\nexplain cost on CPU ({torch.get_num_threads()} threads), input {args.size}, batch {n}, model: {label}\n")
    print("| method | images timed | wall s/image | CPU s/image | x inference (wall) | x inference (CPU) | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, k, wall, cpu, note in rows:
        print(f"| {name} | {k} | {wall:.3f} | {cpu:.3f} | {wall / base_wall:.2f} | {cpu / base_cpu:.2f} | {note} |")
    gc_wall, gc_cpu = rows[1][2], rows[1][3]
    overhead = gc_cpu / base_cpu
    verdict = "within" if overhead <= GRADCAM_BUDGET else "OVER"
    print(f"\nGradCAM in triage (from the scoring pass's feature map) adds {overhead:+.0%} CPU time "
          f"({gc_wall / base_wall:+.0%} wall) per image to inference: {verdict} the {GRADCAM_BUDGET:.0%} budget. "
          f"Standalone GradCAM (its own forward pass): {rows[2][3] / base_cpu:.2f}x inference.")
    return 1 if (args.check and overhead > GRADCAM_BUDGET) else 0


if __name__ == "__main__":
    sys.exit(main())
