"""Torch vs ONNX Runtime for the shipped fracture model: agreement on FracAtlas validation inputs and speed.

* Agreement: the fracture model's validation inputs (the FracAtlas block split of
  ``configs/fracture_xray.yaml``: block = id // 100, validation when block % 5 == 4), read from the
  training cache ``cache/fracatlas_448.npz`` (uint8 letterboxed inputs, exactly what training
  validated on; read only, never rebuilt here), ``--images`` of them evenly spaced. Each runtime's
  raw logits go through ``heads.py``; reported: max |difference| of the score-head probability and
  of every head, AUROC (sklearn) of each runtime and their difference, flags that change at the
  spec's threshold.
* Speed: steady-state images/s of the network alone (no decoding), batch ``--batch-size``, after a
  warm-up, torch (channels_last, as triage runs it) and ONNX Runtime (CPU provider, every graph
  optimisation) on 1 and 2 threads; and single-image latency (batch 1, one thread, p50/p95) of each:
  the edge case.
* ``--int8``: the same for ``onnxruntime.quantization.quantize_dynamic`` (int8 weights).
* ``--int8-static``: the same for ``quantize_static`` (QDQ, int8 weights per channel, uint8
  activations, MinMax ranges calibrated on ``--calibration`` training-split inputs, seeded; the first
  convolution and both heads stay float: quantising them moved scores by up to 0.06).

Writes ``benchmarks/results/onnx.md`` and ``onnx.json``. On a shared machine the times are lower
bounds; the load average before and after is reported with them.

    .venv/bin/python benchmarks/bench_onnx.py --images 300 --int8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from medassist.cli import prefer_sleeping_threads

prefer_sleeping_threads()  # as the medassist command does, before torch loads OpenMP

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medassist.models import fracatlas, splits
from medassist.models.export import export_onnx, onnx_file
from medassist.models.heads import SCORE_HEADS, head_probabilities
from medassist.models.registry import load_model, spec_by_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = ROOT / "cache" / "fracatlas_448.npz"
SPLIT = splits.FRACATLAS_SPLIT  # configs/fracture_xray.yaml, data


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="validation images for agreement (default 300)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch (default 8, as triage on the CPU)")
    parser.add_argument("--speed-batches", type=int, default=6, help="timed batches per configuration")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--int8", action="store_true", help="also dynamic int8 quantisation")
    parser.add_argument("--int8-static", action="store_true", help="also static int8 (calibrated) quantisation")
    parser.add_argument("--calibration", type=int, default=64, help="training inputs calibrating static int8")
    parser.add_argument("--latency-calls", type=int, default=50, help="timed single-image calls per runtime")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def validation_inputs(n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``n`` evenly spaced validation inputs (float32 (n, 1, 448, 448) in [0, 1]), labels, validation size."""
    with np.load(CACHE) as data:
        ids, labels = data["ids"], data["labels"]
        val = np.flatnonzero([fracatlas.split_of(str(i), **SPLIT) == "val" for i in ids])
        pick = val[np.linspace(0, len(val) - 1, min(n, len(val))).round().astype(int)]
        images = data["images"][pick]
    return (images[:, None].astype(np.float32) / 255.0), labels[pick], len(val)


def training_inputs(n: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded training-split inputs (float32 (n, 1, 448, 448) in [0, 1]): the calibration set."""
    with np.load(CACHE) as data:
        train = np.flatnonzero([fracatlas.split_of(str(i), **SPLIT) == "train" for i in data["ids"]])
        pick = np.sort(np.random.default_rng(seed).choice(train, min(n, len(train)), replace=False))
        images = data["images"][pick]
    return images[:, None].astype(np.float32) / 255.0


def quantize_static_int8(path: Path, out: Path, calibration: np.ndarray, batch: int) -> list[str]:
    """Static QDQ int8 of ``path`` into ``out``, calibrated on ``calibration``; the nodes kept float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(path), str(prepared))
    nodes = onnx.load(str(prepared)).graph.node
    first_conv = next(n.name for n in nodes if n.op_type == "Conv")
    keep_float = [first_conv] + [n.name for n in nodes if n.name.startswith(("/image_head", "/cell_head"))]

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict | None:
            if self.start >= len(calibration):
                return None
            chunk = {"input": np.ascontiguousarray(calibration[self.start:self.start + batch])}
            self.start += batch
            return chunk

    quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_float)
    return keep_float


