"""The model card's figures: ROC curve, reliability diagram, subgroup forest plot.

Built on ``matplotlib.figure.Figure`` directly (no pyplot), so no global backend state is touched.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

DPI = 110
_META = {"Software": None}  # no matplotlib version in the PNG: regenerated cards diff cleanly


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata=_META)
    return path


def _fmt_ci(value, ci) -> str:
    if value is None:
        return "n/a"
    if ci is None or ci[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def plot_roc(roc: dict, overall: dict, operating_points: list[dict], path: Path, title: str) -> Path:
    """ROC curve with the shipped threshold (with its sensitivity/specificity intervals) and operating points."""
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot(roc["fpr"], roc["tpr"], color="C0", lw=2,
            label=f"AUROC {_fmt_ci(overall['auroc'], overall['ci']['auroc'])}")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    if overall["sensitivity"] is not None and overall["specificity"] is not None:
        x, y = 1 - overall["specificity"], overall["sensitivity"]
        ci_s, ci_p = overall["ci"]["sensitivity"], overall["ci"]["specificity"]
        xerr = [[x - (1 - ci_p[1])], [(1 - ci_p[0]) - x]] if ci_p[0] is not None else None
        yerr = [[y - ci_s[0]], [ci_s[1] - y]] if ci_s[0] is not None else None
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", color="C3", capsize=3,
                    label=f"shipped threshold {overall['threshold']:.3f}")
    markers = ("s", "^", "D")
    for point, marker in zip(operating_points, markers):
        if point["specificity"] is None:
            continue
        ax.plot(1 - point["specificity"], point["sensitivity"], marker, color="C2", ms=6,
                label=f"sens >= {point['target_sensitivity']:.0%}: thr {point['threshold']:.3f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)", title=title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_reliability(calib: dict, path: Path, title: str) -> Path:
    """Reliability diagram (observed rate against mean score per bin) with the bin counts below."""
    fig = Figure(figsize=(5, 6))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    bins = calib["bins"]
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    ax.plot([b["mean_score"] for b in bins], [b["observed_rate"] for b in bins], "o-", color="C0",
            label=f"model (ECE {calib['ece']:.3f}, {calib['n_bins']} bins)")
    ax.set(ylim=(-0.01, 1.01), ylabel="observed fraction positive", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    width = 1.0 / calib["n_bins"]
    ax_n.bar([b["lower"] for b in bins], [b["n"] for b in bins], width=width, align="edge",
             color="C0", alpha=0.6, edgecolor="white")
    ax_n.set(xlim=(0, 1), xlabel="predicted probability (score)", ylabel="cases")
    return _save(fig, path)


def plot_subgroups(subgroups: dict[str, list[dict]], overall: dict, path: Path, title: str) -> Path:
    """Forest plot: sensitivity and specificity with intervals for every subgroup level."""
    entries = [(f"{factor}: {row['level']} (n={row['n']}, pos={row['n_positive']})", row)
               for factor, rows in subgroups.items() for row in rows]
    height = max(2.5, 0.32 * len(entries) + 1.2)
    fig = Figure(figsize=(9, height), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(entries)))[::-1]
    for ax, metric in zip(axes, ("sensitivity", "specificity")):
        for y, (_, row) in zip(ys, entries):
            value, ci = row[metric], row["ci"][metric]
            if value is None:
                continue
            flagged = any(w["kind"] == f"low_{metric}" for w in row["warnings"])
            small = any(w["kind"].startswith("too_few") and metric in w["message"] for w in row["warnings"])
            color = "C3" if flagged else ("grey" if small else "C0")
            if ci[0] is not None:
                ax.plot(ci, [y, y], color=color, lw=2)
            ax.plot([value], [y], "o", color=color, mfc="white" if small else color)
        heading = metric
        if overall[metric] is not None:
            ax.axvline(overall[metric], color="black", ls="--", lw=1)
            heading += f" (dashed: overall {overall[metric]:.3f})"
        ax.set(xlim=(-0.02, 1.02), xlabel=metric)
        ax.set_title(heading, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(ys, [label for label, _ in entries], fontsize=8)
    fig.suptitle(title + "\nred: interval entirely below the overall estimate; open grey: too few cases", fontsize=9)
    return _save(fig, path)
