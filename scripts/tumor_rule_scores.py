"""One scoring pass for choosing the tumour model's study rule: cached slice scores and cell maps.

Scores, once, with the shipped tumor_mri weights (nothing is trained):
- the brain-tumour validation split exactly as ``medassist audit`` scores it
  (``audit.evaluation.eval_from_brain_tumor``: JPEG -> ``tumor.prepare_slice``, plus the mirror
  negatives of the validation tumour slices), keeping the cell logits (8 x 8 per slice);
- the normal volumes of the model card (Colin27 ch2 / ch2bet / ch2better from mricron's templates,
  nilearn's MNI152; as given, 5 mm thick and skull-stripped, as ``tumor.evaluate_normal_volumes``)
  and the two sample MR series (PAT13 tumour, PAT14 normal), slice by slice as ``tumor.score_volume``
  scores them, keeping the in-brain mask, spacing and cell logits.

Writes ``cache/tumor_rule_scores.pkl`` (git-ignored); ``scripts/tumor_study_rule.py`` reads it.
Run under ``nice``: about 2.5 minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "cache" / "tumor_rule_scores.pkl"
MRICRON = Path("/usr/share/mricron/templates")

log = logging.getLogger("tumor_rule_scores")


def normal_volume_paths() -> dict[str, Path]:
    import nilearn

    mni = Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    paths = {name: MRICRON / f"{name}.nii.gz" for name in ("ch2", "ch2bet", "ch2better")}
    paths["mni152"] = mni
    return paths


@torch.no_grad()
def forward(network, inputs: torch.Tensor, score_head: str) -> tuple[np.ndarray, np.ndarray]:
    """Presence probabilities (the spec's head) and cell logits (n, h, w) for (n, 1, S, S) inputs."""
    from medassist.models.heads import score_probability

    logits, cells = network.forward_all(inputs.float())
    presence = score_probability(logits, cells, score_head)
    return presence.numpy().astype(float), cells[:, 0].float().numpy()


def score_validation(model, root: Path, batch: int = 16) -> dict:
    """The validation split as the audit scores it, with cell logits."""
    from medassist.audit.evaluation import _as_u8, brain_tumor_split
    from medassist.ingest.images import load_jpeg_grayscale
    from medassist.models import tumor, tumor_train

    spec = model.spec
    split = brain_tumor_split(spec)
    records = [r for r in tumor.read_records(root) if tumor.split_of(r.number, **split) == "val"]
    out: dict[str, list] = {k: [] for k in ("number", "folder", "label", "kind", "score", "cells")}
    mirrors = []
    for start in range(0, len(records), batch):
        tensors, kept = [], []
        for rec in records[start : start + batch]:
            gray = load_jpeg_grayscale(rec.path).astype(np.float32) / 255.0
            tensor, frame = tumor.prepare_slice(gray, spec.preprocess)
            tensors.append(tensor)
            kept.append(rec)
            if rec.box is not None:
                neg = tumor_train.mirror_negative(_as_u8(tensor), tumor.box_mask(rec.box, gray.shape, frame))
                if neg is not None:
                    mirrors.append((rec, neg))
        p, cells = forward(model.network, torch.stack(tensors), spec.score_head)
        for k, rec in enumerate(kept):
            for key, v in (("number", rec.number), ("folder", rec.folder), ("label", rec.tumour), ("kind", 0),
                           ("score", p[k]), ("cells", cells[k])):
                out[key].append(v)
        log.info("validation slices %d/%d", start + len(kept), len(records))
    for start in range(0, len(mirrors), batch):
        chunk = mirrors[start : start + batch]
        x = torch.from_numpy(np.stack([m for _, m in chunk])).float().div_(255.0)[:, None]
        p, cells = forward(model.network, x, spec.score_head)
        for k, (rec, _) in enumerate(chunk):
            for key, v in (("number", rec.number), ("folder", rec.folder), ("label", 0), ("kind", 1),
                           ("score", p[k]), ("cells", cells[k])):
                out[key].append(v)
    return {k: np.array(v) for k, v in out.items()}


def score_volume_detail(model, image, batch: int = 16) -> dict:
    """``tumor.score_volume``'s slice scores and in-brain mask, plus cell logits and spacing."""
    from medassist.models import tumor
    from medassist.preprocess import volume as vol

    spec = model.spec
    settings = tumor.inference_settings(spec)
    volume, axes = vol.reorient_canonical(image, spec.preprocess.source)
    axis = vol.acquisition_plane(axes)
    n = volume.shape[axis]
    ref = vol.intensity_reference(volume)
    fractions, scores = np.zeros(n), np.zeros(n)
    cells = np.zeros((n, 8, 8), np.float32)
    for idx, chunk in vol.iter_slices(volume, axis, batch):
        fractions[idx] = [vol.brain_fraction(s, ref) for s in chunk]
        ok = fractions[idx] >= settings["min_brain_fraction"]
        if ok.any():
            x = torch.stack([tumor.prepare_slice(s, spec.preprocess)[0] for s in chunk[ok]])
            p, c = forward(model.network, x, spec.score_head)
            scores[idx[ok]] = p
            cells[idx[ok]] = c
    inside = vol.in_brain(fractions, min_fraction=settings["min_brain_fraction"],
                          min_relative=settings["min_relative_brain_fraction"] if n > 1 else 0.0)
    return {"scores": np.where(inside, scores, 0.0), "in_brain": inside, "cells": cells,
            "spacing_mm": float(axes.spacing[axis]), "plane": vol.PLANES[axis]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/work/shared/data/brain_tumor")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(CACHE))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    from medassist.ingest.nifti import read_nifti_series
    from medassist.models import tumor
    from medassist.models.registry import load_model, spec_by_name
    from medassist.triage.run import discover

    model = load_model(spec_by_name("tumor_mri"), torch.device("cpu"))
    model.network.eval()
    t0 = time.time()
    result: dict = {"validation": score_validation(model, Path(args.data)), "volumes": {}, "samples": {}}
    log.info("validation done (%.0f s)", time.time() - t0)
    for name, path in normal_volume_paths().items():
        image = read_nifti_series(str(path)).load()
        for variant, make in (("original", lambda: image), ("thick", lambda: tumor.thick_slices(image, 5.0)),
                              ("skull_stripped", lambda: tumor.skull_strip(image))):
            result["volumes"][(name, variant)] = score_volume_detail(model, make())
            log.info("%s %s done (%.0f s)", name, variant, time.time() - t0)
    export = REPO / "samples" / "export"
    for name, path in (("PAT13", export / "PAT13"), ("PAT14", export / "PAT14")):
        series, _ = discover([path])
        (one,) = series
        result["samples"][name] = score_volume_detail(model, one.load())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as fh:
        pickle.dump(result, fh)
    log.info("wrote %s (%.0f s)", args.out, time.time() - t0)


if __name__ == "__main__":
    main()
