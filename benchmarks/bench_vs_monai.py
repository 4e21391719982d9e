"""End to end: medassist triage (torch, ONNX) against a plain MONAI pipeline, as whole processes (issue 20).

N FracAtlas validation radiographs (``monitor_real_drift.fracatlas_cases``' seeded sample, wrapped as
DX DICOM at their own size by its ``wrap``: the sample converter ``scripts/make_sample_data.py``'s
``make_dx``/``grey_pixels``) in a temporary folder; then, R times, interleaved (the order rotates
each repeat), three processes on that same folder, each with OMP/MKL/OpenBLAS threads = ``--threads``:

* ``torch``: ``medassist triage DIR --out OUT --explain none --runtime torch --workers 1 --device cpu``;
* ``onnx``: the same with ``--runtime onnx --onnx-dir`` the ``export-model --format onnx`` made
  beforehand in the temporary folder (not timed);
* ``monai``: ``benchmarks/monai_baseline.py DIR`` (MONAI transforms + ``DataLoader(num_workers=1,
  batch_size=8)`` around the same shipped network).

Images/s = N / the process's wall time (start-up, imports, model loading and writing included), best
and median over the repeats. Peak memory: ``/usr/bin/time``'s maximum resident set (the largest
single process of the tree) and the sum over the process tree (main + decoding workers) sampled
every 0.25 s. The load average is read before and after each run. Every run writes into a fresh
folder (triage resumes into an existing one). Agreement of the torch and MONAI scores (max abs
difference, Spearman) and of ONNX with torch is reported as information: the two pipelines differ in
preprocessing details (medassist's display windowing, decoding).

Nothing derived from the images is kept: only figures go to ``--out`` (``.md`` and ``.json``).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_vs_monai.py                 # N=300, R=3
    PYTHONPATH=. .venv/bin/python benchmarks/bench_vs_monai.py -n 16 -r 1 --out /tmp/vs_monai
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import monitor_real_drift as drift  # noqa: E402  (the FracAtlas sampling and DICOM wrapping)

from medassist.models.registry import spec_by_name  # noqa: E402

REPO = drift.REPO
MODEL = drift.MODEL
DEFAULT_OUT = REPO / "benchmarks" / "results" / "vs_monai"
KINDS = ("torch", "onnx", "monai")
TIME = shutil.which("time") or "/usr/bin/time"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--images", type=int, default=300, help="radiographs (default 300)")
    p.add_argument("-r", "--repeats", type=int, default=3, help="runs of each process (default 3)")
    p.add_argument("--threads", type=int, default=2, help="OMP/torch threads of each process (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the FracAtlas sample")
    p.add_argument("--data", type=Path, default=drift.DATA, help="the shared data folder (fracatlas/)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="OUT.md and OUT.json are written")
    args = p.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        p.error("--images and --repeats must be at least 1")
    return args


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def tree_rss_kb(root: int) -> int:
    """Resident set of ``root`` and its descendants, kB, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = set(), {root}
    while frontier:
        tree |= frontier
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in tree}
    return sum(rss.get(pid, 0) for pid in tree)


