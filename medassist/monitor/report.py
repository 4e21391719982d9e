"""The monitor's outputs: ``monitor.json`` (alerts first, then every figure) and ``report.html``
(self-contained: plots embedded as base64 PNG, every text from the data escaped with html.escape).

Both are written atomically (``medassist.atomic.write_atomic``, owner-only: temporary file,
fsync, ``os.replace``). Neither lists patient identifiers: figures are counts and aggregates, runs
are named by their folders, subgroups by body part, modality, manufacturer, sex and age band.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from medassist.atomic import write_atomic
from medassist.audit.html_style import REPORT_CSS
from medassist.monitor import drift as D
from medassist.monitor.limits import Limits
from medassist.monitor.run import DATE_SOURCES, NOT_CARRIED, SUBGROUP_FACTORS, ModelFigures, MonitorResult, Period

JSON_NAME = "monitor.json"
HTML_NAME = "report.html"
ALERT_KEYS = ("model", "version", "kind", "metric", "value", "limit", "detail")
ADAPTATION_NOTE = ("Site adaptation from these reviews is a separate, locked step: `medassist adapt` "
                   "(threshold only, under configs/adapt_protocol.yaml)")


def jsonable(value: Any) -> Any:
    """Plain JSON values: dataclasses as dicts of their shown fields (``repr=False`` fields, such
    as row-level data, are left out), tuples as lists, NaN and infinities as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def report_dict(result: MonitorResult) -> dict:
    """monitor.json's content."""
    return {
        "alerts": [{key: jsonable(getattr(alert, key)) for key in ALERT_KEYS} for alert in result.alerts],
        "generated": result.generated,
        "generator": "medassist monitor",
        "reference": result.reference,
        "limits": {**jsonable(result.limits), "source": result.limits_source},
        "dates": DATE_SOURCES,
        "units": "scores, flag rates and agreement per finding (one series scored by one model version); "
                 "studies are distinct study UIDs",
        "subgroups": {"reported": list(SUBGROUP_FACTORS), "not_available": NOT_CARRIED},
        "runs": jsonable(result.runs),
        "models": jsonable(result.models),
        "problems": list(result.problems),
    }


