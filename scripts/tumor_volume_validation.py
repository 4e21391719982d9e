"""Volume-level validation of a tumour model (issue 16): BraTS examples, LGG validation stacks, IXI
validation subjects as given and skull-stripped, each scored as triage scores a volume
(``medassist.models.tumor_volumes``). Writes one JSON report and prints a line per source.

    .venv/bin/python scripts/tumor_volume_validation.py --model tumor_mri --out model_cards/tumor_mri_volumes.json

``--model``: a shipped model's name or a spec JSON path (its weights beside it). ``--config``: the
training config whose data section holds the source roots and split settings. ``--limit N``: at
most N volumes per source (smoke runs). ``--n4``: N4 bias-field correction
(``medassist.preprocess.bias_field.n4_image``) applied to every volume just before it is scored, to
measure it (issue 16/19; not the shipped preprocessing): the report then gives each volume's
``transform_s`` and names the transform in its assumptions. Exit status 0 when every target is
met, 1 when not.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tumor_mri", help="shipped model name or spec JSON path")
    parser.add_argument("--out", required=True, type=Path, help="JSON report to write")
    parser.add_argument("--config", default=str(REPO / "configs" / "tumor_mri.yaml"),
                        help="training config (its data section: source roots and splits)")
    parser.add_argument("--sources", default="brats,lgg,ixi", help="comma-separated: brats, lgg, ixi")
    parser.add_argument("--limit", type=int, default=None, help="at most N volumes per source")
    parser.add_argument("--lgg-spacing-mm", type=float, default=None,
                        help="LGG slice spacing (default: estimated from the slice count, see tumor_data)")
    parser.add_argument("--n4", action="store_true",
                        help="N4 bias-field correction of every volume before scoring (a measurement, not shipped)")
    parser.add_argument("--n4-shrink", type=int, default=4, help="N4 fit on the volume shrunk by up to this factor")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    return parser.parse_args(argv)


def load(model: str, device: str):
    """A LoadedModel from a shipped name or a spec JSON path."""
    from medassist.models.registry import choose_device, load_named_or_file

    return load_named_or_file(model, choose_device(device))


def main(argv: list[str] | None = None) -> int:
    import torch

    from medassist.errors import MedassistError
    from medassist.models.train import load_config
    from medassist.models.tumor_volumes import validate_volumes

    args = parse_args(argv)
    transform, described = None, None
    if args.n4:
        from medassist.preprocess.bias_field import n4_image

        iterations = (50, 50, 30)
        transform = functools.partial(n4_image, shrink=args.n4_shrink, iterations=iterations)
        described = (f"N4 bias-field correction (SimpleITK; shrink {args.n4_shrink}, iterations {list(iterations)}, "
                     "Otsu head mask) of every volume's pixels before scoring; display rescaled by percentiles")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    try:
        model = load(args.model, args.device)
        data_cfg = (load_config(args.config) or {}).get("data", {})
        report = validate_volumes(model, data_cfg, sources=[s.strip() for s in args.sources.split(",") if s.strip()],
                                  limit=args.limit, lgg_spacing_mm=args.lgg_spacing_mm, transform=transform)
    except MedassistError as exc:
        print(f"medassist: error: {exc}", file=sys.stderr)
        return 2
    result = report.to_dict()
    if described:
        result["assumptions"]["transform"] = described
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    for key, source in result["sources"].items():
        print(f"{key}: {source['n_flagged']}/{source['n_volumes']} flagged, {source['n_errors']} errors, "
              f"localised {source['n_localised']}, target {'met' if source['target_met'] else 'NOT met'}: "
              f"{source['target']}")
        seconds = [v["transform_s"] for v in source["volumes"] if v.get("transform_s") is not None]
        if seconds:
            print(f"  transform: {sum(seconds) / len(seconds):.1f} s per volume (max {max(seconds):.1f})")
    print(f"wrote {args.out}")
    return 0 if result["all_targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
