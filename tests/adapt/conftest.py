"""Synthetic review histories for the adaptation tests: worklists written with the triage worklist
writer, decisions recorded through the review store (the tests' own site key, tests/conftest.py).

A site is a list of (score, truly positive) pairs; the reviewer accepts the model's call when it is
right and rejects it when it is wrong, so the final call is the truth (``calls`` can override it:
that is how disagreement is injected)."""

from __future__ import annotations

import types
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from medassist.datamodel import WorklistRow
from medassist.models.registry import spec_by_name
from medassist.review.store import open_store
from medassist.triage.worklist import write_worklist

MODEL = "fracture_xray"
RELEASED = spec_by_name(MODEL)
MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)


def site_cases(n: int, seed: int, *, positive_share: float = 0.4, positives: tuple[float, float] = (0.22, 0.95),
               negatives: tuple[float, float] = (0.0, 0.33)) -> list[tuple[float, bool]]:
    """A site where the released threshold (0.47) is too high: by default positives score uniformly
    in 0.22..0.95 (about a third of them below 0.47), negatives in 0.0..0.33."""
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < positive_share
    scores = np.where(truth, rng.uniform(*positives, n), rng.uniform(*negatives, n))
    return [(round(float(s), 6), bool(t)) for s, t in zip(scores, truth)]


def write_history(folder: Path, cases: Sequence[tuple[float, bool]], *, prefix: str = "s",
                  version: str | None = None, model: str = MODEL, calls: Sequence[bool] | None = None,
                  threshold: float | None = None) -> Path:
    """A triage run folder (worklist.csv/.json) of these findings and its decision log; returns the
    log's path. ``calls``: the reviewer's final call per case (default: the truth)."""
    version = version or RELEASED.version
    threshold = RELEASED.threshold if threshold is None else threshold
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (score, _) in enumerate(cases):
        rows.append(WorklistRow(
            study_uid=f"2.25.{prefix}.1.{i}", series_uid=f"2.25.{prefix}.2.{i}", patient_id=f"PAT-{prefix}-{i}",
            modality="DX", body_part="HAND", source_path=f"/data/{prefix}/{i}.dcm", model=model,
            model_version=version, finding="fracture", score=score, threshold=threshold, flagged=score >= threshold,
        ))
    write_worklist(folder, rows)
    records = [row.as_record() for row in rows]
    store = open_store(folder)
    for i, (record, (score, truth)) in enumerate(zip(records, cases)):
        call = truth if calls is None else calls[i]
        store.record_decision(
            study_uid=record["study_uid"], series_uid=record["series_uid"], model=record["model"],
            model_version=record["model_version"], finding=record["finding"], score=record["score"],
            threshold=record["threshold"], model_flagged=record["flagged"],
            decision="accept" if call == record["flagged"] else "reject", reviewer="reader.one",
            decided_at=(MONDAY + timedelta(minutes=i)).isoformat(),
        )
    return store.path


@pytest.fixture
def site():
    """The helpers above, for the test modules."""
    return types.SimpleNamespace(MODEL=MODEL, RELEASED=RELEASED, MONDAY=MONDAY, site_cases=site_cases,
                                 write_history=write_history)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory) -> Path:
    """One accepted adaptation (the default site, 300 reviewed findings), shared by a test module."""
    from medassist.adapt import run_adapt

    root = tmp_path_factory.mktemp("adapted")
    db = write_history(root / "run1", site_cases(300, seed=1))
    run_adapt(MODEL, [db], root / "site-models")
    return root / "site-models"
