"""Store a shipped model's confidence table (``medassist.audit.confidence``) in its spec JSON.

    .venv/bin/python scripts/confidence_tables.py --model fracture_xray
    .venv/bin/python scripts/confidence_tables.py --model tumor_mri --volumes model_cards/tumor_mri_volumes.json
    .venv/bin/python scripts/pin_models.py        # the spec changed: re-pin it

A radiograph model's table comes from its FracAtlas validation split, scored as ``medassist audit``
scores it (one image per case); a volume model's from the study scores of its volume-level
validation report (``scripts/tumor_volume_validation.py``: one study per case, as triage scores a
series). The weights do not change; the spec's ``validation["confidence"]`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="shipped model name")
    parser.add_argument("--volumes", type=Path, default=None, help="volume-validation report (volume models)")
    parser.add_argument("--bins", type=int, default=10, help="bins at the score quantiles")
    parser.add_argument("--min-cases", type=int, default=None, help="fewest cases per bin (default 20; 8 for volumes)")
    return parser.parse_args(argv)


def radiograph_scores(spec) -> tuple[list[int], list[float], str]:
    """Labels and scores of the FracAtlas validation split, as the audit scores them."""
    import torch

    from medassist.audit.evaluation import eval_from_fracatlas, find_fracatlas
    from medassist.models.registry import WEIGHTS_DIR, choose_device, load_model

    root = find_fracatlas(spec)
    if root is None:
        raise SystemExit("error: FracAtlas not found (set MEDASSIST_DATA or use ../shared/data)")
    torch.set_num_threads(2)
    model = load_model(spec, choose_device("cpu"), WEIGHTS_DIR)
    evaluation = eval_from_fracatlas(spec, lambda: model, root)
    return list(evaluation.labels), list(evaluation.scores), "the FracAtlas validation split"


def volume_scores(spec, report_path: Path) -> tuple[list[int], list[float], str]:
    """Labels and study scores of the volume-validation report's scored volumes."""
    report = json.loads(report_path.read_text())
    if report.get("version") != spec.version:
        raise SystemExit(f"error: {report_path} is for version {report.get('version')}, not {spec.version}")
    labels, scores, names = [], [], []
    for key, source in report["sources"].items():
        positive = "normal" not in source["target"].lower() and not key.startswith("ixi")
        scored = [v for v in source["volumes"] if not v.get("error")]
        labels += [int(positive)] * len(scored)
        scores += [float(v["score"]) for v in scored]
        names.append(f"{key} ({len(scored)})")
    return labels, scores, "the validation volumes (" + ", ".join(names) + ")"


def main(argv: list[str] | None = None) -> int:
    from medassist.audit.confidence import ConfidenceTable
    from medassist.atomic import write_atomic
    from medassist.models.registry import WEIGHTS_DIR, spec_by_name

    args = parse_args(argv)
    spec = spec_by_name(args.model)
    if spec.input_kind == "volume":
        if args.volumes is None:
            raise SystemExit("error: a volume model needs --volumes REPORT")
        labels, scores, source = volume_scores(spec, args.volumes)
        unit, min_cases = "study", args.min_cases or 8
    else:
        labels, scores, source = radiograph_scores(spec)
        unit, min_cases = "image", args.min_cases or 20
    table = ConfidenceTable.from_scores(labels, scores, unit=unit, source=source, n_bins=args.bins,
                                        min_cases=min_cases)
    path = WEIGHTS_DIR / f"{spec.name}.json"
    data = json.loads(path.read_text())
    data.setdefault("validation", {})["confidence"] = table.to_dict()
    write_atomic(path, json.dumps(data, indent=2) + "\n")
    for b in table.bins:
        print(f"{b.lower:.3f}-{b.upper:.3f}: {b.n_positive}/{b.n}")
    print(f"wrote validation.confidence into {path} ({len(table.bins)} bins, {len(labels)} cases); "
          "now run scripts/pin_models.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
