"""Human-AI agreement from the review decisions log (``OUT/decisions.sqlite``).

The log is append-only; the current decision for a finding is the latest row (highest id) per
(series_uid, model, model_version, finding). The radiologist's final call on a finding is:

- ``accept``: the model's call stands (positive if the model flagged it, else negative);
- ``reject``: the opposite of the model's call;
- ``correct``: positive (the finding is there, with a corrected label or location), unless
  ``corrected_finding`` names a negative ("none", "normal", "negative", "no_<finding>", the
  model's negative label...).

An override is a current decision whose final call differs from the model's: flagged and rejected,
not flagged and rejected or corrected to positive, flagged and corrected to a negative.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score

from medassist.errors import MedassistError

NEGATIVE_FINDINGS = frozenset({"", "none", "normal", "negative", "no finding", "no_finding", "nofinding", "absent"})
COLUMNS = ("id", "study_uid", "series_uid", "model", "model_version", "finding", "score", "threshold",
           "model_flagged", "decision", "corrected_finding", "location", "comment", "reviewer", "decided_at")


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "t", "y")
    return bool(value)


def final_call(decision: str, model_flagged: bool, corrected_finding: str | None,
               negative_labels: tuple[str, ...] = ()) -> bool | None:
    """The radiologist's positive/negative call implied by a decision; None for an unknown decision."""
    decision = (decision or "").strip().lower()
    if decision == "accept":
        return bool(model_flagged)
    if decision == "reject":
        return not model_flagged
    if decision == "correct":
        text = (corrected_finding or "").strip().lower()
        negatives = NEGATIVE_FINDINGS | {n.lower() for n in negative_labels}
        if text and (text in negatives or text.startswith(("no_", "no ", "not_", "not "))):
            return False
        return True
    return None


