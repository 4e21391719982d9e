"""Reviewer agreement of one triage run's decision log, for the monitor.

The log (``RUN/decisions.sqlite``) is only ever read: its rows through
``medassist.audit.agreement.read_decisions`` (an SQLite ``mode=ro`` connection), its integrity
through ``medassist.review.store.verify_chain`` (read-only as well). The figures are the audit's
(``decided_findings``, ``summarise_agreement``: accept / reject / correct rates, Cohen's kappa
between the model's flag and the reviewer's final call, overrides); this module only groups them
by model version, subgroup and ISO week.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from medassist.audit.agreement import current_decisions, decided_findings, read_decisions, summarise_agreement
from medassist.errors import MedassistError
from medassist.review import mac
from medassist.review.store import default_db_path, verify_chain

ModelKey = tuple[str, str]  # (model, model_version)


@dataclass(frozen=True)
class Agreement:
    """Agreement between a model's flags and the reviewers' current decisions on a set of findings."""

    n_decided: int
    n_accept: int
    n_reject: int
    n_correct: int
    accept_rate: float | None
    reject_rate: float | None
    correct_rate: float | None
    agreement: float | None
    cohen_kappa: float | None
    n_overrides: int
    override_rate: float | None
    n_reviewers: int


@dataclass(frozen=True)
class DecisionLog:
    """What one run's decision log holds (``decided``: current decisions with the final call and
    the worklist row's subgroup values attached; not written to the report row by row)."""

    path: str
    present: bool
    integrity: str  # "verified", "failed", "not checked" or "absent"
    problems: tuple[str, ...] = ()
    note: str = ""
    rows_in_log: int = 0
    current_decisions: int = 0
    unknown_decisions: int = 0
    not_in_worklist: int = 0
    decided: tuple[dict, ...] = field(default=(), repr=False)


def agreement_of(rows: Iterable[Mapping]) -> Agreement | None:
    """The audit's agreement summary of decided findings, plus the override rate; None when empty."""
    rows = list(rows)
    if not rows:
        return None
    s = summarise_agreement(rows)
    n = s["n_decided"]
    return Agreement(
        n_decided=n, n_accept=s["n_accept"], n_reject=s["n_reject"], n_correct=s["n_correct"],
        accept_rate=s["accept_rate"], reject_rate=s["reject_rate"], correct_rate=s["correct_rate"],
        agreement=s["agreement"], cohen_kappa=s["cohen_kappa"], n_overrides=s["n_overrides"],
        override_rate=s["n_overrides"] / n, n_reviewers=s["n_reviewers"],
    )


def by_subgroup(rows: Iterable[Mapping], factors: Iterable[str]) -> dict[str, dict[str, Agreement]]:
    """Agreement per level of each factor (a row's value, "unknown" when empty)."""
    rows = list(rows)
    out: dict[str, dict[str, Agreement]] = {}
    for factor in factors:
        groups: dict[str, list[Mapping]] = defaultdict(list)
        for row in rows:
            groups[str(row.get(factor) or "") or "unknown"].append(row)
        out[factor] = {level: agreement_of(group) for level, group in sorted(groups.items())}
    return out


def iso_week_of(timestamp: str | None) -> str:
    """``YYYY-Www`` of an ISO-8601 time (``decided_at``), "unknown" when there is none."""
    if not timestamp:
        return "unknown"
    try:
        moment = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return "unknown"
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def read_decision_log(
    run_dir: Path, subgroups: Mapping[tuple, Mapping[str, str]], *, key_file: str | Path | None = None,
) -> DecisionLog:
    """The current decisions of ``run_dir/decisions.sqlite`` with the final call, each with the
    worklist's subgroup values (``subgroups``: finding key -> {factor: value}), and whether the log
    verifies. No log: an absent DecisionLog. A log that cannot be read raises MedassistError."""
    db = default_db_path(run_dir)
    if not db.is_file():
        return DecisionLog(path=str(db), present=False, integrity="absent", note="no decision log (not reviewed)")
    rows = read_decisions(db)  # read-only; MedassistError naming the file when unreadable
    current = current_decisions(rows)
    decided, unknown = decided_findings(current)
    attached, missing = [], 0
    for row in decided:
        key = (row["series_uid"], row["model"], str(row["model_version"]), row["finding"])
        values = subgroups.get(key)
        missing += values is None
        attached.append({**row, **(values or {}), "decision_week": iso_week_of(row.get("decided_at"))})
    integrity, problems, note = _integrity(db, key_file)
    return DecisionLog(
        path=str(db), present=True, integrity=integrity, problems=problems, note=note, rows_in_log=len(rows),
        current_decisions=len(current), unknown_decisions=unknown, not_in_worklist=missing, decided=tuple(attached),
    )


def _integrity(db: Path, key_file: str | Path | None) -> tuple[str, tuple[str, ...], str]:
    """("verified" | "failed" | "not checked", problems, note) of the log's keyed chain and anchor."""
    key = mac.key_file_path(key_file)
    if not key.is_file():
        return "not checked", (), f"no site key at {key} on this machine, so the log's chain cannot be verified"
    try:
        problems = tuple(verify_chain(db, key_file=key_file))
    except MedassistError as exc:
        return "not checked", (), str(exc)
    if problems:
        return "failed", problems, "the decision log fails verification: its figures may not be what reviewers decided"
    return "verified", (), "keyed chain and anchor verified"


def decisions_of(log: DecisionLog, model: str, version: str) -> list[dict]:
    """The log's decided findings of one model version."""
    return [row for row in log.decided if row["model"] == model and str(row["model_version"]) == version]