def timed(command: list[str], threads: int, log: Path) -> dict:
    """Run ``command`` under /usr/bin/time; wall seconds, peak RSS (largest process, tree sum), load."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    rss_file = log.with_suffix(".rss")
    peak_tree = [0]
    before = load()
    started = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen([TIME, "-f", "%M", "-o", str(rss_file), *command], env=env, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=REPO)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                peak_tree[0] = max(peak_tree[0], tree_rss_kb(child.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = child.wait()
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
    after = load()
    if code != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({code}):\n{log.read_text()[-4000:]}")
    rss_lines = [line for line in rss_file.read_text().split() if line.isdigit()]
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(int(rss_lines[-1]) / 1024, 1) if rss_lines else None,
            "peak_tree_rss_mb": round(peak_tree[0] / 1024, 1), "load_before": before, "load_after": after,
            "log_tail": log.read_text()[-300:].strip()}


def command_of(kind: str, dicom: Path, out: Path, onnx_dir: Path) -> list[str]:
    if kind == "monai":
        return [sys.executable, str(REPO / "benchmarks" / "monai_baseline.py"), str(dicom),
                "--out", str(out / "scores.csv")]
    triage = [sys.executable, "-m", "medassist.cli", "triage", str(dicom), "--out", str(out), "--explain", "none",
              "--runtime", kind, "--workers", "1", "--device", "cpu", "--batch-size", "8", "--quiet"]
    return triage + (["--onnx-dir", str(onnx_dir)] if kind == "onnx" else [])


def triage_scores(run: Path) -> dict[str, float]:
    """series_uid -> fracture_xray score from worklist.csv (scored rows only)."""
    with open(run / "worklist.csv", newline="") as fh:
        return {row["series_uid"]: float(row["score"]) for row in csv.DictReader(fh)
                if row.get("model") == MODEL and row.get("score", "") != ""}


def monai_scores(run: Path) -> dict[str, float]:
    with open(run / "scores.csv", newline="") as fh:
        return {pydicom.dcmread(row["path"], stop_before_pixels=True).SeriesInstanceUID: float(row["score"])
                for row in csv.DictReader(fh)}


def agreement(a: dict[str, float], b: dict[str, float], threshold: float) -> dict:
    common = sorted(set(a) & set(b))
    x, y = [a[k] for k in common], [b[k] for k in common]
    diffs = [abs(p - q) for p, q in zip(x, y)]
    return {"n_common": len(common), "only_first": len(set(a) - set(b)), "only_second": len(set(b) - set(a)),
            "max_abs_diff": max(diffs) if diffs else None,
            "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
            "spearman": float(spearmanr(x, y).statistic) if len(common) > 2 else None,
            "flags_changed": sum((p >= threshold) != (q >= threshold) for p, q in zip(x, y))}


def table(result: dict) -> str:
    rows = ["| runtime | images/s best | images/s median | ratio to MONAI (best / median) | peak RSS MB: "
            "largest process / process tree | load before -> after (1 min, per run) |",
            "|---|---:|---:|---:|---:|---|"]
    monai = result["summary"]["monai"]
    names = {"torch": "medassist triage, torch", "onnx": "medassist triage, ONNX Runtime",
             "monai": "plain MONAI pipeline"}
    for kind in KINDS:
        s = result["summary"][kind]
        ratio = "1.00 / 1.00" if kind == "monai" else \
            f"{s['images_per_s_best'] / monai['images_per_s_best']:.2f} / " \
            f"{s['images_per_s_median'] / monai['images_per_s_median']:.2f}"
        loads = ", ".join(f"{r['load_before'][0]:.2f}->{r['load_after'][0]:.2f}" for r in result["runs"][kind])
        rows.append(f"| {names[kind]} | {s['images_per_s_best']:.2f} | {s['images_per_s_median']:.2f} | {ratio} | "
                    f"{s['peak_rss_mb']:.0f} / {s['peak_tree_rss_mb']:.0f} | {loads} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    spec = spec_by_name(MODEL)
    cases = drift.fracatlas_cases(args.data, args.images, args.seed)
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    scores: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_vs_monai_") as tmp:
        work = Path(tmp)
        dicom, onnx_dir = work / "dicom", work / "onnx"
        drift.wrap(cases, dicom, tag="BVM", source="FracAtlas validation split")
        done = subprocess.run([sys.executable, "-m", "medassist.cli", "export-model", MODEL, "--format", "onnx",
                               "--out", str(onnx_dir)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode != 0:
            raise SystemExit(f"export-model failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        print(f"{len(cases)} radiographs wrapped, ONNX exported ({time.perf_counter() - started:.0f} s)", flush=True)
        for repeat in range(args.repeats):
            order = KINDS[repeat % 3:] + KINDS[:repeat % 3]
            for kind in order:
                out = work / f"{kind}_{repeat}"
                figures = timed(command_of(kind, dicom, out, onnx_dir), args.threads, work / f"{kind}_{repeat}.log")
                figures["images_per_s"] = round(len(cases) / figures["wall_s"], 3)
                figures["repeat"] = repeat
                runs[kind].append(figures)
                if kind not in scores:
                    scores[kind] = monai_scores(out) if kind == "monai" else triage_scores(out)
                print(f"repeat {repeat} {kind}: {figures['wall_s']} s, {figures['images_per_s']:.2f} images/s, "
                      f"peak RSS {figures['peak_rss_mb']} MB (tree {figures['peak_tree_rss_mb']}), load "
                      f"{figures['load_before'][0]} -> {figures['load_after'][0]}", flush=True)
                shutil.rmtree(out)
    summary = {}
    for kind in KINDS:
        rates = [r["images_per_s"] for r in runs[kind]]
        summary[kind] = {"images_per_s_best": max(rates), "images_per_s_median": statistics.median(rates),
                         "wall_s_best": min(r["wall_s"] for r in runs[kind]),
                         "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in runs[kind]),
                         "peak_tree_rss_mb": max(r["peak_tree_rss_mb"] for r in runs[kind])}
    for kind in ("torch", "onnx"):
        summary[kind]["ratio_to_monai_best"] = round(
            summary[kind]["images_per_s_best"] / summary["monai"]["images_per_s_best"], 3)
        summary[kind]["ratio_to_monai_median"] = round(
            summary[kind]["images_per_s_median"] / summary["monai"]["images_per_s_median"], 3)
    result = {
        "benchmark": "benchmarks/bench_vs_monai.py",
        "command": "PYTHONPATH=. .venv/bin/python benchmarks/bench_vs_monai.py"
                   + (f" -n {args.images}" if args.images != 300 else "")
                   + (f" -r {args.repeats}" if args.repeats != 3 else ""),
        "model": f"{MODEL} {spec.version} (score head {spec.score_head}, threshold {spec.threshold})",
        "images": len(cases), "fractured_images": sum(c["label"] for c in cases), "seed": args.seed,
        "repeats": args.repeats, "threads": args.threads, "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {name: __import__(name).__version__ for name in ("torch", "monai", "onnxruntime", "pydicom")},
        "summary": summary,
        "agreement": {"torch_vs_monai": agreement(scores["torch"], scores["monai"], spec.threshold),
                      "onnx_vs_torch": agreement(scores["onnx"], scores["torch"], spec.threshold)},
        "runs": runs,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    text = table(result)
    t, o = result["agreement"]["torch_vs_monai"], result["agreement"]["onnx_vs_torch"]
    notes = (f"{len(cases)} FracAtlas validation radiographs ({result['fractured_images']} fractured, seed "
             f"{args.seed}) as DX DICOM at their own size, one folder, {args.repeats} interleaved repeats of each "
             f"whole process; {args.threads} threads each, batch 8, 1 decoding worker, {os.cpu_count()} CPUs; "
             f"images/s = N / process wall time (start-up included). {result['model']}; versions "
             f"{result['versions']}.\n\n"
             f"Agreement (information): torch vs MONAI on {t['n_common']} common images: max abs diff "
             f"{t['max_abs_diff']:.2e}, mean {t['mean_abs_diff']:.2e}, Spearman {t['spearman']:.4f}, "
             f"{t['flags_changed']} flags differ at the threshold; ONNX vs torch: max abs diff "
             f"{o['max_abs_diff']:.2e}, {o['flags_changed']} flags differ.")
    print(text + "\n\n" + notes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(
        "# End to end: medassist triage (torch, ONNX) vs a plain MONAI pipeline\n\n" + notes + "\n\n" + text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1).replace(f"{REPO}/", "") + "\n")
    print(f"wrote {args.out}.md/.json ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
