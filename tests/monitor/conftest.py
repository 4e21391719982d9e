"""Synthetic triage runs for the monitor tests: worklists written with the triage worklist writer,
decision logs written with the review store (the tests' own site key, tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from medassist.datamodel import WorklistRow
from medassist.review.store import open_store
from medassist.triage.worklist import write_worklist

THRESHOLD = 0.5
MODEL, VERSION = "fracture_xray", "1.1.0"
MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)  # ISO week 2026-W49


def finding_records(scores: Sequence[float], *, prefix: str, body_parts: Sequence[str] = ("HAND", "LEG"),
                    model: str = MODEL, version: str = VERSION, threshold: float = THRESHOLD,
                    sexes: Sequence[str] = ("",), age_bands: Sequence[str] = ("",),
                    manufacturers: Sequence[str] = ("",), study_dates: Sequence[str] = ("",)) -> list[dict]:
    """One scored worklist row per score (one study and series each), with a patient ID the
    report must never show (``PAT-<prefix>-<i>``); subgroup values and study dates cycle through
    the sequences given (empty by default, as for NIfTI input)."""
    records = []
    for i, score in enumerate(scores):
        score = round(float(score), 6)
        records.append(WorklistRow(
            study_uid=f"2.25.{prefix}.1.{i}", series_uid=f"2.25.{prefix}.2.{i}", patient_id=f"PAT-{prefix}-{i}",
            accession=f"ACC-{prefix}-{i}", modality="DX", body_part=body_parts[i % len(body_parts)],
            sex=sexes[i % len(sexes)], age_band=age_bands[i % len(age_bands)],
            manufacturer=manufacturers[i % len(manufacturers)], study_date=study_dates[i % len(study_dates)],
            source_path=f"/data/{prefix}/{i}.dcm", model=model, model_version=version, finding="fracture",
            score=score, threshold=threshold, flagged=score >= threshold,
        ).as_record())
    return records


def write_run(folder: Path, records: list[dict], when: datetime = MONDAY) -> Path:
    """A triage output folder holding these rows, its worklist dated ``when`` (the run time)."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, _ = write_worklist(folder, [WorklistRow.from_record(r) for r in records])
    stamp = when.timestamp()
    os.utime(csv_path, (stamp, stamp))
    return folder


def review(folder: Path, records: list[dict], decide: Callable[[int, dict], str | None],
           when: datetime = MONDAY) -> Path:
    """Record ``decide(i, record)`` (accept / reject, or None: not reviewed) for each row in the
    run's decision log."""
    store = open_store(folder)
    for i, record in enumerate(records):
        decision = decide(i, record)
        if decision is None:
            continue
        store.record_decision(
            study_uid=record["study_uid"], series_uid=record["series_uid"], model=record["model"],
            model_version=record["model_version"], finding=record["finding"], score=record["score"],
            threshold=record["threshold"], model_flagged=record["flagged"], decision=decision,
            reviewer="reader.one", decided_at=when.isoformat(),
        )
    return store.path


def beta_scores(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Scores like a triage model's: Beta(2, 5), optionally shifted up (clipped to 0..1)."""
    return np.clip(np.random.default_rng(seed).beta(2, 5, n) + shift, 0.0, 1.0)


@pytest.fixture
def limits_file(tmp_path):
    """Write a limits YAML with the given overrides; returns its path."""
    def write(**values) -> Path:
        import yaml

        path = tmp_path / f"limits-{len(list(tmp_path.glob('limits-*')))}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path
    return write


@pytest.fixture
def mon():
    """The helpers above, for the test modules (a conftest cannot be imported by name here)."""
    import types

    return types.SimpleNamespace(
        MODEL=MODEL, VERSION=VERSION, THRESHOLD=THRESHOLD, MONDAY=MONDAY, finding_records=finding_records,
        write_run=write_run, review=review, beta_scores=beta_scores,
    )