def torch_logits(network, x: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            chunk = torch.from_numpy(x[start:start + batch]).contiguous(memory_format=torch.channels_last)
            image, cells = network.forward_all(chunk)
            parts.append((image.numpy(), cells.numpy()))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def ort_logits(session, x: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [session.run(["image_logits", "cell_logits"], {"input": np.ascontiguousarray(x[s:s + batch])})
             for s in range(0, len(x), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def probabilities(logits: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    heads = head_probabilities(torch.from_numpy(logits[0]), torch.from_numpy(logits[1]))
    return {h: heads.of(h).numpy().astype(np.float64) for h in SCORE_HEADS}


def compare(reference: dict, other: dict, labels: np.ndarray, head: str, threshold: float) -> dict:
    auroc_ref, auroc = roc_auc_score(labels, reference[head]), roc_auc_score(labels, other[head])
    return {
        "max_abs_diff_score": float(np.abs(reference[head] - other[head]).max()),
        "mean_abs_diff_score": float(np.abs(reference[head] - other[head]).mean()),
        "max_abs_diff_any_head": float(max(np.abs(reference[h] - other[h]).max() for h in SCORE_HEADS)),
        "auroc_torch": float(auroc_ref), "auroc": float(auroc), "auroc_diff": float(auroc - auroc_ref),
        "flags_changed": int(((reference[head] >= threshold) != (other[head] >= threshold)).sum()),
    }


def images_per_second(run, x: np.ndarray, batch: int, batches: int) -> float:
    chunk = x[:batch]
    run(chunk)
    run(chunk)  # warm-up: allocations, oneDNN / ORT kernel selection
    start = time.perf_counter()
    for _ in range(batches):
        run(chunk)
    return batch * batches / (time.perf_counter() - start)


def latency_ms(run, x: np.ndarray, calls: int) -> dict[str, float]:
    """Single-image latency (batch 1) in ms over ``calls`` calls after two warm-up calls: p50, p95."""
    one = x[:1]
    run(one)
    run(one)
    times = []
    for i in range(calls):
        image = x[i % len(x) : i % len(x) + 1]
        start = time.perf_counter()
        run(image)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)), "calls": calls}


def main() -> None:
    args = parse_args()
    spec = spec_by_name("fracture_xray")
    model = load_model(spec, torch.device("cpu"))
    x, labels, n_val = validation_inputs(args.images)
    load_before = os.getloadavg()
    result: dict = {"model": f"{spec.name} {spec.version}", "score_head": spec.score_head,
                    "threshold": spec.threshold, "images": len(x), "fractured": int(labels.sum()),
                    "validation_split_size": n_val, "batch_size": args.batch_size,
                    "cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(spec, tmp)
        assert path == onnx_file(spec, tmp)
        variants = {"onnx_fp32": path}
        if args.int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8 = Path(tmp) / f"{spec.name}.int8.onnx"
            quantize_dynamic(str(path), str(int8), weight_type=QuantType.QInt8)
            variants["onnx_int8"] = int8
            result["int8_file_mb"] = int8.stat().st_size / 2**20
        if args.int8_static:
            static = Path(tmp) / f"{spec.name}.int8-static.onnx"
            result["int8_static_float_nodes"] = quantize_static_int8(
                path, static, training_inputs(args.calibration), args.batch_size)
            result["int8_static_calibration"] = args.calibration
            variants["onnx_int8_static"] = static
            result["int8_static_file_mb"] = static.stat().st_size / 2**20
        result["fp32_file_mb"] = path.stat().st_size / 2**20

        torch.set_num_threads(max(args.threads))
        t0 = time.perf_counter()
        reference = probabilities(torch_logits(model.network, x, args.batch_size))
        result["agreement_torch_seconds"] = time.perf_counter() - t0
        result["agreement"] = {}
        for name, file in variants.items():
            scores = probabilities(ort_logits(ort_session(file, max(args.threads)), x, args.batch_size))
            result["agreement"][name] = compare(reference, scores, labels, spec.score_head, spec.threshold)

        speed: dict = {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            speed[f"torch_{threads}t"] = images_per_second(
                lambda c: torch_logits(model.network, c, args.batch_size), x, args.batch_size, args.speed_batches)
            for name, file in variants.items():
                session = ort_session(file, threads)
                speed[f"{name}_{threads}t"] = images_per_second(
                    lambda c, s=session: ort_logits(s, c, args.batch_size), x, args.batch_size, args.speed_batches)
        result["images_per_second"] = speed
        # the edge case: one image at a time on one core (network alone, no decoding)
        torch.set_num_threads(1)
        latency = {"torch_1t": latency_ms(lambda c: torch_logits(model.network, c, 1), x, args.latency_calls)}
        for name, file in variants.items():
            session = ort_session(file, 1)
            latency[f"{name}_1t"] = latency_ms(lambda c, s=session: ort_logits(s, c, 1), x, args.latency_calls)
        result["latency_ms_batch1"] = latency
    result["load_average_before"], result["load_average_after"] = load_before, os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onnx.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "onnx.md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    lines = [f"# torch vs ONNX Runtime: {r['model']} (score head {r['score_head']}, threshold {r['threshold']:.4f})", "",
             f"{r['images']} FracAtlas validation inputs ({r['fractured']} fractured) of {r['validation_split_size']}; "
             f"torch {r['torch']}, onnxruntime {r['onnxruntime']}, {r['cpu_count']} CPUs, batch {r['batch_size']}; "
             f"load average {r['load_average_before'][0]:.2f} before, {r['load_average_after'][0]:.2f} after "
             + ("(quiet machine)" if r["load_average_before"][0] < 1.0
                else "(a concurrent run shares the CPUs: speeds are lower bounds)"), "",
             "| runtime | max / mean abs diff (score) | max abs diff (any head) | AUROC | AUROC - torch | flags changed |",
             "|---|---|---|---|---|---|"]
    first = next(iter(r["agreement"].values()))
    lines.append(f"| torch | - | - | {first['auroc_torch']:.4f} | - | - |")
    for name, a in r["agreement"].items():
        lines.append(f"| {name} | {a['max_abs_diff_score']:.2e} / {a.get('mean_abs_diff_score', float('nan')):.1e} "
                     f"| {a['max_abs_diff_any_head']:.2e} | {a['auroc']:.4f} "
                     f"| {a['auroc_diff']:+.5f} | {a['flags_changed']} |")
    lines += ["", "| network alone | images/s |", "|---|---|"]
    lines += [f"| {name} | {v:.1f} |" for name, v in r["images_per_second"].items()]
    if r.get("latency_ms_batch1"):
        lines += ["", "| one image, one thread (network alone) | p50 ms | p95 ms |", "|---|---|---|"]
        lines += [f"| {name} | {v['p50']:.1f} | {v['p95']:.1f} |" for name, v in r["latency_ms_batch1"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
