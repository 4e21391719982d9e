"""Single-radiograph latency end to end on one core: the edge case (issue 20).

What one request costs on a small device that scores one radiograph at a time, in a warm process:
read the DICOM file (``read_series_file``: pydicom, the ingest checks), decode and prepare it for the
model (``Series.load`` and the radiograph family's ``prepare``: windowing, percentile scaling,
letterbox), and score it (batch 1), with torch and with ONNX Runtime (fp32, the export
``export-model`` makes), every library on one thread. N FracAtlas validation radiographs
(``monitor_real_drift``'s seeded sample, wrapped as DX DICOM at their own size), each timed once per
runtime after a warm-up of 3 images; p50 / p95 / max in ms of each step and of the whole.

Start-up (imports, loading the model) is not in these figures: a process that serves requests pays
it once; ``bench_vs_monai.py`` measures whole processes.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_edge_latency.py            # N=100
    PYTHONPATH=. .venv/bin/python benchmarks/bench_edge_latency.py -n 20 --out /tmp/edge
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"  # one core, before numpy / torch load their thread pools

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import monitor_real_drift as drift  # noqa: E402  (the FracAtlas sampling and DICOM wrapping)
from figures_out import write_figures  # noqa: E402

from medassist.families import family_for  # noqa: E402
from medassist.ingest.discover import read_series_file  # noqa: E402
from medassist.models.export import export_onnx  # noqa: E402
from medassist.models.onnx_runtime import load_for_runtime  # noqa: E402
from medassist.models.registry import spec_by_name  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "edge_latency"
STEPS = ("read", "prepare", "score", "total")
WARM_UP = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--images", type=int, default=100, help="radiographs (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the FracAtlas sample")
    p.add_argument("--data", type=Path, default=drift.DATA, help="the shared data folder (fracatlas/)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="OUT.md and OUT.json are written")
    return p.parse_args(argv)


def time_one(path: Path, model, family) -> dict[str, float]:
    """Milliseconds of each step for one radiograph file."""
    t0 = time.perf_counter()
    series = read_series_file(path)
    t1 = time.perf_counter()
    prepared = family.prepare(series.load(), model.spec)
    t2 = time.perf_counter()
    model.scores(prepared.inputs)
    t3 = time.perf_counter()
    return {"read": (t1 - t0) * 1e3, "prepare": (t2 - t1) * 1e3, "score": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}


def summary(times: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {step: {"p50": float(np.percentile([t[step] for t in times], 50)),
                   "p95": float(np.percentile([t[step] for t in times], 95)),
                   "max": float(max(t[step] for t in times))} for step in STEPS}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    spec = spec_by_name(drift.MODEL)
    family = family_for(spec)
    cases = drift.fracatlas_cases(args.data, args.images, args.seed)
    result: dict = {"model": f"{spec.name} {spec.version}", "images": len(cases), "threads": 1,
                    "platform": platform.platform(), "torch": torch.__version__, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="medassist-edge-") as tmp:
        folder = Path(tmp) / "dicom"
        folder.mkdir()
        drift.wrap(cases, folder, tag="EDGE", source="FracAtlas validation split")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        export_onnx(spec, Path(tmp) / "onnx")
        runtimes = {"torch": load_for_runtime(spec, torch.device("cpu"), "torch"),
                    "onnx": load_for_runtime(spec, torch.device("cpu"), "onnx", Path(tmp) / "onnx", threads=1)}
        result["runtimes"] = {}
        for name, model in runtimes.items():
            assert model.runtime == name, (name, model.runtime)
            for path in files[:WARM_UP]:
                time_one(path, model, family)
            times = [time_one(path, model, family) for path in files]
            result["runtimes"][name] = summary(times)
    result["load_after"] = os.getloadavg()
    write_figures(args.out, result, render(result))
    return 0


def render(r: dict) -> str:
    lines = [f"# One radiograph at a time, one thread: {r['model']}", "",
             f"{r['images']} FracAtlas validation radiographs as DX DICOM, each read, prepared and scored (batch 1) "
             f"in a warm process; {r['platform']}, torch {r['torch']}; load average "
             f"{r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after. Milliseconds, p50 / p95 (max).", "",
             "| runtime | read DICOM | decode + prepare | score | total |", "|---|---:|---:|---:|---:|"]
    for name, s in r["runtimes"].items():
        cells = [f"{s[step]['p50']:.1f} / {s[step]['p95']:.1f} ({s[step]['max']:.0f})" for step in STEPS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