def read_decisions(db_path: str | Path) -> list[dict]:
    """Every row of the decisions table, oldest first, opened read-only."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise MedassistError(f"{db_path}: review database not found")
    try:
        con = sqlite3.connect(f"file:{db_path.resolve()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise MedassistError(f"{db_path}: cannot open review database ({exc})") from exc
    try:
        con.row_factory = sqlite3.Row
        present = {r["name"] for r in con.execute("PRAGMA table_info(decisions)")}
        if not present:
            raise MedassistError(f"{db_path}: no 'decisions' table (not a medassist review database)")
        missing = {"series_uid", "model", "model_version", "finding", "model_flagged", "decision"} - present
        if missing:
            raise MedassistError(f"{db_path}: decisions table lacks column(s) {', '.join(sorted(missing))}")
        select = ", ".join(c if c in present else f"NULL AS {c}" for c in COLUMNS)
        order = "id" if "id" in present else "rowid"
        return [dict(r) for r in con.execute(f"SELECT {select} FROM decisions ORDER BY {order}")]
    except sqlite3.DatabaseError as exc:
        raise MedassistError(f"{db_path}: cannot read review database ({exc})") from exc
    finally:
        con.close()


def current_decisions(rows: list[dict]) -> list[dict]:
    """The latest row per (series_uid, model, model_version, finding), in log order."""
    latest: dict[tuple, dict] = {}
    for row in rows:  # oldest first: later rows replace earlier ones
        latest[(row["series_uid"], row["model"], row["model_version"], row["finding"])] = row
    return sorted(latest.values(), key=lambda r: r["id"] if r["id"] is not None else 0)


def _kappa(model: list[int], human: list[int]) -> float | None:
    if len(model) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = cohen_kappa_score(model, human, labels=[0, 1])
    return float(value) if np.isfinite(value) else None


def review_agreement(db_path: str | Path, model: str, negative_labels: tuple[str, ...] = ()) -> dict:
    """Agreement between a model and the radiologists, per model version, plus the overrides.

    Per version: findings decided (current decisions), accept / reject / correct counts and rates,
    observed agreement and Cohen's kappa (sklearn) between ``model_flagged`` and the final call,
    the date range and the number of reviewers; also a per-month breakdown, so a deployment can be
    followed over time. Superseded rows are counted but not used.
    """
    rows = [r for r in read_decisions(db_path) if r["model"] == model]
    current = current_decisions(rows)
    decided, unknown = decided_findings(current, negative_labels)
    versions: dict[str, list[dict]] = defaultdict(list)
    overrides = []
    for row in decided:
        flagged, call = row["model_flagged"], row["final_positive"]
        versions[str(row["model_version"])].append(row)
        if call != flagged:
            kind = ("flagged, rejected" if row["decision"] == "reject" else "flagged, corrected to negative") \
                if flagged else ("not flagged, rejected (called positive)" if row["decision"] == "reject"
                                 else "not flagged, corrected to positive")
            overrides.append({k: row[k] for k in ("study_uid", "series_uid", "model_version", "finding", "score",
                                                   "threshold", "decision", "corrected_finding", "location",
                                                   "reviewer", "decided_at", "comment")} | {"kind": kind})
    return {
        "source": str(db_path),
        "rows_in_log": len(rows),
        "current_decisions": len(current),
        "unknown_decisions": unknown,
        "by_version": {v: summarise_agreement(r) for v, r in sorted(versions.items())},
        "by_month": {v: _by_month(r) for v, r in sorted(versions.items())},
        "overrides": overrides,
    }


def decided_findings(current: list[dict], negative_labels: tuple[str, ...] = ()) -> tuple[list[dict], int]:
    """The current decisions with ``model_flagged`` as a bool and ``final_positive`` (the
    radiologist's call, :func:`final_call`) added, and how many had an unknown decision (left out)."""
    decided, unknown = [], 0
    for row in current:
        flagged = _truthy(row["model_flagged"])
        call = final_call(row["decision"], flagged, row["corrected_finding"], negative_labels)
        if call is None:
            unknown += 1
            continue
        decided.append({**row, "model_flagged": flagged, "final_positive": call})
    return decided, unknown


def summarise_agreement(rows: list[dict]) -> dict:
    """Counts, accept / reject / correct rates, observed agreement, Cohen's kappa (sklearn) and
    overrides of rows from :func:`decided_findings` (kappa None when undefined or under 2 rows)."""
    n = len(rows)
    counts = {d: sum(r["decision"] == d for r in rows) for d in ("accept", "reject", "correct")}
    model = [int(r["model_flagged"]) for r in rows]
    human = [int(r["final_positive"]) for r in rows]
    dates = sorted(str(r["decided_at"]) for r in rows if r["decided_at"])
    return {
        "n_decided": n,
        "n_flagged": int(sum(model)),
        "n_final_positive": int(sum(human)),
        **{f"n_{d}": c for d, c in counts.items()},
        **{f"{d}_rate": c / n if n else None for d, c in counts.items()},
        "agreement": float(np.mean(np.equal(model, human))) if n else None,
        "cohen_kappa": _kappa(model, human),
        "n_overrides": int(sum(a != b for a, b in zip(model, human))),
        "n_reviewers": len({r["reviewer"] for r in rows if r["reviewer"]}),
        "first_decision": dates[0] if dates else None,
        "last_decision": dates[-1] if dates else None,
    }


def _by_month(rows: list[dict]) -> dict[str, dict]:
    months: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        months[str(r["decided_at"] or "")[:7] or "unknown"].append(r)
    return {
        m: {k: v for k, v in summarise_agreement(rs).items() if k in ("n_decided", "accept_rate", "reject_rate", "correct_rate",
                                                              "agreement", "cohen_kappa", "n_overrides")}
        for m, rs in sorted(months.items())
    }


def verify_review_log(db: str | Path, *, key_file: str | Path | None = None,
                      anchor_file: str | Path | None = None) -> list[str]:
    """Problems found in the review log (keyed MAC chain, anchor); an empty list means it verifies.

    See ``medassist.review.store.verify_chain``: ``key_file`` and ``anchor_file`` default to the
    site key (``$MEDASSIST_KEY_FILE``) and the anchor kept beside it. An unkeyed log from an
    earlier medassist is reported as such (it cannot be verified).
    """
    from medassist.review.store import verify_chain

    return verify_chain(db, key_file=key_file, anchor_file=anchor_file)
