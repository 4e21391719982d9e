"""The statistics behind a model card: every number its quantitative analyses show.

``analyse`` computes them for one evaluation set (metrics with bootstrap intervals, ROC,
calibration, operating points, subgroups, label shortcuts, contrasts, the type head);
``medassist.audit.card`` puts them in the card dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medassist import metrics as M
from medassist.audit.evaluation import EvalSet


@dataclass(frozen=True)
class AuditOptions:
    """How the numbers are computed; tests use fewer resamples."""

    n_resamples: int = 1000
    confidence_level: float = 0.95
    ci_method: str = "percentile"
    seed: int = 0
    calibration_bins: int = 10
    min_positives: int = 5
    target_sensitivities: tuple[float, ...] = (0.90, 0.95, 0.99)

    def bootstrap_kwargs(self) -> dict:
        return {"n_resamples": self.n_resamples, "confidence_level": self.confidence_level,
                "method": self.ci_method, "seed": self.seed}



def analyse(evaluation: EvalSet, threshold: float, options: AuditOptions = AuditOptions(),
            training_operating_points: dict | None = None) -> dict:
    """Every number the quantitative-analyses section shows, for one evaluation set."""
    labels, scores = evaluation.labels, evaluation.scores
    boot = options.bootstrap_kwargs()
    overall = M.metrics_with_ci(labels, scores, threshold, **boot)
    subgroups, warnings = M.subgroup_analysis(labels, scores, threshold, evaluation.factors, overall,
                                              min_positives=options.min_positives, **boot)
    shipped_points = []
    for key, value in sorted((training_operating_points or {}).items()):
        m = M.binary_metrics(labels, scores, float(value))
        shipped_points.append({"name": key, "threshold": float(value),
                               **{k: M._json_float(m[k]) for k in ("sensitivity", "specificity", "ppv", "npv")}})
    out = {
        "threshold": float(threshold),
        "overall": overall,
        "roc": M.roc_points(labels, scores),
        "calibration": M.calibration(labels, scores, n_bins=options.calibration_bins),
        "operating_points": M.operating_points(labels, scores, options.target_sensitivities),
        "training_operating_points_on_this_set": shipped_points,
        "subgroups": subgroups,
        "subgroup_warnings": warnings,
        "label_shortcut_risks": label_shortcut_risks(evaluation),
    }
    # Only where the evaluation set has them (a volume model's slices), so other cards keep their shape.
    if evaluation.unit != "case":
        out["unit"] = evaluation.unit
    if evaluation.label_factors:
        out["label_factors"] = list(evaluation.label_factors)
    if evaluation.contrasts:
        out["contrasts"] = [{"name": name, "description": text,
                             **M.metrics_with_ci(labels[np.asarray(mask, bool)], scores[np.asarray(mask, bool)],
                                                 threshold, **boot)}
                            for name, (text, mask) in evaluation.contrasts.items() if np.asarray(mask, bool).any()]
    if evaluation.type_probs is not None:
        out["type_head"] = type_analysis(evaluation, threshold, options)
    if evaluation.extras.get("pseudo_volumes"):
        out["pseudo_volumes"] = evaluation.extras["pseudo_volumes"]
    return out


def type_analysis(evaluation: EvalSet, threshold: float, options: AuditOptions = AuditOptions()) -> dict:
    """The secondary categorical output (tumour type) on the cases that have a type: accuracy with
    its interval, confusion matrix and per-class recall, over all of them and over those the model
    flags at ``threshold`` (what a reader sees in triage)."""
    true, probs = evaluation.type_true, evaluation.type_probs
    predicted = probs.argmax(axis=1)
    typed = true >= 0
    flagged = typed & (evaluation.scores >= threshold)
    boot = options.bootstrap_kwargs()
    return {
        "labels": list(evaluation.type_labels),
        "rule": "predicted type = argmax of the type probabilities",
        "all_typed": M.categorical_accuracy_with_ci(true[typed], predicted[typed], evaluation.type_labels, **boot),
        "flagged_typed": M.categorical_accuracy_with_ci(true[flagged], predicted[flagged], evaluation.type_labels,
                                                        **boot),
    }


def label_shortcut_risks(evaluation: EvalSet, *, min_expected: float = 5.0) -> list[dict]:
    """Factor levels that (almost) determine the label: a model can learn the factor instead.

    A level whose share of positives is >= 0.9 (<= 0.02) while the overall share lies between, and
    where at the overall share at least ``min_expected`` negatives (positives) would be expected, so
    the imbalance is not just a small level. Factors that refine the label (``label_factors``) are
    skipped.
    """
    n = len(evaluation.labels)
    overall = float(evaluation.labels.mean()) if n else 0.0
    risks = []
    for factor, values in evaluation.factors.items():
        if factor in evaluation.label_factors:  # a refinement of the label (tumour class), not a cue
            continue
        values = np.asarray(values)
        for level in sorted(set(values.tolist())):
            mask = values == level
            k = int(mask.sum())
            if k == n:
                continue
            share = float(evaluation.labels[mask].mean())
            high = share >= 0.9 > overall and k * (1 - overall) >= min_expected
            low = share <= 0.02 < overall and k * overall >= min_expected
            if high or low:
                risks.append({
                    "factor": factor, "level": level, "n": k, "n_positive": int(evaluation.labels[mask].sum()),
                    "share_positive": share, "overall_share_positive": overall,
                    "message": (f"{factor} = {level}: {share:.0%} of {k} cases are positive (overall {overall:.0%}); "
                                f"a model can score '{factor}' instead of the finding, and these cases cannot "
                                f"show whether it does"),
                })
    return risks
