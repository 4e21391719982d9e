"""Other-source validation of a shipped fracture model (issue 15): ``../shared/data/fracture_external_dev``
(MURA-like upper-limb radiographs) scored as triage prepares a radiograph, at the shipped head and
threshold. Writes one JSON report that ``medassist audit`` puts in the card's "External validation"
section, and prints a line per region.

    .venv/bin/python scripts/fracture_external_validation.py --out model_cards/fracture_xray_external.json

Never trains on the set, never copies it: only the figures leave it. ``--model``: a shipped name or
a spec JSON path (weights beside it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "fracture_external_dev"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fracture_xray", help="shipped model name or spec JSON path")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the external-dev folder")
    parser.add_argument("--out", required=True, type=Path, help="JSON report to write")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    from medassist.atomic import write_atomic
    from medassist.metrics import metrics_with_ci
    from medassist.models.fracture_external import REGION_BODY_PARTS, prepare_external, read_external, score_inputs
    from medassist.models.registry import body_part_miss, choose_device, load_named_or_file
    from medassist.models.train import ExternalInputs, external_report

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_named_or_file(args.model, choose_device("cpu"))
    spec = model.spec
    if not args.root.is_dir():
        print(f"error: {args.root} not found", file=sys.stderr)
        return 2
    import numpy as np

    records = read_external(args.root)
    external = ExternalInputs(prepare_external(records, spec.preprocess), np.array([r.fractured for r in records]),
                              np.array([r.region for r in records]))
    scores = np.asarray(score_inputs(model.network, external.inputs).of(spec.score_head), dtype=np.float64)
    report = {"model": spec.name, "version": spec.version, "threshold": spec.threshold,
              "sha256": spec.sha256, "score_head": spec.score_head, "set": "external_dev",
              "n_images": len(records), "n_fractured": int(external.labels.sum()),
              "measured": "after training, on the shipped weights (scripts/fracture_external_validation.py)",
              "regions": external_report(external, scores, spec.threshold)}
    # scope: regions the model answers "not applicable" for, and the figures on the rest (the
    # unannotated images, region unknown, stay in as negatives)
    out_of_scope = {region: why for region, part in REGION_BODY_PARTS.items()
                    if (why := body_part_miss(spec, part))}
    in_scope = [region for region in REGION_BODY_PARTS if region not in out_of_scope]
    keep = np.array([r.fractured == 0 or all(p in in_scope for p in r.region.split("+")) for r in records])
    if out_of_scope and keep.any():
        report["regions"][f"in scope ({', '.join(in_scope)})"] = metrics_with_ci(
            external.labels[keep], scores[keep], spec.threshold, n_resamples=300)
        report["out_of_scope"] = out_of_scope
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(report, indent=1) + "\n")
    for region, m in report["regions"].items():
        print(f"{region}: n={m['n']} positive={m['n_positive']} AUROC {m['auroc']:.3f} "
              f"[{m['ci']['auroc'][0]:.3f}, {m['ci']['auroc'][1]:.3f}] sensitivity {m['sensitivity']:.3f} "
              f"specificity {m['specificity']:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
