"""Does ``medassist monitor`` stay quiet on the model's own source and alert on another's? (issue 21)

Two sets of real radiographs, each wrapped as DICOM DX in a temporary folder, triaged with the
shipped models and monitored against the shipped model card (the default reference):

* ``same_source``: up to N images of the fracture model's own FracAtlas validation split
  (``splits.FRACATLAS_SPLIT``, the split the card's reference distribution was measured on), a
  seeded random sample, so its fracture share is the split's (23%) in expectation;
* ``other_source``: up to N images of ``../shared/data/fracture_external_dev`` (MURA-like upper
  limb from another hospital), the same seeded sampling.

The DICOM wrapping is ``scripts/make_sample_data.py``'s (``make_dx``, the converter that built
``samples/export``), here at the JPEG's own size (``grey_pixels(max_side=None)``), as the card's
validation read it. BodyPartExamined: HAND/LEG/HIP/SHOULDER from FracAtlas's dataset.csv (""
for mixed); for the external set the region of the fracture label (FINGER, WRIST, SHOULDER, ELBOW,
FOREARM, HUMERUS), "" where no fracture is annotated (region unknown) or several regions. Images
whose part the shipped model excludes become "not applicable" rows: counted, not scored.

Nothing derived from the external images is kept: the DICOM files, triage runs and monitor
reports live in a temporary folder removed at the end; only figures go to ``--out``.

    PYTHONPATH=. nice -n 19 .venv/bin/python benchmarks/monitor_real_drift.py            # N=150
    PYTHONPATH=. nice -n 19 .venv/bin/python benchmarks/monitor_real_drift.py -n 20 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import make_sample_data as samples  # noqa: E402  (scripts/ is not a package: the sample converter)

from medassist.datamodel import NOT_APPLICABLE  # noqa: E402
from medassist.models import fracatlas, splits  # noqa: E402
from medassist.models.fracture_external import REGION_BODY_PARTS, read_external  # noqa: E402

DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "monitor_real_drift.json"
MODEL = "fracture_xray"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--images", type=int, default=150, help="images per set, at most (default 150)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample of each set")
    p.add_argument("--data", type=Path, default=DATA,
                   help="the shared data folder (fracatlas/, fracture_external_dev/)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON of figures")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads of the triage runs")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error("--images must be at least 1")
    return args


def sample(items: list, n: int, seed: int) -> list:
    """Up to ``n`` of ``items``, a seeded random sample kept in the items' order."""
    if n >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), n))
    return [item for i, item in enumerate(items) if i in keep]


def fracatlas_cases(data: Path, n: int, seed: int) -> list[dict]:
    """The fracture model's own validation split of FracAtlas, sampled."""
    records = [r for r in fracatlas.read_records(data / "fracatlas")
               if fracatlas.split_of(r.image_id, **splits.FRACATLAS_SPLIT) == "val"]
    return [{"path": r.path, "id": Path(r.image_id).stem, "label": r.fractured,
             "body_part": samples.BODY_PART.get(r.region, ""), "views": r.view.split("+") if r.view != "unknown" else []}
            for r in sample(records, n, seed)]


def external_cases(data: Path, n: int, seed: int) -> list[dict]:
    """The other-source set, sampled; a body part only where a fracture label names one region."""
    return [{"path": r.path, "id": r.path.stem, "label": r.fractured,
             "body_part": REGION_BODY_PARTS.get(r.region, ""), "views": []}
            for r in sample(read_external(data / "fracture_external_dev"), n, seed)]


def wrap(cases: list[dict], folder: Path, tag: str, source: str) -> None:
    """Each JPEG as a DX DICOM file (one study each) with the sample converter's synthetic header."""
    for number, case in enumerate(cases, start=1):
        meta = {"region": "mixed", "views": case["views"]}  # "mixed" -> no part; set below
        with warnings.catch_warnings():  # make_dx's time (valid for the 12 samples) and description
            warnings.simplefilter("ignore", UserWarning)  # (a long file name) are replaced below
            ds = samples.make_dx(samples.grey_pixels(case["path"], max_side=None), number, case["id"], meta,
                                 "O", "", tag=tag)
        # make_dx's fields that assume the 12 bundled samples: a valid time, this set's part and source
        clock = f"{9 + number // 3600 % 10:02d}{number // 60 % 60:02d}{number % 60:02d}"  # one second apart
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = clock
        ds.BodyPartExamined = case["body_part"]
        ds.StudyDescription = f"XR {case['body_part']}".strip()
        ds.SeriesDescription = f"{source} {case['id']}"[:64]
        ds.ImageComments = f"Converted from {source} {case['path'].name} for benchmarks/monitor_real_drift.py. " \
                           "Synthetic header, not a real patient."
        samples.write_dataset(ds, folder / f"{tag}{number:04d}" / "IM0001.dcm")


