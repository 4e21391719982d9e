"""Roofline line for the fracture network on this CPU: achieved GFLOP/s against the measured peak (issue 20).

* Work per image: ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass of the shipped
  network at its input size (convolutions and matrix products, 2 FLOPs per multiply-add).
* Peak: the best of ``--peak-repeats`` square fp32 matrix products (n = 1024 and 2048) with torch
  (``torch.mm``) and with ONNX Runtime (a one-node MatMul graph: MLAS, the kernels its convolutions
  use), on 1 and 2 threads: the most this CPU's GEMMs get from its vector units. The FMA peak at the
  clock ``/proc/cpuinfo`` reports (AVX2: 32 FLOPs per cycle per core) is printed beside it; a virtual
  CPU's real clock may be higher.
* Achieved: steady-state images/s of the network alone (batch 8, after warm-up; torch channels_last
  as triage runs it, and ONNX Runtime fp32 on the export) x work per image.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_roofline.py
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from medassist.cli import prefer_sleeping_threads

prefer_sleeping_threads()  # as the medassist command does, before torch loads OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from medassist.models.export import export_onnx  # noqa: E402
from medassist.models.onnx_runtime import load_scorer  # noqa: E402
from medassist.models.registry import load_model, spec_by_name  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_onnx import images_per_second  # noqa: E402  (the steady-state timing of the network alone)
from figures_out import write_figures  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "roofline"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fracture_xray")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=8, help="timed batches per configuration")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--peak-repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="OUT.md and OUT.json are written")
    return p.parse_args(argv)


def flops_per_image(network: torch.nn.Module, size: int) -> int:
    """FLOPs of one forward pass (both heads) on one (1, 1, size, size) input."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network.forward_all(torch.zeros(1, 1, size, size))
    return int(counter.get_total_flops())


def best_seconds(run, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_graph(n: int) -> bytes:
    """An ONNX graph of one n x n fp32 MatMul."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph([node], "mm", [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n])
                                             for x in ("a", "b")],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def matmul_peak_gflops(threads: int, repeats: int) -> dict[str, float]:
    """The best fp32 GFLOP/s of n x n matrix products on ``threads`` threads, torch's and ONNX Runtime's."""
    from medassist.models.onnx_runtime import onnxruntime_module, session_options

    ort = onnxruntime_module()
    torch.set_num_threads(threads)
    best = {"torch": 0.0, "onnxruntime": 0.0}
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        best["torch"] = max(best["torch"], 2 * n**3 / best_seconds(lambda: torch.mm(a, b), repeats) / 1e9)
        session = ort.InferenceSession(matmul_graph(n), sess_options=session_options(threads),
                                       providers=["CPUExecutionProvider"])
        feeds = {"a": a.numpy(), "b": b.numpy()}
        best["onnxruntime"] = max(best["onnxruntime"],
                                  2 * n**3 / best_seconds(lambda: session.run(None, feeds), repeats) / 1e9)
    return best


def fma_peak_gflops(threads: int) -> float | None:
    """AVX2 FMA peak at the clock /proc/cpuinfo reports: 2 units x 8 lanes x 2 FLOPs per cycle per core."""
    try:
        mhz = next(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("cpu MHz"))
    except (OSError, StopIteration, ValueError):
        return None
    return threads * 32 * mhz / 1e3


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = spec_by_name(args.model)
    model = load_model(spec, torch.device("cpu"))
    size = spec.preprocess.input_size
    work = flops_per_image(model.network, size)
    x = torch.rand(args.batch_size, 1, size, size).contiguous(memory_format=torch.channels_last)
    result: dict = {"model": f"{spec.name} {spec.version}", "input_size": size, "gflop_per_image": work / 1e9,
                    "batch_size": args.batch_size, "platform": platform.platform(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "load_before": os.getloadavg(), "threads": {}}
    with tempfile.TemporaryDirectory(prefix="medassist-roofline-") as tmp:
        export_onnx(spec, tmp)
        for threads in args.threads:
            gemm = matmul_peak_gflops(threads, args.peak_repeats)
            peak = max(gemm.values())
            torch.set_num_threads(threads)
            with torch.no_grad():
                torch_rate = images_per_second(lambda b: model.network.forward_all(b), x, len(x), args.batches)
            scorer = load_scorer(spec, tmp, threads)
            onnx_rate = images_per_second(lambda b: scorer.logits(b), np.ascontiguousarray(x.numpy()), len(x),
                                          args.batches)
            result["threads"][str(threads)] = {
                "peak_gflops": peak, "gemm_gflops": gemm, "fma_peak_gflops_at_reported_clock": fma_peak_gflops(threads),
                "torch": {"images_per_second": torch_rate, "gflops": torch_rate * work / 1e9},
                "onnx": {"images_per_second": onnx_rate, "gflops": onnx_rate * work / 1e9},
            }
    result["load_after"] = os.getloadavg()
    write_figures(args.out, result, render(result))
    return 0


def render(r: dict) -> str:
    lines = [f"# Roofline: {r['model']} at {r['input_size']} px, {r['gflop_per_image']:.2f} GFLOP per image", "",
             f"Network alone, batch {r['batch_size']}; peak = best fp32 GEMM (n = 1024, 2048) of torch and ONNX Runtime; "
             f"{r['platform']}, "
             f"torch {r['torch']}, {r['cpu_count']} CPUs; load average {r['load_before'][0]:.2f} before, "
             f"{r['load_after'][0]:.2f} after.", "",
             "| threads | measured peak GFLOP/s (torch / ORT GEMM) | FMA peak at reported clock | torch images/s "
             "| torch GFLOP/s (of peak) | ONNX Runtime images/s | ONNX GFLOP/s (of peak) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for threads, t in r["threads"].items():
        peak, gemm, fma = t["peak_gflops"], t["gemm_gflops"], t["fma_peak_gflops_at_reported_clock"]
        lines.append(f"| {threads} | {peak:.0f} ({gemm['torch']:.0f} / {gemm['onnxruntime']:.0f}) | "
                     f"{'-' if fma is None else f'{fma:.0f}'} | {t['torch']['images_per_second']:.1f} | "
                     f"{t['torch']['gflops']:.0f} "
                     f"({t['torch']['gflops'] / peak:.0%}) | {t['onnx']['images_per_second']:.1f} | "
                     f"{t['onnx']['gflops']:.0f} ({t['onnx']['gflops'] / peak:.0%}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
