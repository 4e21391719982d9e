"""The reviewed cases an adaptation learns from: the reviewer's final call and the worklist's score.

Each ``--review-db`` is a triage run's ``RUN/decisions.sqlite``; the run is read with the monitor's
reader (``medassist.monitor.run.read_run``: the worklist beside the log, the log read-only with the
audit's current decisions and final calls, ``medassist.audit.agreement.decided_findings``, and its
keyed chain verified). Ground truth is the reviewer's final call per finding; the score is the
worklist's. Only findings of the model's released (base) version are used; everything else is
counted by reason in ``dropped``.

The locked set is chosen by a hash of the finding's series UID and model (:func:`is_locked`): the
same finding is always on the same side, whatever run or log it comes from, and no seed exists to
re-roll the split until it passes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medassist.datamodel import WorklistRow
from medassist.errors import MedassistError
from medassist.monitor.run import read_run
from medassist.review.store import DEFAULT_DB_NAME, default_db_path

LOCK_DOMAIN = b"medassist-adapt-locked-set-v1\x00"
SCORE_TOLERANCE = 1e-6  # the worklist rounds scores to 6 decimals


@dataclass(frozen=True)
class Case:
    """One reviewed finding: its key, the worklist's score, the reviewer's final call, its side."""

    series_uid: str
    model: str
    model_version: str
    finding: str
    score: float
    positive: bool
    locked: bool
    decided_at: str
    log: str


@dataclass(frozen=True)
class ReviewedCases:
    """The usable cases of every log, and how many decisions were left out, by reason."""

    model: str
    version: str
    logs: tuple[str, ...]
    cases: tuple[Case, ...]
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def fit(self) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if not c.locked)

    @property
    def locked(self) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if c.locked)

    def counts(self) -> dict:
        def of(cases: tuple[Case, ...]) -> dict:
            positives = sum(c.positive for c in cases)
            return {"n": len(cases), "n_positive": positives, "n_negative": len(cases) - positives}
        return {"logs": len(self.logs), "all": of(self.cases), "fit": of(self.fit), "locked": of(self.locked),
                "dropped": dict(sorted(self.dropped.items())), "n_dropped": sum(self.dropped.values())}


def locked_fraction(series_uid: str, model: str) -> float:
    """A number in [0, 1) fixed by the finding's series UID and model (sha256)."""
    digest = hashlib.sha256(LOCK_DOMAIN + series_uid.encode() + b"\x00" + model.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_locked(series_uid: str, model: str, share: float) -> bool:
    """Whether the finding belongs to the locked set (about ``share`` of all findings)."""
    return locked_fraction(series_uid, model) < share


def log_path(db: str | Path) -> Path:
    """The decision log named by ``--review-db``: a file, or a run folder meaning its decisions.sqlite.
    Missing, or not named decisions.sqlite beside its run's worklist: MedassistError naming it."""
    path = Path(db)
    if path.is_dir():
        path = default_db_path(path)
    if not path.is_file():
        raise MedassistError(f"{path}: review database not found")
    if path.name != DEFAULT_DB_NAME:
        raise MedassistError(f"{path}: a review database is read beside its triage worklist, as "
                             f"RUN/{DEFAULT_DB_NAME}; this one is named {path.name!r}")
    return path


def read_reviewed_cases(review_dbs: list[str | Path], model: str, version: str, *, locked_share: float,
                        key_file: str | Path | None = None) -> ReviewedCases:
    """Every usable reviewed finding of ``model`` ``version`` in these logs (see the module doc).

    A log that is missing, unreadable, fails verification or cannot be verified, or a run without a
    readable worklist, raises MedassistError naming the file (unusable input)."""
    dropped: Counter = Counter()
    chosen: dict[tuple[str, str, str], Case] = {}
    logs: list[str] = []
    for db in review_dbs:
        path = log_path(db)
        if str(path.resolve()) in logs:
            continue
        logs.append(str(path.resolve()))
        run = read_run(path.parent, key_file=key_file)
        log = run.decisions
        if log is None or log.integrity != "verified":
            note = log.note if log is not None else "not read"
            problems = f" ({'; '.join(log.problems[:3])})" if log is not None and log.problems else ""
            raise MedassistError(f"{path}: the decision log is not verified, so its calls are not used as ground "
                                 f"truth: {note}{problems}")
        if log.unknown_decisions:
            dropped["unknown decision"] += log.unknown_decisions
        worklist: dict[tuple, WorklistRow] = {row.key: row for row in run.findings}
        for row in log.decided:
            reason = _drop_reason(row, worklist, model, version)
            if reason:
                dropped[reason] += 1
                continue
            case = Case(
                series_uid=str(row["series_uid"]), model=model, model_version=version, finding=str(row["finding"]),
                score=float(worklist[_key(row)].score), positive=bool(row["final_positive"]),
                locked=is_locked(str(row["series_uid"]), model, locked_share),
                decided_at=str(row["decided_at"] or ""), log=str(path),
            )
            ident = (case.series_uid, case.model, case.finding)
            earlier = chosen.get(ident)
            if earlier is not None:
                dropped["the same finding in another log (the later decision is used)"] += 1
                if earlier.decided_at >= case.decided_at:
                    continue
            chosen[ident] = case
    cases = tuple(sorted(chosen.values(), key=lambda c: (c.series_uid, c.finding)))
    return ReviewedCases(model=model, version=version, logs=tuple(logs), cases=cases, dropped=dict(dropped))


def _key(row: dict) -> tuple[str, str, str, str]:
    return (str(row["series_uid"]), str(row["model"]), str(row["model_version"]), str(row["finding"]))


def _drop_reason(row: dict, worklist: dict[tuple, WorklistRow], model: str, version: str) -> str:
    """Why a decided finding is not used ("" when it is)."""
    if row["model"] != model:
        return "another model"
    if str(row["model_version"]) != version:
        return f"another version of {model} ({row['model_version']}), not the one adapted"
    found = worklist.get(_key(row))
    if found is None:
        return "not in the worklist beside its log"
    logged = row.get("score")
    if logged is not None and abs(float(logged) - float(found.score)) > SCORE_TOLERANCE:
        return "the log's score differs from the worklist's (the run was re-triaged after review)"
    return ""
