"""Reading triage runs, computing the figures per model version, run and ISO week, and the alerts.

A run is a triage output folder: its ``worklist.csv`` (read with the worklist reader,
``medassist.datamodel.read_worklist``) and, when the review app was used on it, its decision log.
Scores are counted per finding (one series scored by one model); studies are distinct study UIDs.

Subgroups (``SUBGROUP_FACTORS``): the worklist's body part, modality, manufacturer, sex and age
band; a decision takes its finding's values from the worklist row. An empty value is the level
"unknown" (NIfTI inputs, headers without the attribute, worklists written before the column).

Dates: a score is dated by its row's **study date** (the worklist's ``study_date``, from the DICOM
StudyDate) and, where the row has none, by the **run time**, the modification time of the run's
``worklist.csv`` (triage rewrites it last when it finishes); decisions by their own ``decided_at``.
A week's scores pool the rows of that week from every run; a week's agreement pools the decisions
made in it, from every run's log. A run's own period is labelled with its run week.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medassist.datamodel import WORKLIST_CSV, WorklistRow, dicom_date, read_worklist
from medassist.errors import MedassistError
from medassist.monitor import drift as D
from medassist.monitor.card_reference import REPO_CARDS, CardReference, card_cdf, card_quantiles, load_card_reference
from medassist.monitor.agreement_view import (
    Agreement,
    DecisionLog,
    ModelKey,
    agreement_of,
    by_subgroup,
    decisions_of,
    read_decision_log,
)
from medassist.monitor.limits import Limits, load_limits

SUBGROUP_FACTORS: tuple[str, ...] = ("body_part", "modality", "manufacturer", "sex", "age_band")
NOT_CARRIED = {
    "age": "only its coarse band (age_band) is in the worklist, never the age or the birth date",
}
DATE_SOURCES = {
    "scores": "study date: each row's study_date in the worklist (DICOM StudyDate); where a row has none "
              "(non-DICOM input, no or malformed StudyDate, a worklist written before the column), the run "
              "time: modification time of the run's worklist.csv (UTC)",
    "decisions": "decided_at of each decision (UTC)",
}
NO_REFERENCE = (
    "no reference: no --reference RUN_DIR was given and no model card of this model version gives a usable "
    "validation score distribution, so drift and flag rate are not compared (give --reference RUN_DIR, a triage "
    "run of this version taken as the reference, e.g. the same source's validation run)"
)
CARDS_NOTE = (
    "without --reference, each model version is compared with the validation score distribution of its model "
    "card (CARDS/<model>.json of the same version: the survival function at the ROC thresholds, from the "
    "evaluation's positives and negatives); the validation set is a labelled, enriched set used to tune the "
    "threshold, so drift against it measures the site's case mix as well as the model's behaviour"
)


@dataclass(frozen=True)
class Run:
    """One triage output folder as the monitor reads it."""

    path: str
    run_time: str
    iso_week: str
    n_rows: int
    n_scored: int
    n_not_applicable: int
    n_errors: int
    findings: tuple[WorklistRow, ...] = field(repr=False)
    model_errors: dict[ModelKey, int] = field(repr=False)
    decisions: DecisionLog | None = None
    n_study_dated: int = 0  # scored rows dated by their study date (the others by the run time)


@dataclass(frozen=True)
class GroupRate:
    """Findings and flag rate of one subgroup level."""

    n_findings: int
    n_flagged: int
    flag_rate: float


@dataclass(frozen=True)
class Period:
    """One model version's figures over one run or one ISO week."""

    kind: str  # "run" or "week"
    label: str  # the run folder, or the ISO week
    iso_week: str
    runs: tuple[str, ...]  # runs whose scores are pooled here
    decision_runs: tuple[str, ...]  # runs whose decisions are pooled here
    scores: D.ScoreSummary | None
    error_rows: int
    flag_rate: D.FlagRateBand | None
    drift: D.Drift | None
    drift_note: str
    scores_by_subgroup: dict[str, dict[str, GroupRate]]
    agreement: Agreement | None
    agreement_by_subgroup: dict[str, dict[str, Agreement]]
    flag_rate_note: str = ""


@dataclass(frozen=True)
class Reference:
    """The reference scores of one model version."""

    source: str
    scores: D.ScoreSummary | None
    edges: tuple[float, ...] | None
    note: str
    kind: str = "run"  # "run" (--reference), "model_card" or "none"
    card: CardReference | None = None


@dataclass(frozen=True)
class ModelFigures:
    model: str
    version: str
    reference: Reference
    runs: tuple[Period, ...]
    weeks: tuple[Period, ...]


