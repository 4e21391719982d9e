"""Triage throughput: bare model forward vs end-to-end ``run_triage``, at the same batch size.

Generates N (default 64) 8-bit ~450 px DICOM DX radiographs in a temporary folder, then measures

* model only: ``LoadedModel.scores`` on already preprocessed (N, 1, S, S) tensors, batch B;
* end to end: ``run_triage`` on the folder (discovery, decoding in worker processes, preprocessing,
  inference, journal and worklist writes), batch B, into a fresh output folder;

and prints a markdown table with the ratio (target: end to end >= 70% of model only), wall clock
and CPU seconds per image (the CPU ratio is the steadier one when other work shares the machine).
Uses the shipped fracture model when present, else a random ``localising_resnet`` (widen 0.5,
input 448: the shipped architecture). Run: ``.venv/bin/python benchmarks/bench_triage.py --n 32``.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from medassist.cli import prefer_sleeping_threads

prefer_sleeping_threads()  # as the medassist command does, before torch loads OpenMP

import torch

from medassist.ingest import discover_series
from medassist.models.registry import WEIGHTS_DIR, choose_device, load_model, shipped_specs
from medassist.preprocess.transforms import prepare_2d
from medassist.triage import TriageOptions, run_triage
from medassist.triage.testing import synthetic_radiograph, write_dicom_image, write_throwaway_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="number of radiographs (default 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="decode worker processes for run_triage")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for inference")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeat", type=int, default=1, help="alternate both measurements R times, keep the best")
    parser.add_argument("--fresh-model", action="store_true", help="ignore the shipped model")
    return parser.parse_args()


def make_export(root: Path, n: int) -> None:
    """N single-frame 8-bit DX files, 450 px on the long side, varied aspect ratios."""
    for i in range(n):
        cols = 300 + (i * 37) % 150
        write_dicom_image(root / f"P{i:04d}" / "IM1.dcm", synthetic_radiograph(450, cols, i),
                          body_part="HAND", patient_id=f"BENCH-{i:04d}", index=i)


def pick_model(tmp: Path, fresh: bool) -> Path:
    """The shipped weights folder if it has the fracture model, else a random one in ``tmp``."""
    if not fresh and any(s.name == "fracture_xray" for s in shipped_specs(WEIGHTS_DIR)):
        return WEIGHTS_DIR
    folder = tmp / "models"
    write_throwaway_model(folder, input_size=448, widen_factor=0.5)
    return folder


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the decode workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(work: Callable[[], int]) -> tuple[int, float, float]:
    """Images, wall seconds and CPU seconds of one call of ``work`` (which returns the images)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    images = work()
    return images, time.perf_counter() - wall, cpu_seconds() - cpu


def model_only_run(export: Path, weights_dir: Path, device: torch.device, batch_size: int) -> Callable[[], int]:
    """Preprocess every image up front, warm up; return the timed part: the bare forward passes."""
    spec = next(s for s in shipped_specs(weights_dir) if s.name == "fracture_xray")
    model = load_model(spec, device, weights_dir)
    series, _ = discover_series([export])
    inputs = torch.stack([prepare_2d(s.load().display[0], spec.preprocess)[0] for s in series])
    model.scores(inputs[:batch_size])

    def run() -> int:
        for chunk in inputs.split(batch_size):
            model.scores(chunk)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(inputs)

    return run


def end_to_end_run(export: Path, out: Path, weights_dir: Path, device: torch.device, batch_size: int,
                   workers: int) -> Callable[[], int]:
    """The timed part: a whole ``run_triage`` into a fresh output folder."""
    runs = iter(range(1_000_000))

    def run() -> int:
        options = TriageOptions(device=device, batch_size=batch_size, num_workers=workers, weights_dir=weights_dir,
                                progress=False)
        summary = run_triage([export], out / str(next(runs)), options)
        return summary.n_findings

    return run


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench_triage_") as tmp_name:
        tmp = Path(tmp_name)
        make_export(tmp / "export", args.n)
        weights_dir = pick_model(tmp, args.fresh_model)
        model_only = model_only_run(tmp / "export", weights_dir, device, args.batch_size)
        end_to_end = end_to_end_run(tmp / "export", tmp / "out", weights_dir, device, args.batch_size, args.workers)
        results: dict[str, list[tuple[int, float, float]]] = {"model": [], "e2e": []}
        for _ in range(args.repeat):
            results["model"].append(timed(model_only))
            results["e2e"].append(timed(end_to_end))
    (n_model, t_model, c_model), (n_e2e, t_e2e, c_e2e) = (min(r, key=lambda x: x[1]) for r in results.values())
    rate_model, rate_e2e = n_model / t_model, n_e2e / t_e2e
    model_name = "shipped fracture_xray" if weights_dir == WEIGHTS_DIR else "random localising_resnet (0.5, 448)"
    print(f"\n{args.n} DX files, ~450 px; model: {model_name}; device {device}; batch {args.batch_size}; "
          f"torch threads {args.threads}; decode workers {args.workers}; {os.cpu_count()} CPUs; "
          f"best of {args.repeat}; load average {os.getloadavg()[0]:.1f}\n")
    print("| measurement | images | wall s | images/s | CPU s per image |")
    print("|---|---:|---:|---:|---:|")
    print(f"| model forward only | {n_model} | {t_model:.2f} | {rate_model:.2f} | {c_model / n_model:.3f} |")
    print(f"| end-to-end run_triage | {n_e2e} | {t_e2e:.2f} | {rate_e2e:.2f} | {c_e2e / n_e2e:.3f} |")
    print(f"| **end-to-end / model** | | | **{rate_e2e / rate_model:.0%}** | {c_model / n_model / (c_e2e / n_e2e):.0%} |")


if __name__ == "__main__":
    main()