def run_cli(args: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "medassist.cli", *args], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"medassist {args[0]} failed ({done.returncode}):\n"
                         f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def worklist_counts(run_dir: Path) -> dict:
    """Rows of the model in worklist.csv by status: scored (a score), not applicable, error."""
    counts = {"scored": 0, "not_applicable": 0, "error": 0, "other_rows": 0}
    not_applicable_parts: dict[str, int] = {}
    with open(run_dir / "worklist.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("model") == MODEL and row.get("score", "") != "":
                counts["scored"] += 1
            elif row.get("error"):
                counts["error"] += 1
            elif row.get("finding") == NOT_APPLICABLE:
                counts["not_applicable"] += 1
                part = row.get("body_part") or "unknown"
                not_applicable_parts[part] = not_applicable_parts.get(part, 0) + 1
            else:
                counts["other_rows"] += 1
    counts["not_applicable_by_body_part"] = not_applicable_parts
    return counts


def model_figures(report: dict) -> dict:
    """fracture_xray's run figures from monitor.json: studies, flag rate (and its band), PSI, KS."""
    for figures in report.get("models", []):
        if figures.get("model") != MODEL or not figures.get("runs"):
            continue
        period = figures["runs"][0]
        scores, drift, band = period.get("scores") or {}, period.get("drift") or {}, period.get("flag_rate") or {}
        return {
            "version": figures.get("version"),
            "n_findings": scores.get("n_findings"),
            "n_studies": scores.get("n_studies"),
            "n_flagged": scores.get("n_flagged"),
            "flag_rate": scores.get("flag_rate"),
            "score_mean": scores.get("mean"),
            "score_quantiles": scores.get("quantiles"),
            "reference_flag_rate": band.get("reference_rate"),
            "flag_rate_band": [band.get("low"), band.get("high")] if band else None,
            "flag_rate_band_confidence": band.get("confidence"),
            "psi": drift.get("psi"),
            "psi_ci": drift.get("psi_ci"),
            "psi_level": drift.get("level"),
            "psi_bins": len(drift.get("edges", [])) + 1 if drift else None,
            "ks_statistic": drift.get("ks_statistic"),
            "ks_p_value": drift.get("ks_p_value"),
            "n_reference": drift.get("n_reference"),
            "psi_bin_edges": drift.get("edges"),
            "reference_proportions": drift.get("reference_proportions"),
            "current_proportions": drift.get("current_proportions"),
        }
    return {}


def one_set(name: str, source: str, cases: list[dict], work: Path, threads: int) -> dict:
    started = time.perf_counter()
    dicom, run, report_dir = work / name / "dicom", work / name / "run", work / name / "monitor"
    wrap(cases, dicom, tag="SRC" if name == "same_source" else "EXT", source=source)
    wrapped = time.perf_counter()
    run_cli(["triage", str(dicom), "--out", str(run), "--explain", "none", "--workers", "0", "--quiet",
             "--device", "cpu"], threads)
    triaged = time.perf_counter()
    run_cli(["monitor", str(run), "--out", str(report_dir)], threads)
    report = json.loads((report_dir / "monitor.json").read_text())
    parts: dict[str, int] = {}
    for case in cases:
        parts[case["body_part"] or "unknown"] = parts.get(case["body_part"] or "unknown", 0) + 1
    figures = model_figures(report)
    return {
        "source": source,
        "images": len(cases),
        "fractured_images": sum(c["label"] for c in cases),
        "body_parts": dict(sorted(parts.items())),
        "rows": worklist_counts(run),
        "rows_scored": figures.get("n_findings"),
        **{k: v for k, v in figures.items() if k != "n_findings"},
        "alerts": [{k: a.get(k) for k in ("model", "version", "kind", "metric", "value", "limit")}
                   for a in report.get("alerts", [])],
        "alert_details": [a.get("detail") for a in report.get("alerts", [])],
        "reference": report.get("reference"),
        "problems": report.get("problems"),
        "wall_s": {"wrap": round(wrapped - started, 1), "triage": round(triaged - wrapped, 1),
                   "monitor": round(time.perf_counter() - triaged, 1),
                   "total": round(time.perf_counter() - started, 1)},
    }


def summary(name: str, s: dict) -> str:
    def f(x, d=3):
        return "n/a" if x is None else f"{x:.{d}f}"
    ci = s.get("psi_ci") or [None, None]
    alerts = ", ".join(f"{a['kind']}/{a['metric']} {f(a['value'])} (limit {a['limit']})" for a in s["alerts"]) or "none"
    return (f"{name}: {s['images']} images ({s['fractured_images']} fractured), {s['rows_scored']} scored, "
            f"flag rate {f(s.get('flag_rate'))} (reference {f(s.get('reference_flag_rate'))}, band "
            f"{f((s.get('flag_rate_band') or [None])[0])}-{f((s.get('flag_rate_band') or [None, None])[1])}), "
            f"PSI {f(s.get('psi'))} [{f(ci[0])}, {f(ci[1])}], KS D {f(s.get('ks_statistic'))} "
            f"p {'n/a' if s.get('ks_p_value') is None else format(s['ks_p_value'], '.2g')}; alerts: {alerts}; "
            f"{s['wall_s']['total']} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    sets = {
        "same_source": ("FracAtlas validation split", fracatlas_cases(args.data, args.images, args.seed)),
        "other_source": ("fracture_external_dev", external_cases(args.data, args.images, args.seed)),
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="monitor_real_drift_") as tmp:
        for name, (source, cases) in sets.items():
            results[name] = one_set(name, source, cases, Path(tmp), args.threads)
            print(summary(name, results[name]), flush=True)
    out = {
        "benchmark": "benchmarks/monitor_real_drift.py",
        "command": "PYTHONPATH=. nice -n 19 .venv/bin/python benchmarks/monitor_real_drift.py"
                   + (f" -n {args.images}" if args.images != 150 else "")
                   + (f" --seed {args.seed}" if args.seed else ""),
        "images_per_set": args.images,
        "seed": args.seed,
        "threads": args.threads,
        "reference": "the shipped model card (medassist monitor's default)",
        "limits": "configs/monitor.yaml",
        "sets": results,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1).replace(f"{REPO}/", "") + "\n")  # checkout-relative paths
    print(f"wrote {args.out} ({out['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