@dataclass(frozen=True)
class Alert:
    """A limit crossed; exactly the keys of monitor.json's alerts."""

    model: str
    version: str
    kind: str  # drift, flag_rate, agreement, integrity
    metric: str
    value: float | int
    limit: float | int | tuple[float, float]
    detail: str


@dataclass(frozen=True)
class MonitorResult:
    alerts: tuple[Alert, ...]
    generated: str
    reference: dict
    limits: Limits
    limits_source: str
    runs: tuple[Run, ...]
    models: tuple[ModelFigures, ...]
    problems: tuple[str, ...]
    written: tuple[str, ...] = ()


def run_time_of(path: Path) -> datetime:
    """When the run finished: its worklist.csv's modification time, in UTC."""
    return datetime.fromtimestamp((path / WORKLIST_CSV).stat().st_mtime, tz=timezone.utc)


def iso_week(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def score_week(row: WorklistRow, run_week: str) -> str:
    """The ISO week a score counts in: its study date's, else (no or malformed date) the run's."""
    date = dicom_date(row.study_date)
    return iso_week(datetime.strptime(date, "%Y%m%d")) if date else run_week


def read_run(path: str | Path, *, key_file: str | Path | None = None, with_decisions: bool = True) -> Run:
    """A run folder's worklist rows (and decision log). MedassistError naming the folder when it has no
    worklist.csv or the worklist cannot be read."""
    folder = Path(path)
    if not folder.is_dir():
        raise MedassistError(f"{folder}: not a folder (expected a triage output folder holding {WORKLIST_CSV})")
    if not (folder / WORKLIST_CSV).is_file():
        raise MedassistError(f"{folder}: no {WORKLIST_CSV} there (not a triage output folder; "
                             f"'medassist triage INPUT --out {folder}' writes one)")
    rows = read_worklist(folder / WORKLIST_CSV)
    findings = tuple(row for row in rows if row.is_finding)
    not_applicable = sum(row.not_applicable for row in rows)
    errors = [row for row in rows if not row.is_finding and not row.not_applicable]
    model_errors = Counter((row.model, row.model_version) for row in errors if row.model)
    moment = run_time_of(folder)
    decisions = None
    if with_decisions:
        subgroups = {row.key: {f: getattr(row, f) for f in SUBGROUP_FACTORS} for row in findings}
        try:
            decisions = read_decision_log(folder, subgroups, key_file=key_file)
        except MedassistError as exc:
            decisions = DecisionLog(path=str(folder / "decisions.sqlite"), present=True, integrity="unreadable",
                                    note=str(exc))
    return Run(
        path=str(path), run_time=moment.strftime("%Y-%m-%dT%H:%M:%SZ"), iso_week=iso_week(moment),
        n_rows=len(rows), n_scored=len(findings), n_not_applicable=not_applicable, n_errors=len(errors),
        findings=findings, model_errors=dict(model_errors), decisions=decisions,
        n_study_dated=sum(bool(dicom_date(row.study_date)) for row in findings),
    )


def _of(findings, model: str, version: str) -> list[WorklistRow]:
    return [row for row in findings if row.model == model and row.model_version == version]


def _arrays(rows: list[WorklistRow]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    scores = np.array([row.score for row in rows], dtype=float)
    flagged = np.array([bool(row.flagged) for row in rows], dtype=bool)
    return scores, flagged, [row.study_uid for row in rows]


def _scores_by_subgroup(rows: list[WorklistRow]) -> dict[str, dict[str, GroupRate]]:
    out: dict[str, dict[str, GroupRate]] = {}
    for factor in SUBGROUP_FACTORS:
        groups: dict[str, list[WorklistRow]] = defaultdict(list)
        for row in rows:
            groups[getattr(row, factor) or "unknown"].append(row)
        out[factor] = {
            level: GroupRate(len(g), sum(bool(r.flagged) for r in g), sum(bool(r.flagged) for r in g) / len(g))
            for level, g in sorted(groups.items())
        }
    return out


def _card_reference(cards_dir: Path | None, model: str, version: str, limits: Limits) -> Reference:
    """The reference of a model version from its model card, or kind "none" saying why there is none."""
    if cards_dir is None:
        return Reference(source="none", scores=None, edges=None, kind="none",
                         note=NO_REFERENCE + f" (no model card folder: {REPO_CARDS} is absent and no --cards given)")
    card, why = load_card_reference(cards_dir, model, version, n_bins=limits.psi_bins,
                                    min_per_bin=limits.min_reference_per_bin)
    if card is None:
        return Reference(source="none", scores=None, edges=None, kind="none", note=f"{NO_REFERENCE}: {why}")
    thresholds, above = np.asarray(card.thresholds), np.asarray(card.above)
    summary = D.ScoreSummary(
        n_findings=card.n, n_studies=card.n, n_flagged=card.n_flagged or 0, flag_rate=card.flag_rate, mean=None,
        quantiles=card_quantiles(thresholds, above, card.n),
    )
    note = (f"model card {card.card} ({card.model} {card.version}): validation score distribution of "
            f"{card.evaluation or 'its evaluation set'}, {card.n} cases ({card.n_positive} positive), from its ROC "
            f"curve ({len(card.thresholds)} thresholds)")
    if card.edges is None:
        note += (f": too few validation cases for PSI bins of at least {limits.min_reference_per_bin} "
                 "(min_reference_per_bin); flag rate still compared")
    if card.flag_rate is None:
        note += "; the card gives no flag count at its threshold, so flag rate is not compared"
    return Reference(source=card.card, scores=summary, edges=card.edges, note=note, kind="model_card", card=card)


def _reference(ref_run: Run | None, model: str, version: str, limits: Limits,
               cards_dir: Path | None = None) -> tuple[Reference, np.ndarray | None]:
    if ref_run is None:
        return _card_reference(cards_dir, model, version, limits), None
    rows = _of(ref_run.findings, model, version)
    if not rows:
        note = (f"the reference run has no scores of {model} {version} (a new version changes the scores "
                "legitimately: take a reference run of this version)")
        return Reference(source=ref_run.path, scores=None, edges=None, note=note), None
    scores, flagged, studies = _arrays(rows)
    edges = D.reference_edges(scores, limits.psi_bins, limits.min_reference_per_bin)
    note = f"reference run {ref_run.path} ({ref_run.run_time})"
    if edges is None:
        note += (f": {len(scores)} scores, too few for PSI bins (at least {2 * limits.min_reference_per_bin} "
                 "needed: min_reference_per_bin x 2); flag rate still compared")
    ref = Reference(source=ref_run.path, scores=D.summarise_scores(scores, flagged, studies),
                    edges=None if edges is None else tuple(map(float, edges)), note=note)
    return ref, scores


def _period(kind: str, label: str, week: str, score_runs: list[Run], rows: list[WorklistRow], decision_runs: list[str],
            decided: list[dict], errors: int, ref: Reference, ref_scores: np.ndarray | None, limits: Limits) -> Period:
    summary = band = drift = None
    note = ""
    if rows:
        scores, flagged, studies = _arrays(rows)
        summary = D.summarise_scores(scores, flagged, studies)
        rate_note = _flag_rate_mismatch(ref, rows)
        if ref.scores is not None and ref.scores.flag_rate is not None and not rate_note:
            band = D.flag_rate_band(ref.scores.n_findings, ref.scores.n_flagged, summary.n_findings,
                                    summary.n_flagged, limits.flag_rate_confidence)
        if ref.edges is not None and ref_scores is not None:
            drift = D.compare_scores(
                ref_scores, scores, np.asarray(ref.edges), psi_moderate=limits.psi_moderate,
                psi_major=limits.psi_major, n_resamples=limits.bootstrap_resamples,
                confidence_level=limits.confidence_level, seed=limits.seed,
            )
        elif ref.edges is not None and ref.card is not None and ref.card.counts is not None:
            card = ref.card
            drift = D.compare_binned(
                np.asarray(card.counts), scores, np.asarray(ref.edges),
                card_cdf(np.asarray(card.thresholds), np.asarray(card.above), card.n),
                psi_moderate=limits.psi_moderate, psi_major=limits.psi_major,
                n_resamples=limits.bootstrap_resamples, confidence_level=limits.confidence_level, seed=limits.seed,
            )
        else:
            note = ref.note
    return Period(
        kind=kind, label=label, iso_week=week, runs=tuple(r.path for r in score_runs),
        decision_runs=tuple(decision_runs), scores=summary, error_rows=errors, flag_rate=band, drift=drift,
        drift_note=note, scores_by_subgroup=_scores_by_subgroup(rows) if rows else {},
        agreement=agreement_of(decided), agreement_by_subgroup=by_subgroup(decided, SUBGROUP_FACTORS) if decided else {},
        flag_rate_note=rate_note if rows else "",
    )


def _flag_rate_mismatch(ref: Reference, rows: list[WorklistRow]) -> str:
    """Why a card's flag rate cannot be compared with these rows': they were flagged at another
    threshold than the card's (empty when comparable, or when the reference is a run)."""
    card = ref.card
    if card is None or card.threshold is None:
        return ""
    others = sorted({row.threshold for row in rows if abs(row.threshold - card.threshold) > 1e-6})
    if not others:
        return ""
    return (f"flag rate not compared: rows flagged at threshold(s) {', '.join(f'{t:g}' for t in others)}, "
            f"the card's validation flag rate is at {card.threshold:g}")


def model_figures(model: str, version: str, runs: list[Run], ref_run: Run | None, limits: Limits,
                  cards_dir: Path | None = None) -> ModelFigures:
    """Reference, per-run and per-week figures of one model version: the reference run's scores
    when there is one, else the version's model card in ``cards_dir``."""
    ref, ref_scores = _reference(ref_run, model, version, limits, cards_dir)
    per_run, weeks_rows, weeks_runs = [], defaultdict(list), defaultdict(dict)
    weeks_decided, weeks_decision_runs = defaultdict(list), defaultdict(set)
    weeks_errors: Counter = Counter()
    for run in runs:
        rows = _of(run.findings, model, version)
        decided = decisions_of(run.decisions, model, version) if run.decisions else []
        errors = run.model_errors.get((model, version), 0)
        if not rows and not decided and not errors:
            continue
        per_run.append(_period("run", run.path, run.iso_week, [run], rows, [run.path] if decided else [], decided,
                               errors, ref, ref_scores, limits))
        for row in rows:
            week = score_week(row, run.iso_week)
            weeks_rows[week].append(row)
            weeks_runs[week].setdefault(run.path, run)
        if errors:  # error rows have no score to date: the run's week
            weeks_runs[run.iso_week].setdefault(run.path, run)
            weeks_errors[run.iso_week] += errors
        for row in decided:
            weeks_decided[row["decision_week"]].append(row)
            weeks_decision_runs[row["decision_week"]].add(run.path)
    weeks = [
        _period("week", week, week, list(weeks_runs.get(week, {}).values()), weeks_rows.get(week, []),
                sorted(weeks_decision_runs.get(week, ())), weeks_decided.get(week, []), weeks_errors.get(week, 0),
                ref, ref_scores, limits)
        for week in sorted(set(weeks_runs) | set(weeks_decided))
    ]
    return ModelFigures(model=model, version=version, reference=ref, runs=tuple(per_run), weeks=tuple(weeks))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def period_alerts(model: str, version: str, period: Period, limits: Limits) -> list[Alert]:
    """The limits one period crosses (drift and flag rate need min_studies, kappa min_reviewed)."""
    where = f"run {period.label}" if period.kind == "run" else f"ISO week {period.label}"
    alerts: list[Alert] = []
    pooled_scores = period.kind == "run" or len(period.runs) > 1
    pooled_decisions = period.kind == "run" or len(period.decision_runs) > 1
    s = period.scores
    if pooled_scores and s is not None and s.n_studies >= limits.min_studies:
        d = period.drift
        if d is not None and d.psi > limits.psi_major:
            interval = f"{limits.confidence_level:.0%} bootstrap {_fmt(d.psi_ci[0])}-{_fmt(d.psi_ci[1])}"
            alerts.append(Alert(model, version, "drift", "psi", d.psi, limits.psi_major,
                                f"{where}: PSI {d.psi:.3f} ({interval}) over {len(d.edges) + 1} reference bins, "
                                f"{d.n_current} scores against {d.n_reference}: major shift of the score distribution"))
        if d is not None and limits.ks_alpha is not None and d.ks_p_value < limits.ks_alpha:
            alerts.append(Alert(model, version, "drift", "ks_p_value", d.ks_p_value, limits.ks_alpha,
                                f"{where}: Kolmogorov-Smirnov D {d.ks_statistic:.3f}, p {d.ks_p_value:.2g} "
                                f"< {limits.ks_alpha:g}"))
        b = period.flag_rate
        if b is not None and b.outside:
            alerts.append(Alert(model, version, "flag_rate", "flag_rate", b.current_rate, (b.low, b.high),
                                f"{where}: flag rate {b.current_rate:.3f} ({s.n_flagged}/{s.n_findings}) outside "
                                f"{b.low:.3f}-{b.high:.3f}, the {b.confidence:.0%} band of the reference rate "
                                f"{b.reference_rate:.3f}"))
    a = period.agreement
    if (pooled_decisions and a is not None and a.n_decided >= limits.min_reviewed and a.cohen_kappa is not None
            and a.cohen_kappa < limits.kappa_floor):
        alerts.append(Alert(model, version, "agreement", "cohen_kappa", a.cohen_kappa, limits.kappa_floor,
                            f"{where}: Cohen's kappa {a.cohen_kappa:.3f} between the model's flag and the reviewers' "
                            f"call on {a.n_decided} reviewed findings (overrides {a.n_overrides}, rate "
                            f"{_fmt(a.override_rate)}) below the floor {limits.kappa_floor:g}"))
    return alerts


def integrity_alerts(figures: ModelFigures, runs: list[Run]) -> list[Alert]:
    """A decision log that fails verification, for each model version with findings in its run."""
    alerts = []
    shown = {period.label for period in figures.runs}
    for run in runs:
        log = run.decisions
        if run.path in shown and log is not None and log.integrity == "failed":
            alerts.append(Alert(figures.model, figures.version, "integrity", "decision_log_problems",
                                len(log.problems), 0, f"run {run.path}: {log.note} ({len(log.problems)} problem(s); "
                                f"medassist audit --verify --review-db {log.path})"))
    return alerts


def _model_keys(runs: list[Run]) -> list[ModelKey]:
    keys = {(row.model, row.model_version) for run in runs for row in run.findings}
    keys |= {key for run in runs for key in run.model_errors}
    keys |= {(row["model"], str(row["model_version"])) for run in runs if run.decisions for row in run.decisions.decided}
    return sorted(keys)


def _cards_dir(cards: str | Path | None) -> Path | None:
    """The model card folder: ``cards`` (MedassistError when it is not a folder), else the checkout's
    model_cards/ when there is one, else None."""
    if cards is None:
        return REPO_CARDS if REPO_CARDS.is_dir() else None
    folder = Path(cards)
    if not folder.is_dir():
        raise MedassistError(f"--cards {folder}: not a folder (expected a folder of model cards, <model>.json)")
    return folder


def run_monitor(
    run_dirs: list[str | Path], out_dir: str | Path, *, reference: str | Path | None = None,
    limits_path: str | Path | None = None, key_file: str | Path | None = None, cards: str | Path | None = None,
) -> MonitorResult:
    """Read the runs, compute every figure and alert, write ``monitor.json`` and ``report.html``.

    The reference: the ``reference`` run when given; otherwise each model version's model card in
    ``cards`` (default: the checkout's model_cards/ beside this medassist, when there is one) where
    the card is of that version.

    An unusable run (no worklist.csv, unreadable worklist or decision log) is listed in
    ``problems`` and the others go on; a bad reference or limits file, or no usable run at all,
    raises MedassistError before anything is written.
    """
    from medassist.monitor.report import write_report

    limits, limits_source = load_limits(limits_path)
    cards_dir = _cards_dir(cards)
    ref_run = None
    if reference is not None:
        try:
            ref_run = read_run(reference, with_decisions=False)
        except MedassistError as exc:
            raise MedassistError(f"--reference {exc}") from exc
    runs, problems, seen = [], [], set()
    for path in run_dirs:
        if Path(path).resolve() in seen:
            continue
        seen.add(Path(path).resolve())
        try:
            run = read_run(path, key_file=key_file)
        except MedassistError as exc:
            problems.append(str(exc))
            continue
        if run.decisions is not None and run.decisions.integrity == "unreadable":
            problems.append(run.decisions.note)
        runs.append(run)
    if not runs:
        raise MedassistError("no usable run folder: " + "; ".join(problems))
    models, alerts = [], []
    for model, version in _model_keys(runs):
        figures = model_figures(model, version, runs, ref_run, limits, cards_dir)
        models.append(figures)
        for period in figures.runs + figures.weeks:
            alerts += period_alerts(model, version, period, limits)
        alerts += integrity_alerts(figures, runs)
    versions = [{"model": m.model, "version": m.version, "kind": m.reference.kind, "source": m.reference.source,
                 "note": m.reference.note} for m in models]
    if ref_run is not None:
        ref_info = {"kind": "run", "run": ref_run.path, "run_time": ref_run.run_time, "iso_week": ref_run.iso_week,
                    "note": "a triage run taken as the reference (--reference); it takes the place of the model "
                            "cards' validation distributions",
                    "versions": versions}
    elif cards_dir is not None:
        ref_info = {"kind": "model_cards", "cards": str(cards_dir), "note": CARDS_NOTE.replace("CARDS", str(cards_dir)),
                    "versions": versions}
    else:
        ref_info = {"kind": "none", "note": NO_REFERENCE, "versions": versions}
    result = MonitorResult(
        alerts=tuple(alerts), generated=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        reference=ref_info, limits=limits, limits_source=limits_source, runs=tuple(runs), models=tuple(models),
        problems=tuple(problems),
    )
    written = write_report(result, Path(out_dir))
    return replace(result, written=tuple(str(p) for p in written))
