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
    """A decisions table in the review stage's layout, hash-chained like the review store does it."""
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
