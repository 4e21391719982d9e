"""Helpers for the audit tests: a throwaway shipped model (spec + weights), synthetic scored sets,
and a review database built with plain sqlite3. (A uniquely named module, not conftest, so test
modules can import it without clashing with the other test folders' conftest modules.)"""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import torch

from medassist.keys import load_site_key
from medassist.models.integrity import sign_model
from medassist.models.networks import build_network
from medassist.models.spec import ModelSpec, PreprocessSpec

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"


def make_shipped_model(weights_dir: Path, *, name: str = "toy_fracture", version: str = "0.1.0",
                       training_data: str = "synthetic test data", threshold: float = 0.5,
                       input_size: int = 64) -> ModelSpec:
    """A random LocalisingResNet (widen 0.25) saved as NAME.pt + NAME.json, like training writes them."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = build_network("localising_resnet", {"widen_factor": 0.25})
    path = weights_dir / f"{name}.pt"
    torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    spec = ModelSpec(
        name=name, version=version, finding="fracture", labels=("no_fracture", "fracture"), threshold=threshold,
        weights=path.name, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), network="localising_resnet",
        network_args={"widen_factor": 0.25}, preprocess=PreprocessSpec(input_size=input_size),
        modalities=("DX", "CR"), excluded_body_parts=("CHEST",), training_data=training_data,
        licence="test only", training_command=f"medassist train configs/{name}.yaml",
        validation={
            "validation": {"n": 100, "n_positive": 20, "auroc": 0.8, "sensitivity": 0.75, "specificity": 0.7,
                           "ppv": 0.4, "npv": 0.9, "threshold": threshold},
            "training_subset": {"n": 50, "n_positive": 10, "auroc": 0.9, "sensitivity": 0.8, "specificity": 0.8,
                                "ppv": 0.5, "npv": 0.95, "threshold": threshold},
            "operating_points": {"sensitivity_90": 0.3, "sensitivity_95": 0.2, "sensitivity_99": 0.1},
            "history": [{"epoch": 0, "loss": 0.9}, {"epoch": 1, "loss": 0.7}],
        },
    )
    (weights_dir / f"{name}.json").write_text(spec.to_json())
    sign_model(weights_dir / f"{name}.json", load_site_key())  # a --models-dir folder must be signed
    return spec


def synthetic_scored_set(n: int = 400, seed: int = 0) -> dict[str, np.ndarray]:
    """Labels, scores and factors where region 'hip' is much worse (fractures scored low)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    region = rng.choice(["hand", "leg", "hip"], size=n)
    view = rng.choice(["frontal", "lateral"], size=n)
    scores = rng.normal(0.35 + 0.35 * labels, 0.15)
    scores[(region == "hip") & (labels == 1)] -= 0.3
    scores = np.round(np.clip(scores, 0.0, 1.0), 6)
    # a tiny subgroup: 3 oblique views, 2 of them positive
    view[:3] = "oblique"
    labels[:3] = [1, 1, 0]
    return {"labels": labels, "scores": scores, "region": region, "view": view}


def write_scores_csv(path: Path, data: dict[str, np.ndarray]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "score", "body_region", "view"])
        for i in range(len(data["labels"])):
            writer.writerow([f"case{i:04d}.png", int(data["labels"][i]), f"{data['scores'][i]:.6f}",
                             data["region"][i], data["view"][i]])
    return path


DECISIONS_SCHEMA = """
CREATE TABLE decisions(
    id INTEGER PRIMARY KEY AUTOINCREMENT, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
    model TEXT NOT NULL, model_version TEXT NOT NULL, finding TEXT NOT NULL, score REAL, threshold REAL,
    model_flagged INTEGER, decision TEXT NOT NULL CHECK(decision IN ('accept','reject','correct')),
    corrected_finding TEXT, location TEXT, comment TEXT, reviewer TEXT NOT NULL, decided_at TEXT NOT NULL,
    prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL)
"""
HASHED = ("study_uid", "series_uid", "model", "model_version", "finding", "score", "threshold", "model_flagged",
          "decision", "corrected_finding", "location", "comment", "reviewer", "decided_at")


def make_review_db(path: Path, rows: list[dict]) -> Path:
    """A keyed decision log written through the review store (site key: $MEDASSIST_KEY_FILE)."""
    from medassist.review.store import open_store

    store = open_store(path)
    for row in rows:
        fields = dict(row)
        fields.setdefault("finding", "fracture")
        location = fields.pop("location", None)
        store.record_decision(**fields, location=json.loads(location) if location else None)
    return path


def make_legacy_review_db(path: Path, rows: list[dict]) -> Path:
    """A format 1 decisions table (unkeyed sha256 chain, no anchor), as medassist wrote them before."""
    con = sqlite3.connect(path)
    con.execute(DECISIONS_SCHEMA)
    prev = "0" * 64
    for row in rows:
        fields = {k: row.get(k) for k in HASHED}
        fields.setdefault("finding", "fracture")
        payload = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        row_hash = hashlib.sha256((prev + payload).encode()).hexdigest()
        con.execute(f"INSERT INTO decisions ({', '.join(HASHED)}, prev_hash, row_hash) "
                    f"VALUES ({', '.join('?' * (len(HASHED) + 2))})", [fields[k] for k in HASHED] + [prev, row_hash])
        prev = row_hash
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    return path


def decision(series: str, flagged: int, decision: str, *, version: str = "0.1.0", model: str = "toy_fracture",
             corrected: str | None = None, location: str | None = None, day: str = "2024-05-01",
             reviewer: str = "dr_a", score: float | None = None) -> dict:
    return {"study_uid": f"st.{series}", "series_uid": series, "model": model, "model_version": version,
            "finding": "fracture", "score": score if score is not None else (0.8 if flagged else 0.2),
            "threshold": 0.5, "model_flagged": flagged, "decision": decision, "corrected_finding": corrected,
            "location": location, "comment": None, "reviewer": reviewer, "decided_at": f"{day}T09:00:00Z"}


