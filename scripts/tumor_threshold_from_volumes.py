"""Set a volume model's decision threshold from its volume-level validation (issue 16).

    .venv/bin/python scripts/tumor_threshold_from_volumes.py --spec SPEC.json --volumes REPORT.json \
        [--positive lgg/stack --sensitivity 0.9 --negative ixi/as_given --negative ixi/skull_stripped --max-flagged 0.1]

The study score is what a reader's worklist acts on, so the threshold is chosen on validation
*volumes*: the highest threshold at which at least ``--sensitivity`` of the ``--positive`` source's
volumes are flagged, refused (exit 1) when any ``--negative`` source then flags more than
``--max-flagged`` of its volumes. The training run's slice-level threshold is kept in the spec as
``validation.threshold_choice.slice_threshold``. Tuned on validation data: the figures at the new
threshold flatter; independent hold-outs check it. Re-run the volume validation afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--volumes", type=Path, required=True)
    parser.add_argument("--positive", default="lgg/stack")
    parser.add_argument("--sensitivity", type=float, default=0.9)
    parser.add_argument("--negative", action="append", default=None)
    parser.add_argument("--max-flagged", type=float, default=0.1)
    args = parser.parse_args(argv)
    negatives = args.negative or ["ixi/as_given", "ixi/skull_stripped"]
    from medassist.atomic import write_atomic

    spec = json.loads(args.spec.read_text())
    report = json.loads(args.volumes.read_text())
    if report.get("version") != spec["version"]:
        print(f"error: {args.volumes} is for version {report.get('version')}, not {spec['version']}", file=sys.stderr)
        return 2
    import numpy as np

    from medassist.metrics import threshold_for_sensitivity

    def scores_of(name: str) -> list[float]:
        return [v["score"] for v in report["sources"][name]["volumes"] if not v.get("error")]

    positive = scores_of(args.positive)
    negative = {name: scores_of(name) for name in negatives}
    pooled = [s for scores in negative.values() for s in scores]
    exact = threshold_for_sensitivity(np.array([1] * len(positive) + [0] * len(pooled)),
                                      np.array(positive + pooled), args.sensitivity)
    threshold = math.floor(exact * 1e4) / 1e4  # 4 decimals, rounded down: no positive lost
    flagged = {name: sum(s >= threshold for s in scores) / max(1, len(scores)) for name, scores in negative.items()}
    print(f"threshold {threshold} flags {sum(s >= threshold for s in positive)}/{len(positive)} of {args.positive}; "
          f"negatives flagged {flagged}")
    if any(rate > args.max_flagged for rate in flagged.values()):
        print("refused: a negative source is flagged too often at that threshold", file=sys.stderr)
        return 1
    spec.setdefault("validation", {})["threshold_choice"] = {
        "rule": f"highest threshold flagging >= {args.sensitivity:g} of {args.positive} validation volumes, "
                f"at most {args.max_flagged:g} of each of {', '.join(negatives)}",
        "slice_threshold": spec["threshold"], "study_threshold": threshold,
        "negatives_flagged": flagged, "report": str(args.volumes.name)}
    spec["threshold"] = threshold
    write_atomic(args.spec, json.dumps(spec, indent=2) + "\n")
    print(f"wrote threshold {threshold} into {args.spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