def write_report(result: MonitorResult, out_dir: Path) -> list[Path]:
    """Write monitor.json and report.html into ``out_dir`` (created when missing); returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = report_dict(result)
    json_path, html_path = out_dir / JSON_NAME, out_dir / HTML_NAME
    write_atomic(json_path, json.dumps(data, indent=1, allow_nan=False, ensure_ascii=False) + "\n", private=True)
    write_atomic(html_path, render_html(result), private=True)
    return [json_path, html_path]


# --- HTML -------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _period_row(p: Period) -> list[Any]:
    s, d, b, a = p.scores, p.drift, p.flag_rate, p.agreement
    label = p.label if p.kind == "week" else f"{p.label} ({p.iso_week})"
    psi = "n/a" if d is None else f"{d.psi:.3f} [{_num(d.psi_ci[0])}, {_num(d.psi_ci[1])}] {d.level}"
    return [
        label,
        "" if s is None else s.n_studies, "" if s is None else s.n_findings, p.error_rows,
        "" if s is None else f"{_pct(s.flag_rate)}" + ("" if b is None else f" (band {_pct(b.low)}-{_pct(b.high)})"),
        "" if s is None else _num(s.quantiles.get("p50")),
        psi if s is not None else "",
        "" if d is None else f"{d.ks_statistic:.3f} / {d.ks_p_value:.2g}",
        "" if a is None else a.n_decided,
        "" if a is None else f"{_pct(a.accept_rate)} / {_pct(a.reject_rate)} / {_pct(a.correct_rate)}",
        "" if a is None else _num(a.cohen_kappa),
        "" if a is None else _pct(a.override_rate),
    ]


_PERIOD_HEADERS = ["period", "studies", "findings", "error rows", "flag rate", "median score",
                   "PSI [bootstrap interval] level", "KS D / p", "reviewed", "accept / reject / correct",
                   "Cohen's kappa", "override rate"]


def _subgroup_tables(p: Period) -> str:
    rows = []
    for factor in SUBGROUP_FACTORS:
        levels = set(p.scores_by_subgroup.get(factor, {})) | set(p.agreement_by_subgroup.get(factor, {}))
        for level in sorted(levels):
            g = p.scores_by_subgroup.get(factor, {}).get(level)
            a = p.agreement_by_subgroup.get(factor, {}).get(level)
            rows.append([factor, level, "" if g is None else g.n_findings, "" if g is None else _pct(g.flag_rate),
                         "" if a is None else a.n_decided, "" if a is None else _num(a.cohen_kappa),
                         "" if a is None else _pct(a.override_rate)])
    if not rows:
        return ""
    return (f"<p>Subgroups, {_e(p.label)}:</p>"
            + _table(["factor", "level", "findings", "flag rate", "reviewed", "Cohen's kappa", "override rate"], rows))


def _model_section(m: ModelFigures, limits: Limits) -> str:
    ref = m.reference
    parts = [f"<h2>{_e(m.model)} {_e(m.version)}</h2>"]
    if ref.scores is None:
        parts.append(f'<div class="warn">Reference: {_e(ref.note)}</div>')
    elif ref.kind == "model_card":
        r = ref.scores
        bins = ("no PSI bins" if ref.edges is None
                else f"{len(ref.edges) + 1} PSI bins (edges among the card's ROC thresholds)")
        parts.append(f"<p>Reference: {_e(ref.note)}; flag rate {_pct(r.flag_rate)}, median score about "
                     f"{_num(r.quantiles.get('p50'))} (interpolated between thresholds); {_e(bins)}. "
                     f"KS: {_e(D.BINNED_METHOD)}.</p>")
    else:
        r = ref.scores
        bins = "no PSI bins" if ref.edges is None else f"{len(ref.edges) + 1} PSI bins (reference quantiles)"
        parts.append(f"<p>Reference: {_e(ref.note)}; {r.n_findings} findings, {r.n_studies} studies, flag rate "
                     f"{_pct(r.flag_rate)}, median score {_num(r.quantiles.get('p50'))}; {_e(bins)}.</p>")
    png = plot_model(m, limits)
    if png:
        parts.append(f'<figure><img alt="{_e(m.model)} {_e(m.version)} per run" '
                     f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></figure>')
    parts.append("<h3>Per run</h3>" + _table(_PERIOD_HEADERS, [_period_row(p) for p in m.runs]))
    parts.append("<h3>Per ISO week</h3><p>Scores by study week (the run week where a row has no study date), "
                 "agreement by decision week.</p>"
                 + _table(_PERIOD_HEADERS, [_period_row(p) for p in m.weeks]))
    notes = [p for p in m.runs if p.drift_note and p.scores is not None]
    if notes:
        parts.append(f"<p>No drift figures: {_e(notes[0].drift_note)}</p>")
    rate_notes = sorted({p.flag_rate_note for p in m.runs + m.weeks if p.flag_rate_note})
    for note in rate_notes:
        parts.append(f'<div class="warn">{_e(note)}</div>')
    parts.append("<h3>Subgroups per run</h3>" + "".join(_subgroup_tables(p) for p in m.runs))
    return "\n".join(parts)


def render_html(result: MonitorResult) -> str:
    """The self-contained report page."""
    body = ["<h1>medassist monitor</h1>",
            f"<p>Generated {_e(result.generated)}. Limits: {_e(result.limits_source)}.</p>"]
    ref = result.reference
    if ref["kind"] == "run":
        body.append(f"<p><strong>Reference:</strong> run {_e(ref['run'])} ({_e(ref['run_time'])}): {_e(ref['note'])}.</p>")
    elif ref["kind"] == "model_cards":
        body.append(f"<p><strong>Reference:</strong> model cards in {_e(ref['cards'])}: {_e(ref['note'])}.</p>")
    else:
        body.append(f'<div class="warn"><strong>Reference:</strong> {_e(ref["note"])}.</div>')
    if ref.get("versions"):
        body.append(_table(["model", "version", "reference", "source", "note"],
                           [[v["model"], v["version"], v["kind"], v["source"], v["note"]] for v in ref["versions"]]))
    for problem in result.problems:
        body.append(f'<div class="warn"><strong>Not used:</strong> {_e(problem)}</div>')
    if result.alerts:
        body.append(f'<div class="alert"><strong>{len(result.alerts)} alert(s)</strong></div>')
        body.append(_table(list(ALERT_KEYS), [
            [a.model, a.version, a.kind, a.metric, _num(float(a.value)),
             " - ".join(_num(v) for v in a.limit) if isinstance(a.limit, tuple) else _num(float(a.limit)), a.detail]
            for a in result.alerts]))
    else:
        body.append('<div class="ok">No limit crossed.</div>')
    body.append("<h2>Runs</h2>" + _table(
        ["run", "run time", "ISO week", "worklist rows", "scored", "scored with a study date", "not applicable",
         "errors", "decision log"],
        [[r.path, r.run_time, r.iso_week, r.n_rows, r.n_scored, r.n_study_dated, r.n_not_applicable, r.n_errors,
          "" if r.decisions is None else f"{r.decisions.integrity}: {r.decisions.note}"
          + (f" ({r.decisions.current_decisions} current decisions)" if r.decisions.present else "")]
         for r in result.runs]))
    for m in result.models:
        body.append(_model_section(m, result.limits))
    limits = dataclasses.asdict(result.limits)
    body.append("<h2>Limits</h2>" + _table(["limit", "value"], [[k, "null (off)" if v is None else v]
                                                               for k, v in limits.items()]))
    body.append("<h2>Notes</h2><ul>"
                + f"<li>Dates: scores by {_e(DATE_SOURCES['scores'])}; decisions by {_e(DATE_SOURCES['decisions'])}.</li>"
                + "<li>Subgroups: " + _e(", ".join(f.replace("_", " ") for f in SUBGROUP_FACTORS))
                + " (an empty value is the level unknown). "
                + _e(", ".join(f"{k}: {v}" for k, v in NOT_CARRIED.items()))
                + ".</li><li>Alerts are raised per run, and per ISO week when a week pools more than one run.</li>"
                + f"<li>{_e(ADAPTATION_NOTE)}.</li></ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>medassist monitor</title>"
            f"<style>{REPORT_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# --- plots ------------------------------------------------------------------------------------


def plot_model(m: ModelFigures, limits: Limits) -> bytes:
    """One PNG per model version: score quantiles, reference-bin proportions, PSI, flag rate and
    kappa per run (empty bytes when there is nothing to plot)."""
    runs = [p for p in m.runs if p.scores is not None or p.agreement is not None]
    if not runs:
        return b""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(12, 7.5))
    axes = fig.subplots(2, 3).ravel()
    x = np.arange(len(runs))
    names = [Path(p.label).name or p.label for p in runs]
    ref = m.reference.scores

    ax = axes[0]  # score quantiles per run, the reference first
    boxes = ([("reference", ref)] if ref is not None else []) + [(n, p.scores) for n, p in zip(names, runs)]
    for i, (_, s) in enumerate(boxes):
        if s is None or not s.quantiles:
            continue
        q = s.quantiles
        ax.vlines(i, q["p05"], q["p95"], color="grey")
        ax.bar(i, q["p75"] - q["p25"], bottom=q["p25"], width=0.5, color="C7" if i == 0 and ref is not None else "C0")
        ax.hlines(q["p50"], i - 0.25, i + 0.25, color="k")
    ax.set(xticks=range(len(boxes)), ylim=(0, 1), ylabel="score", title="scores: 5-25-50-75-95th percentiles")
    ax.set_xticklabels([b[0] for b in boxes], rotation=30, ha="right", fontsize=7)

    ax = axes[1]  # proportions per reference bin
    drifts = [(n, p.drift) for n, p in zip(names, runs) if p.drift is not None]
    if drifts:
        k = len(drifts[0][1].reference_proportions)
        ax.bar(range(k), drifts[0][1].reference_proportions, color="C7", label="reference")
        for j, (n, d) in enumerate(drifts[:8]):
            ax.plot(range(k), d.current_proportions, marker="o", ms=3, color=f"C{j % 7}", label=n)
        ax.legend(fontsize=6)
    ax.set(xlabel="reference bin (quantiles)", ylabel="share of scores", title="scores per reference bin")

    ax = axes[2]  # PSI with the limits
    psi = [np.nan if p.drift is None else p.drift.psi for p in runs]
    ax.plot(x, psi, marker="o")
    for p_i, p in enumerate(runs):
        if p.drift is not None and p.drift.psi_ci[0] is not None:
            ax.vlines(p_i, p.drift.psi_ci[0], p.drift.psi_ci[1], color="C0", alpha=0.5)
    ax.axhline(limits.psi_moderate, color="C1", ls="--", lw=1, label="moderate")
    ax.axhline(limits.psi_major, color="C3", ls="--", lw=1, label="major (alert)")
    ax.set(title="PSI against the reference", xticks=x, xlim=(-0.5, len(runs) - 0.5))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    ax.legend(fontsize=6)

    ax = axes[3]  # flag rate with the reference band
    rate = [np.nan if p.scores is None or p.scores.flag_rate is None else p.scores.flag_rate for p in runs]
    ax.plot(x, rate, marker="o", label="flag rate")
    for p_i, p in enumerate(runs):
        if p.flag_rate is not None:
            ax.vlines(p_i, p.flag_rate.low, p.flag_rate.high, color="C2", lw=4, alpha=0.4)
    if ref is not None and ref.flag_rate is not None:
        ax.axhline(ref.flag_rate, color="C7", ls="--", lw=1, label="reference")
    ax.set(title="flag rate (bars: band the reference explains)", ylim=(0, 1), xticks=x, xlim=(-0.5, len(runs) - 0.5))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    ax.legend(fontsize=6)

    ax = axes[4]  # kappa
    kappa = [np.nan if p.agreement is None or p.agreement.cohen_kappa is None else p.agreement.cohen_kappa for p in runs]
    ax.plot(x, kappa, marker="o", color="C4")
    ax.axhline(limits.kappa_floor, color="C3", ls="--", lw=1, label="floor (alert)")
    ax.legend(fontsize=6)
    ax.set(title="Cohen's kappa, model vs reviewers", ylim=(-1, 1), xticks=x, xlim=(-0.5, len(runs) - 0.5))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)

    ax = axes[5]  # decisions
    shares = np.array([[0, 0, 0] if p.agreement is None else
                       [p.agreement.accept_rate or 0, p.agreement.reject_rate or 0, p.agreement.correct_rate or 0]
                       for p in runs])
    bottom = np.zeros(len(runs))
    for j, label in enumerate(("accept", "reject", "correct")):
        ax.bar(x, shares[:, j], bottom=bottom, label=label, color=("C2", "C3", "C1")[j])
        bottom += shares[:, j]
    ax.set(title="reviewers' decisions", ylim=(0, 1), xticks=x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    ax.legend(fontsize=6)

    fig.suptitle(f"{m.model} {m.version}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    return buffer.getvalue()