# --- the tumour model: a throwaway volume model and a brain-tumour-shaped data folder ---------------

TUMOUR_SPLIT = {"block_size": 10, "n_folds": 2, "val_fold": 1}  # numbers 10-19, 30-39, ... are validation
TUMOUR_TYPES = ("glioma", "meningioma", "pituitary")


def make_tumour_model(weights_dir: Path, *, name: str = "toy_tumour", version: str = "0.1.0",
                      threshold: float = 0.5, input_size: int = 64, split: dict | None = None) -> ModelSpec:
    """A random 4-output LocalisingResNet as a volume model (presence + 3 types, cell_max head)."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    args = {"widen_factor": 0.25, "num_outputs": 4}
    net = build_network("localising_resnet", args)
    path = weights_dir / f"{name}.pt"
    torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    spec = ModelSpec(
        name=name, version=version, finding="brain_tumor", labels=("no_tumor", "tumor"), threshold=threshold,
        weights=path.name, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), network="localising_resnet",
        network_args=args, preprocess=PreprocessSpec(input_size=input_size), modalities=("MR",),
        body_parts=("BRAIN", "HEAD", ""), score_head="cell_max", input_kind="volume",
        training_data="synthetic brain slices", licence="test only",
        training_command=f"medassist train configs/{name}.yaml",
        validation={
            "validation": {"n": 30, "n_positive": 12, "auroc": 0.9, "sensitivity": 0.8, "specificity": 0.7,
                           "ppv": 0.6, "npv": 0.9, "threshold": threshold},
            "split": dict(split or TUMOUR_SPLIT, root="synthetic"),
            "inference": {"type_labels": list(TUMOUR_TYPES),
                          "aggregation": {"rule": "max_window_mean_sidak", "extent_mm": 10.0},
                          "null_logit": {"mean": -1.0, "std": 1.5}},
            "study_rule_calibration": {"threshold": threshold, "extent_mm": 10.0,
                                       "negatives": {"n5_1mm": {"shipped_rule": 0.01, "window_only": 0.05,
                                                                "max_rule": 0.2}},
                                       "positives": {"run_plus_0_normal_slices": {"n_runs": 3, "flagged": 0.9}}},
        },
    )
    (weights_dir / f"{name}.json").write_text(spec.to_json())
    sign_model(weights_dir / f"{name}.json", load_site_key())  # a --models-dir folder must be signed
    return spec


def synthetic_head(shape: tuple[int, int], blob: tuple[int, int] | None, seed: int, *,
                   blob_radius: int = 7) -> np.ndarray:
    """A symmetric grey 'head' (ellipse with a darker midline 'ventricle') on a noisy background, with
    an optional bright round 'tumour' centred at ``blob`` (row, col); uint8."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    img = rng.normal(6, 2, shape)
    head = ((yy - rows / 2) / (rows * 0.42)) ** 2 + ((xx - cols / 2) / (cols * 0.36)) ** 2 <= 1
    img[head] = 110 + 10 * np.cos(yy[head] / 6.0)  # left-right symmetric texture
    img[head & (np.abs(xx - cols / 2) < cols * 0.05) & (np.abs(yy - rows / 2) < rows * 0.15)] = 60
    if blob is not None:
        img[np.hypot(yy - blob[0], xx - blob[1]) <= blob_radius] = 240
    return np.clip(img, 0, 255).astype(np.uint8)


def fake_brain_tumor(root: Path) -> dict[str, list[int]]:
    """A brain-tumour-shaped folder (glioma/ meningioma/ pituitary/ no_tumor/, <number>.jpg, a YOLO box
    .txt beside each tumour slice). Validation (TUMOUR_SPLIT): 4 glioma, 3 meningioma, 3 pituitary
    (numbers 10-19, 96 x 96 grey) and 4 no_tumor (30-33, 80 x 100 RGB, like Br35H); numbers 0-7 and
    20-21 are training slices. Tumours sit off the midline so mirror negatives can be made.
    Returns the validation numbers per class."""
    from PIL import Image as PILImage

    layout = {"glioma": [0, 1, 10, 11, 12, 13], "meningioma": [2, 3, 14, 15, 16], "pituitary": [4, 5, 17, 18, 19],
              "no_tumor": [6, 7, 20, 21, 30, 31, 32, 33]}
    val: dict[str, list[int]] = {}
    for folder, numbers in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for number in numbers:
            if folder == "no_tumor":
                gray = synthetic_head((80, 100), None, number)
                PILImage.fromarray(np.stack([gray] * 3, axis=-1)).save(root / folder / f"{number}.jpg", quality=90)
            else:
                side = 1 if number % 2 else -1
                centre = (40 + 2 * (number % 5), int(48 + side * 20))
                PILImage.fromarray(synthetic_head((96, 96), centre, number)).save(root / folder / f"{number}.jpg",
                                                                                  quality=95)
                cls = TUMOUR_TYPES.index(folder)
                (root / folder / f"{number}.txt").write_text(
                    f"{cls} {centre[1] / 96:.4f} {centre[0] / 96:.4f} {16 / 96:.4f} {16 / 96:.4f}\n")
            if (number // TUMOUR_SPLIT["block_size"]) % TUMOUR_SPLIT["n_folds"] == TUMOUR_SPLIT["val_fold"]:
                val.setdefault(folder, []).append(number)
    return val
