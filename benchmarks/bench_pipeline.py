"""Pipeline throughput in one run: decode only, model only, end to end (local and Ray).

Generates DICOM at realistic sizes in a temporary folder, one sub-folder per kind:

* DX: ``--dx`` 8-bit radiographs, 450 px on the long side (fracture model);
* CR: ``--cr`` 16-bit (12 bits stored) radiographs, 2,000 px on the long side (fracture model);
* MR: ``--mr`` 16-bit 512 x 512 x 150 brain-like series, one file per slice (tumour model,
  ``input_kind="volume"``); its images are slices.

and measures, per kind, in images per second:

* decode only: decoding and preprocessing into network inputs in this process (``JobDataset``'s
  work for radiographs; ``Series.load`` + ``prepare_slice`` of every slice for the volume);
* model only: the shipped model's forward pass on those inputs, batch ``--batch-size``;
* end to end local: ``run_triage`` on the folder (discovery, decoding in ``--workers`` processes,
  inference, saliency of flagged findings, journal, worklist) into a fresh folder;
* end to end Ray: ``run_triage_ray`` on a local Ray cluster of all this machine's CPUs, started
  once beforehand (its start time is reported apart); each run includes starting its actors.

The four measurements of a kind run back to back, so that their ratios see the same machine.

It prints a markdown table with the end-to-end / model-only ratios and writes it to
``benchmarks/results/pipeline.md`` with the raw figures in ``pipeline.json``. Wall-clock times:
on a shared machine they are lower bounds (the load average is reported with them).

    .venv/bin/python benchmarks/bench_pipeline.py            # ~ a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_pipeline.py --dx 16 --cr 4 --no-ray
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from medassist.cli import prefer_sleeping_threads

prefer_sleeping_threads()  # as the medassist command does, before torch loads OpenMP

import numpy as np
import torch

from medassist.ingest import discover_series
from medassist.models.onnx_runtime import RUNTIMES, load_for_runtime
from medassist.models.registry import WEIGHTS_DIR, LoadedModel, choose_device, shipped_specs
from medassist.triage import TriageOptions, run_triage
from medassist.families import family_for
from medassist.triage.inputs import Job, JobDataset
from medassist.triage.run import score_inputs_with_features
from medassist.triage.testing import new_file_dataset, synthetic_radiograph, write_dicom_image

RESULTS = Path(__file__).resolve().parent / "results"
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
MR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dx", type=int, default=48, help="8-bit 450 px DX files (default 48)")
    parser.add_argument("--cr", type=int, default=12, help="16-bit 2,000 px CR files (default 12)")
    parser.add_argument("--mr", type=int, default=1, help="512x512x150 MR series (default 1)")
    parser.add_argument("--mr-slices", type=int, default=150, help="slices per MR series (default 150)")
    parser.add_argument("--batch-size", type=int, default=8, help="model batch (default 8, as the triage command)")
    parser.add_argument("--workers", type=int, default=1, help="decode worker processes of the local backend")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--explain", default="flagged", choices=("flagged", "all", "none"),
                        help="saliency policy of the end-to-end runs (default: flagged, as triage)")
    parser.add_argument("--runtime", default="torch", choices=RUNTIMES,
                        help="what scores in model-only and local runs (default torch; Ray always scores with torch)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray backend")
    parser.add_argument("--object-store-mb", type=int, default=4096,
                        help="Ray object store (default 4096 MB; with 1 GB the decoded MR volume waits ~20 s "
                        "in Ray Data's backpressure)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where pipeline.md/.json go")
    return parser.parse_args()


# --- generated DICOM ------------------------------------------------------------------------------


def write_16bit(path: Path, pixels: np.ndarray, *, modality: str, sop_class: str, body_part: str,
                study: str, series: str, number: int, index: int, geometry: dict | None = None,
                window: tuple[float, float] | None = None) -> None:
    """One uncompressed 16-bit (12 bits stored) MONOCHROME2 file with the given UIDs and geometry."""
    ds = new_file_dataset(sop_class)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.AccessionNumber = f"BENCH^{index:04d}", f"BENCH-{index:04d}", f"B{index:04d}"
    ds.Modality, ds.BodyPartExamined = modality, body_part
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in (geometry or {}).items():
        setattr(ds, keyword, value)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_dx(root: Path, n: int) -> None:
    """8-bit DX hand radiographs, 450 px long side, varied aspect ratios."""
    for i in range(n):
        write_dicom_image(root / f"P{i:04d}" / "IM1.dcm", synthetic_radiograph(450, 300 + (i * 37) % 150, i),
                          body_part="HAND", patient_id=f"BENCH-{i:04d}", index=i)


def make_cr(root: Path, n: int) -> None:
    """16-bit (12 stored) CR radiographs of the leg, 2,000 px long side."""
    from pydicom.uid import generate_uid

    for i in range(n):
        cols = 1600 + (i * 97) % 400
        pixels = synthetic_radiograph(2000, cols, 1000 + i).astype(np.uint16) * 16
        write_16bit(root / f"C{i:04d}" / "IM1.dcm", pixels, modality="CR", sop_class=CR_SOP_CLASS, body_part="LEG",
                    study=generate_uid(), series=generate_uid(), number=1, index=1000 + i,
                    geometry={"PixelSpacing": [0.15, 0.15]}, window=(2048.0, 4096.0))


def brain_like_volume(slices: int, size: int, seed: int) -> np.ndarray:
    """(slices, size, size) 12-bit values: an ellipsoid head (bright rim, grey interior) with noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[0:slices, 0:size, 0:size]
    r = np.sqrt(((x - size / 2) / (0.36 * size)) ** 2 + ((y - size / 2) / (0.44 * size)) ** 2
                + ((z - slices / 2) / (0.55 * slices)) ** 2)
    head = np.where(r < 1.0, 900.0 + 500.0 * (r > 0.9) - 200.0 * (r < 0.3), 0.0).astype(np.float32)
    head += rng.normal(0, 30, size=head.shape).astype(np.float32) * (r < 1.0)
    return np.clip(head, 0, 4095).astype(np.uint16)


def make_mr(root: Path, n: int, slices: int) -> None:
    """``n`` axial 512 x 512 x ``slices`` MR series, 0.5 x 0.5 x 1 mm, one file per slice."""
    from pydicom.uid import generate_uid

    for s in range(n):
        volume = brain_like_volume(slices, 512, 2000 + s)
        study, series = generate_uid(), generate_uid()
        for k in range(slices):
            geometry = {
                "ImageOrientationPatient": [1, 0, 0, 0, 1, 0], "ImagePositionPatient": [-128.0, -128.0, float(k)],
                "PixelSpacing": [0.5, 0.5], "SliceThickness": 1.0, "SpacingBetweenSlices": 1.0,
            }
            write_16bit(root / f"M{s:02d}" / f"IM{k + 1:04d}.dcm", volume[k], modality="MR", sop_class=MR_SOP_CLASS,
                        body_part="BRAIN", study=study, series=series, number=k + 1, index=2000 + s,
                        geometry=geometry, window=(900.0, 1800.0))


# --- measurements ---------------------------------------------------------------------------------


def timed(work: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def decode_2d(folder: Path, model: LoadedModel) -> tuple[torch.Tensor, int, float]:
    """Network inputs of every radiograph (decoded and preprocessed here), count, seconds."""
    series, _ = discover_series([folder])
    dataset = JobDataset([Job(s, model.spec) for s in series], family_for(model.spec))
    items, seconds = timed(lambda: [dataset[i] for i in range(len(dataset))])
    bad = [item.error for item in items if item.inputs is None]
    assert not bad, bad
    return torch.cat([item.inputs for item in items]), len(items), seconds


def decode_volumes(folder: Path, model: LoadedModel) -> tuple[torch.Tensor, int, float]:
    """Every slice of every volume decoded and preprocessed as the tumour model reads it."""
    from medassist.models.tumor import prepare_slice

    series, _ = discover_series([folder])

    def work() -> list[torch.Tensor]:
        tensors = []
        for item in series:
            source = getattr(item.load(), model.spec.preprocess.source)
            tensors.extend(prepare_slice(source[k], model.spec.preprocess)[0] for k in range(source.shape[0]))
        return tensors

    tensors, seconds = timed(work)
    return torch.stack(tensors), len(tensors), seconds


def model_only(model: LoadedModel, inputs: torch.Tensor, batch_size: int) -> float:
    """Seconds for the forward passes over ``inputs`` at ``batch_size`` (after one warm-up batch)."""
    score_inputs_with_features(model, inputs[:batch_size], batch_size)

    def work() -> None:
        score_inputs_with_features(model, inputs, batch_size)
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    return timed(work)[1]


def end_to_end(run: Callable, folder: Path, out: Path, args: argparse.Namespace, **extra) -> tuple[float, int]:
    """Seconds of one whole triage run into a fresh folder, and its flagged findings."""
    options = TriageOptions(device=args.device, batch_size=args.batch_size, num_workers=args.workers, progress=False,
                            explain=args.explain, **extra)
    summary, seconds = timed(lambda: run([folder], out, options))
    assert summary.n_errors == 0 and summary.n_findings == summary.n_series, summary
    return seconds, summary.n_flagged


def main() -> None:
    args = parse_args()
    device = choose_device(args.device)
    specs = {s.name: s for s in shipped_specs(WEIGHTS_DIR)}
    kinds = [("DX 8-bit, 450 px", "dx", args.dx, "fracture_xray"), ("CR 16-bit, 2,000 px", "cr", args.cr, "fracture_xray"),
             (f"MR 16-bit, 512x512x{args.mr_slices}", "mr", args.mr, "tumor_mri")]
    kinds = [k for k in kinds if k[2] > 0 and k[3] in specs]
    load_before = os.getloadavg()
    results: list[dict] = []
    ray_start = None
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp_name:
        tmp = Path(tmp_name)
        makers = {"dx": lambda r, n: make_dx(r, n), "cr": lambda r, n: make_cr(r, n),
                  "mr": lambda r, n: make_mr(r, n, args.mr_slices)}
        for _, key, count, _ in kinds:
            print(f"generating {key} x {count} ...", flush=True)
            makers[key](tmp / key, count)
        ray = None
        if not args.no_ray:
            from medassist.triage.ray_backend import run_triage_ray, start_local_cluster

            print("starting a local Ray cluster ...", flush=True)
            ray, ray_start = timed(lambda: start_local_cluster(object_store_memory=args.object_store_mb * 2**20))
        try:  # per kind, the four measurements back to back: their ratios share the machine's state
            for label, key, count, model_name in kinds:
                print(f"{label}: decode only, model only, end to end local{'' if ray is None else ' and Ray'} ...",
                      flush=True)
                model = load_for_runtime(specs[model_name], device, args.runtime)
                decode = decode_volumes if specs[model_name].input_kind == "volume" else decode_2d
                inputs, images, t_decode = decode(tmp / key, model)
                t_model = model_only(model, inputs, args.batch_size)
                del inputs, model
                t_local, flagged = end_to_end(run_triage, tmp / key, tmp / "out" / f"{key}_local", args,
                                              runtime=args.runtime)
                row = {"data": label, "model": model_name, "series": count, "images": images,
                       "decode_s": t_decode, "model_s": t_model, "local_s": t_local, "flagged": flagged}
                if ray is not None:
                    row["ray_s"], _ = end_to_end(run_triage_ray, tmp / key, tmp / "out" / f"{key}_ray", args)
                results.append(row)
        finally:
            if ray is not None:
                ray.shutdown()
    load_after = os.getloadavg()
    table = render(results, args, device, ray_start, load_before, load_after)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline.md").write_text(table)
    meta = {"device": str(device), "runtime": args.runtime, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "batch_size": args.batch_size, "workers": args.workers, "explain": args.explain,
            "ray_start_s": ray_start, "load_average_before": load_before, "load_average_after": load_after,
            "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__}
    (args.out / "pipeline.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"written: {args.out / 'pipeline.md'}, {args.out / 'pipeline.json'}")


def render(results: list[dict], args: argparse.Namespace, device: torch.device, ray_start: float | None,
           load_before: tuple, load_after: tuple) -> str:
    """The markdown table (images per second; ratios to model only) with a line on the conditions."""
    lines = [
        "| data | images | decode only | model only | end to end, local | end to end, Ray | local / model | Ray / model |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rate = {k: r["images"] / r[f"{k}_s"] for k in ("decode", "model", "local", "ray") if f"{k}_s" in r}
        ray_rate = f"{rate['ray']:.1f}" if "ray" in rate else "-"
        ray_ratio = f"{rate['ray'] / rate['model']:.0%}" if "ray" in rate else "-"
        lines.append(f"| {r['data']} ({r['series']} series, {r['flagged']} flagged) | {r['images']} | "
                     f"{rate['decode']:.1f} | {rate['model']:.1f} | {rate['local']:.1f} | {ray_rate} | "
                     f"{rate['local'] / rate['model']:.0%} | {ray_ratio} |")
    ray_note = f"; Ray cluster start {ray_start:.0f} s (not in the table)" if ray_start is not None else ""
    lines += [
        "",
        f"Images per second (MR: slices). Runtime {args.runtime} (Ray: torch). Device {device}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, batch {args.batch_size}, local decode workers {args.workers}, "
        f"saliency '{args.explain}'{ray_note}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
