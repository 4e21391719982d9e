"""Model cards (Mitchell et al. 2019, "Model Cards for Model Reporting") as JSON, Markdown and HTML.

``build_card`` assembles one JSON-able dict with the paper's sections: model details, intended
use, factors, metrics, evaluation data, training data, quantitative analyses, ethical
considerations, caveats and recommendations. ``render_markdown`` and ``render_html`` lay the same
dict out through one list of blocks, so the two documents always say the same thing; the JSON is
the machine-readable copy.

The narrative parts (intended use, out-of-scope uses, ethical considerations, known shortcuts)
come from ``model_cards/templates/<model>.yaml`` when present, else ``default.yaml``, else the
generic text below; everything numeric comes from the evaluation.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medassist import metrics as M
from medassist.audit.evaluation import EvalSet
from medassist.audit.html_style import REPORT_CSS
from medassist.models.spec import InputKind, ModelSpec

CARD_SCHEMA = "medassist-model-card/1"
REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DIRS = (REPO_ROOT / "model_cards" / "templates",)
SECTIONS = (
    ("model_details", "Model details"),
    ("intended_use", "Intended use"),
    ("factors", "Factors"),
    ("metrics", "Metrics"),
    ("evaluation_data", "Evaluation data"),
    ("training_data", "Training data"),
    ("quantitative_analyses", "Quantitative analyses"),
    ("ethical_considerations", "Ethical considerations"),
    ("caveats_and_recommendations", "Caveats and recommendations"),
)


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


# --- analysis ------------------------------------------------------------------------------------


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


# --- the card dict -------------------------------------------------------------------------------


def load_narrative(name: str, template_dirs: tuple[Path, ...] = TEMPLATE_DIRS) -> dict:
    """The model's narrative template (YAML), falling back to default.yaml, then to {}."""
    import yaml

    for directory in template_dirs:
        for candidate in (Path(directory) / f"{name}.yaml", Path(directory) / "default.yaml"):
            if candidate.is_file():
                return yaml.safe_load(candidate.read_text()) or {}
    return {}


def _scope_lines(spec: ModelSpec) -> tuple[list[str], list[str]]:
    scope = [f"Modalities: {', '.join(spec.modalities) or 'any'}.",
             f"Body parts: {', '.join(spec.body_parts) if spec.body_parts else 'any'}"
             + (f", except {', '.join(spec.excluded_body_parts)}." if spec.excluded_body_parts else ".")]
    out = []
    if spec.modalities:
        out.append(f"Images of modalities other than {', '.join(spec.modalities)}: the triage stage does not "
                   "route them to this model.")
    if spec.excluded_body_parts:
        out.append(f"Body parts {', '.join(spec.excluded_body_parts)}: excluded from the model's scope.")
    return scope, out


def _count_parameters(spec: ModelSpec) -> int | None:
    try:
        from medassist.models.networks import build_network

        return int(sum(p.numel() for p in build_network(spec.network, spec.network_args).parameters()))
    except Exception:  # noqa: BLE001 - an informative extra only
        return None


def build_card(
    spec: ModelSpec,
    *,
    evaluation: EvalSet | None = None,
    analysis: dict | None = None,
    review: dict | None = None,
    review_chain_problems: list[str] | None = None,
    localisation: dict | None = None,
    narrative: dict | None = None,
    options: AuditOptions = AuditOptions(),
    weights_check: str = "",
    evaluation_problem: str = "",
    normal_volumes: dict | None = None,
    volume_validation: dict | None = None,
    external_report: dict | None = None,
) -> dict:
    """The model card as one JSON-able dict (NaN already replaced by None).

    ``normal_volumes``: a volume model's report on normal volumes from other sources
    (``tumor.evaluate_normal_volumes``), shown with the training run's pseudo-volume figures.
    ``volume_validation``: its volume-level validation on labelled tumour and normal volumes per
    source (``tumor_volumes.VolumeValidation.to_dict``, ``scripts/tumor_volume_validation.py``).
    ``external_report``: a radiograph model's other-source figures measured after training on the
    shipped weights (``scripts/fracture_external_validation.py``), used when the training run
    measured none.
    """
    narrative = narrative or {}
    intended = narrative.get("intended_use", {})
    scope, scope_out = _scope_lines(spec)
    validation = spec.validation or {}
    stored_val = validation.get("validation", {})
    history = validation.get("history", [])

    evaluated_factors = sorted(evaluation.factors) if evaluation else []
    card = {
        "schema": CARD_SCHEMA,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "generator": "medassist audit",
        "model_details": {
            "name": spec.name,
            "version": spec.version,
            "finding": spec.finding,
            "labels": list(spec.labels),
            "description": narrative.get("description", f"Scores the probability of '{spec.finding}' in an image."),
            "architecture": {
                "network": spec.network,
                "network_args": spec.network_args,
                "parameters": _count_parameters(spec),
                "score_head": spec.score_head,
                "output": _output_text(spec),
            },
            "preprocessing": asdict(spec.preprocess),
            "threshold": spec.threshold,
            "weights": spec.weights,
            "weights_sha256": spec.sha256,
            "weights_check": weights_check,
            "training_command": spec.training_command,
            "licence": spec.licence,
            "developers": narrative.get("developers", "the medassist project"),
            "citation": narrative.get("citation", ""),
            "contact": narrative.get("contact", ""),
        },
        "intended_use": {
            "primary_uses": intended.get("primary_uses") or [
                f"Decision support: prioritise studies with a likely {spec.finding} on a reading worklist and "
                "show where the evidence lies; a qualified reader reviews every study."],
            "primary_users": intended.get("primary_users") or ["Radiologists and reporting clinicians."],
            "scope": scope,
            "out_of_scope": (intended.get("out_of_scope") or [
                "Stand-alone diagnosis, or ruling a finding out without a qualified reader's review."]) + scope_out,
        },
        "factors": {
            "relevant": narrative.get("factors", {}).get("relevant", []),
            "evaluated": evaluated_factors,
            "notes": narrative.get("factors", {}).get("notes", []),
        },
        "metrics": {
            "threshold": spec.threshold,
            "definitions": {
                "auroc": "area under the ROC curve (threshold-free discrimination)",
                "sensitivity": "TP / (TP + FN) at the shipped threshold: share of positive cases flagged",
                "specificity": "TN / (TN + FP): share of negative cases not flagged",
                "ppv": "TP / (TP + FP): share of flags that are right (depends on prevalence)",
                "npv": "TN / (TN + FN): share of unflagged cases that are negative (depends on prevalence)",
                "ece": (f"expected calibration error: mean |observed rate - mean score| over {options.calibration_bins} "
                        "equal-width score bins, weighted by the bin's share of cases"),
                "brier": "mean squared difference between score and label",
                "operating_points": ("for each target sensitivity, the highest threshold reaching it on the evaluation "
                                     "set, with the specificity there"),
            },
            "flag_rule": "a case is flagged when score >= threshold",
            "confidence_intervals": M.bootstrap_settings(
                n_resamples=options.n_resamples, confidence_level=options.confidence_level,
                method=options.ci_method, seed=options.seed) | {
                "note": ("cases are resampled with their labels; resamples in which a metric is undefined (no "
                         "positives, say) are left out of that metric's interval")},
            "subgroup_warning_rule": (
                f"a subgroup is flagged when the upper bound of its sensitivity (or specificity) interval is below "
                f"the overall point estimate; a subgroup with fewer than {options.min_positives} positive (negative) "
                "cases is reported as too small to estimate sensitivity (specificity)"),
        },
        "evaluation_data": (
            {**evaluation.summary(), "prevalence_by_factor": _prevalence_by_factor(evaluation),
             "note": narrative.get("evaluation_data", {}).get("notes", [])}
            if evaluation else {"available": False, "reason": evaluation_problem or "no labelled evaluation set given"}
        ),
        "training_data": {
            "description": spec.training_data,
            "licence": spec.licence,
            "notes": narrative.get("training_data", {}).get("notes", []),
            "training_command": spec.training_command,
            "validation_at_training_time": {k: M._json_float(v) if isinstance(v, float) else v
                                            for k, v in stored_val.items()},
            "training_subset_at_training_time": validation.get("training_subset", {}),
            "operating_points_at_training_time": validation.get("operating_points", {}),
            "epochs": len(history),
            "last_epoch": history[-1] if history else None,
        },
        "external_validation": _external_validation(validation, narrative, volume_validation, normal_volumes,
                                                     external_report),
        "quantitative_analyses": {
            "evaluation": analysis,
            "human_ai_review": review,
            "review_log_integrity": review_chain_problems,
            "saliency_localisation": localisation,
            **({"volume_level": _volume_level(spec, normal_volumes, volume_validation)}
               if spec.input_kind == InputKind.VOLUME else {}),
        },
        "ethical_considerations": narrative.get("ethical_considerations") or [
            "Automation bias: a flag, or its absence, can change how carefully a study is read. The model misses "
            "positives at any threshold (see sensitivity); an unflagged study is not a normal study.",
            "The evaluation data may not represent the population, devices and protocols where the model is used: "
            "re-audit on local labelled data before relying on these numbers.",
        ],
        "caveats_and_recommendations": _caveats(spec, evaluation, analysis, review, localisation, narrative,
                                                normal_volumes, volume_validation),
    }
    if evaluation and analysis and stored_val and evaluation.used_for_tuning:
        card["evaluation_data"]["consistency_with_training_run"] = _consistency(stored_val, analysis["overall"])
    return sanitise(card)


OTHER_SOURCE_VOLUMES = ("brats",)  # volume-validation sources no training data came from


def _external_validation(validation: dict, narrative: dict, volume_validation: dict | None = None,
                         normal_volumes: dict | None = None, external_report: dict | None = None) -> dict | None:
    """Other-source figures: measured at training time (``validation["external_dev"]``) or after
    it on the shipped weights (``external_report``), or a volume model's volumes from sources it
    was not trained on (labelled volumes of ``OTHER_SOURCE_VOLUMES``, and the normal-volume
    report), with the narrative's notes on where the model fails; None when nothing from another
    source was measured."""
    external = validation.get("external_dev")
    measured = "at training time"
    mismatch = ""
    if not external and external_report and external_report.get("regions"):
        external = external_report["regions"]
        measured = "after training, on the shipped weights"
        mismatch = external_report.get("mismatch", "")
    volumes = [[key, r["n_volumes"], r["n_flagged"], _f(r.get("n_localised")), r["target"],
                "yes" if r.get("target_met") else "no"]
               for key, r in ((volume_validation or {}).get("sources") or {}).items()
               if key.split("/")[0] in OTHER_SOURCE_VOLUMES]
    runs = [r for variants in (normal_volumes or {}).get("volumes", {}).values() for r in variants.values()
            if isinstance(r, dict) and "flagged" in r]
    if runs:
        volumes.append([f"normal volumes ({', '.join((normal_volumes or {}).get('volumes', {}))}), all variants",
                        len(runs), sum(bool(r["flagged"]) for r in runs), "n/a", "none flagged",
                        "yes" if not any(r["flagged"] for r in runs) else "no"])
    if not external and not volumes:
        return None
    return {"sets": {"external_dev": external} if external else {},
            "measured": measured,
            "mismatch": mismatch,
            "volumes": volumes,
            "head_choice": validation.get("head_choice"),
            "notes": narrative.get("external_validation", {}).get("notes", [])}


def _output_text(spec: ModelSpec) -> str:
    if spec.input_kind != InputKind.VOLUME:
        return "sigmoid probability of the finding per image"
    rule = ((spec.validation or {}).get("inference") or {}).get("aggregation") or {}
    return (f"sigmoid probability of the finding per slice (score head {spec.score_head}); a study's score "
            f"aggregates its in-brain slices ({rule.get('rule', 'see the model')}"
            + (f", {rule['extent_mm']:g} mm window" if rule.get("extent_mm") else "") + ")")


def _volume_level(spec: ModelSpec, normal_volumes: dict | None, volume_validation: dict | None = None) -> dict:
    """What is known of a volume model at the study level: labelled tumour and normal volumes per
    source, normal volumes from other sources (report files) and the training run's pseudo-volume
    check of the study rule."""
    return {
        "labelled_volumes": volume_validation,
        "normal_volumes": normal_volumes,
        "study_rule_at_training_time": (spec.validation or {}).get("study_rule_calibration"),
    }


def _small_warnings(analysis: dict) -> list[dict]:
    """'Too few positives/negatives' warnings, except for factors that refine the label (a tumour
    class has no negatives by definition)."""
    skip = set(analysis.get("label_factors", []))
    return [w for w in analysis["subgroup_warnings"] if w["kind"].startswith("too_few") and w["factor"] not in skip]


def _prevalence_by_factor(evaluation: EvalSet) -> dict[str, list[dict]]:
    out = {}
    for factor, values in evaluation.factors.items():
        values = np.asarray(values)
        rows = []
        for level, n in evaluation.summary()["factors"][factor].items():
            pos = int(evaluation.labels[values == level].sum())
            rows.append({"level": level, "n": n, "n_positive": pos, "share_positive": pos / n if n else None})
        out[factor] = rows
    return out


def _consistency(stored: dict, overall: dict) -> dict:
    """Training-time validation metrics against the recomputation (same images, same threshold)."""
    rows = {}
    for key in M.METRIC_NAMES:
        a, b = stored.get(key), overall.get(key)
        if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
            continue
        rows[key] = {"training_run": float(a), "this_audit": float(b), "difference": float(b) - float(a)}
    largest = max((abs(r["difference"]) for r in rows.values()), default=0.0)
    return {
        "metrics": rows,
        "largest_difference": largest,
        "note": ("matches the training run" if largest < 0.01 else
                 "differs from the training run by more than 0.01: the audit scores the JPEGs through the "
                 "inference preprocessing, training scored its cached 8-bit network inputs"),
    }


def _caveats(spec, evaluation, analysis, review, localisation, narrative, normal_volumes=None,
             volume_validation=None) -> list[str]:
    items: list[str] = []
    if evaluation is None:
        items.append("No labelled evaluation set was available when this card was generated: it carries no "
                     "measured performance beyond the training run's own validation numbers.")
    else:
        if evaluation.used_for_tuning:
            items.append(f"The evaluation set ({evaluation.name}) was used during development (threshold tuning), "
                         "so the metrics at the shipped threshold are optimistic. No independent hold-out set was "
                         "available here.")
    if analysis:
        flagged = [w for w in analysis["subgroup_warnings"] if w["kind"].startswith("low_")]
        small = _small_warnings(analysis)
        if flagged:
            items.append("Subgroups performing below the overall estimate: "
                         + "; ".join(f"{w['factor']} = {w['level']} ({w['kind'].removeprefix('low_')})" for w in flagged)
                         + ".")
        if small:
            levels = sorted({f"{w['factor']} = {w['level']}" for w in small})
            items.append(f"{len(levels)} subgroup(s) too small to estimate sensitivity or specificity: "
                         + ", ".join(levels) + ".")
        for risk in analysis["label_shortcut_risks"]:
            items.append("Possible shortcut: " + risk["message"] + ".")
    items += narrative.get("known_shortcuts", [])
    items += narrative.get("caveats", [])
    if analysis and analysis.get("unit") == "slice":
        items.append("The evaluation is slice-level; the model flags studies. Slice-level sensitivity and "
                     "specificity do not carry over to studies: read the volume-level results.")
    if spec.input_kind == InputKind.VOLUME and normal_volumes is None:
        items.append("No normal-volume report (model_cards/<model>_normal_volumes.json) was found: the study-level "
                     "false-positive behaviour on normal brains is unmeasured in this card.")
    if spec.input_kind == InputKind.VOLUME:
        missed = [f"{key} ({r['target']}: {r['n_flagged']} of {r['n_volumes']} flagged"
                  + (f", {r['n_localised']} with every reported slice in the tumour" if r.get("n_localised") is not None
                     else "") + ")"
                  for key, r in ((volume_validation or {}).get("sources") or {}).items() if not r.get("target_met")]
        if volume_validation is None:
            items.append("No volume-level validation report (model_cards/<model>_volumes.json) was found: study-level "
                         "sensitivity on labelled tumour volumes is unmeasured in this card.")
        elif missed:
            items.append("Experimental: volume-level targets not met on " + "; ".join(missed) + ".")
    if localisation is None:
        items.append("No saliency localisation scores were available: saliency maps are unvalidated for this model.")
    if review is None:
        items.append("No review log was given: agreement with radiologists in deployment is not reported.")
    return items


def sanitise(value):
    """Plain JSON types; NaN/inf -> None; tuples -> lists; numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): sanitise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitise(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return sanitise(value.tolist())
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def card_json(card: dict) -> str:
    """Strict JSON (no NaN)."""
    return json.dumps(card, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


# --- layout: one list of blocks, two renderers ----------------------------------------------------

# Blocks: ("h", level, text) ("p", text) ("ul", [text]) ("table", headers, rows) ("fig", key, caption)
# ("warn", text). Text may use **bold** and `code`; everything else is literal.


def _f(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(value, ci) -> str:
    if value is None:
        return "n/a"
    if not ci or ci[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def blocks(card: dict, figures: dict[str, Path]) -> list[tuple]:
    """The card laid out as blocks (shared by the Markdown and HTML renderers)."""
    d = card["model_details"]
    out: list[tuple] = [("h", 1, f"Model card: {d['name']} {d['version']}")]
    out.append(("p", f"Generated {card['generated']} by `medassist audit` (schema `{card['schema']}`); "
                     "structure after Mitchell et al. 2019, *Model Cards for Model Reporting*. "
                     "The JSON file beside this card holds every number shown here."))
    out += _at_a_glance(card)

    out.append(("h", 2, "Model details"))
    arch = d["architecture"]
    out.append(("table", ["Field", "Value"], [
        ["Name", d["name"]], ["Version", d["version"]], ["Finding", d["finding"]],
        ["Labels", ", ".join(d["labels"])], ["Description", d["description"]],
        ["Architecture", f"`{arch['network']}` {json.dumps(arch['network_args'])}"
                         + (f", {arch['parameters']:,} parameters" if arch.get("parameters") else "")],
        ["Score head", arch["score_head"]],
        ["Preprocessing", ", ".join(f"{k}={v}" for k, v in d["preprocessing"].items())],
        ["Decision threshold", _f(d["threshold"], 6)],
        ["Weights file", f"`{d['weights']}`"],
        ["Weights sha256", f"`{d['weights_sha256']}`"],
        ["Weights check", d["weights_check"] or "not checked"],
        ["Training command", f"`{d['training_command']}`" if d["training_command"] else "n/a"],
        ["Licence", d["licence"] or "n/a"],
        ["Developed by", d["developers"]],
        *([["Citation", d["citation"]]] if d["citation"] else []),
        *([["Contact", d["contact"]]] if d["contact"] else []),
    ]))

    u = card["intended_use"]
    out.append(("h", 2, "Intended use"))
    out += [("h", 3, "Primary uses"), ("ul", u["primary_uses"]), ("h", 3, "Primary users"), ("ul", u["primary_users"]),
            ("h", 3, "Scope"), ("ul", u["scope"]), ("h", 3, "Out-of-scope uses"), ("ul", u["out_of_scope"])]

    fa = card["factors"]
    out.append(("h", 2, "Factors"))
    if fa["relevant"]:
        out += [("p", "Factors that can change this model's performance:"), ("ul", fa["relevant"])]
    out.append(("p", "Evaluated here (subgroup analyses below): "
                + (", ".join(f"`{f}`" for f in fa["evaluated"]) if fa["evaluated"] else "none (no evaluation set).")))
    if fa["notes"]:
        out.append(("ul", fa["notes"]))

    me = card["metrics"]
    ci = me["confidence_intervals"]
    out.append(("h", 2, "Metrics"))
    out.append(("p", f"All threshold metrics use the shipped threshold {_f(me['threshold'], 6)} "
                     f"({me['flag_rule']})."))
    out.append(("ul", [f"**{k}**: {v}" for k, v in me["definitions"].items()]))
    out.append(("p", f"Intervals: {int(ci['confidence_level'] * 100)}% {ci['method']} bootstrap "
                     f"(`{ci['library']}`, paired resampling of cases, {ci['n_resamples']} resamples, seed {ci['seed']}); "
                     f"{ci['note']}."))
    out.append(("p", f"Subgroup warnings: {me['subgroup_warning_rule']}."))

    out += _evaluation_data_blocks(card["evaluation_data"])
    out += _training_blocks(card["training_data"])
    out += _external_blocks(card.get("external_validation"))
    out += _quantitative_blocks(card["quantitative_analyses"], figures)

    out.append(("h", 2, "Ethical considerations"))
    out.append(("ul", card["ethical_considerations"]))
    out.append(("h", 2, "Caveats and recommendations"))
    out.append(("ul", card["caveats_and_recommendations"]))
    return out


def _units(data: dict) -> str:
    return {"slice": "slices"}.get(data.get("unit", "case"), "cases")


def _at_a_glance(card: dict) -> list[tuple]:
    q = card["quantitative_analyses"]
    ev = (q.get("evaluation") or {})
    data = card["evaluation_data"]
    volume_lines = _volume_glance(q.get("volume_level"), (q.get("evaluation") or {}).get("pseudo_volumes"))
    if not ev:
        out: list[tuple] = [("warn", "No labelled evaluation set: this card reports no measured performance.")]
        return out + ([("h", 2, "At a glance"), ("ul", volume_lines)] if volume_lines else [])
    o = ev["overall"]
    slice_level = ev.get("unit") == "slice"
    lines = [f"Evaluated on **{data['name']}**: {data['n']} {_units(data)}, {data['n_positive']} positive "
             f"({_pct(data['prevalence'])})."
             + (" These images were used to tune the threshold: the numbers are optimistic." if data["used_for_tuning"] else ""),
             ("**Slice level**: " if slice_level else "")
             + f"AUROC {_ci(o['auroc'], o['ci']['auroc'])}; at threshold {_f(o['threshold'])}: sensitivity "
             f"{_ci(o['sensitivity'], o['ci']['sensitivity'])}, "
             f"specificity {_ci(o['specificity'], o['ci']['specificity'])}."]
    for c in ev.get("contrasts", []):
        lines.append(f"{'Slice level, ' if slice_level else ''}{c['name']}: AUROC {_ci(c['auroc'], c['ci']['auroc'])}, "
                     f"sensitivity {_ci(c['sensitivity'], c['ci']['sensitivity'])}, "
                     f"specificity {_ci(c['specificity'], c['ci']['specificity'])}.")
    t = (ev.get("type_head") or {}).get("all_typed")
    if t and t["n"]:
        lines.append(f"Type (secondary output): accuracy {_ci(t['accuracy'], t['ci'])} on {t['n']} positive "
                     f"{_units(data)}.")
    lines.append(f"Calibration: ECE {_f(ev['calibration']['ece'])} ({ev['calibration']['n_bins']} bins).")
    n_low = sum(w["kind"].startswith("low_") for w in ev["subgroup_warnings"])
    n_small = len({(w["factor"], w["level"]) for w in _small_warnings(ev)})
    lines.append(f"Subgroup warnings: {n_low} below the overall estimate, {n_small} subgroup(s) too small.")
    lines += volume_lines
    out = [("h", 2, "At a glance"), ("ul", lines)]
    if slice_level:
        out.append(("warn", "These are slice-level numbers; the model flags studies. Tumour-vs-normal discrimination "
                            "across data sources is easy on this data and says little: the same-source contrast and "
                            "the volume-level results (normal volumes) matter more."))
    if data["used_for_tuning"]:
        out.append(("warn", "Evaluation set = the validation split used for tuning the threshold; "
                            "an independent hold-out set was not available."))
    return out


def _labelled_volume_glance(labelled: dict | None) -> list[str]:
    """One line per source of the volume-level validation: flagged of all, localised, target met."""
    if not labelled:
        return []
    parts = []
    for key, r in (labelled.get("sources") or {}).items():
        text = f"{key} {r['n_flagged']} of {r['n_volumes']} flagged"
        if r.get("n_localised") is not None:
            text += f" ({r['n_localised']} with every reported slice in the tumour)"
        if r.get("n_errors"):
            text += f", {r['n_errors']} errors"
        parts.append(text + (" (target met)" if r.get("target_met") else " (target NOT met)"))
    return [f"**Volume level, labelled volumes** (threshold {_f(labelled.get('threshold'))}): " + "; ".join(parts) + "."]


def _volume_glance(volume_level: dict | None, pseudo: dict | None = None) -> list[str]:
    if not volume_level:
        return []
    labelled = _labelled_volume_glance(volume_level.get("labelled_volumes"))
    if labelled:
        return labelled
    nv = volume_level.get("normal_volumes")
    if not nv:
        lines = ["**Volume level**: no normal-volume report: study-level false positives on normal brains unmeasured."]
    else:
        runs = [(name, variant, r) for name, variants in nv.get("volumes", {}).items()
                for variant, r in variants.items() if isinstance(r, dict) and "flagged" in r]
        flagged = sum(bool(r["flagged"]) for _, _, r in runs)
        lines = [f"**Volume level**: {flagged} of {len(runs)} normal volumes (and variants) from other sources "
                 f"flagged ({len(nv.get('volumes', {}))} brains, study rule at the shipped threshold); no labelled "
                 "tumour volumes were available, so study-level sensitivity is unmeasured."]
    pseudo = pseudo or volume_level.get("study_rule_at_training_time")
    positives = (pseudo or {}).get("positives", {})
    if positives:
        lines.append("Pseudo-volumes (a run of up to 8 tumour slices with N normal validation slices around it): "
                     + ", ".join(f"{_pct(r['flagged'])} flagged with "
                                 f"{key.removeprefix('run_plus_').removesuffix('_normal_slices')} normal slices"
                                 for key, r in positives.items())
                     + (": the study rule that keeps normal volumes clear also misses short tumour runs in long series."
                        if min((r["flagged"] for r in positives.values() if r["flagged"] is not None), default=1) < 0.5
                        else "."))
    return lines


def _evaluation_data_blocks(data: dict) -> list[tuple]:
    out: list[tuple] = [("h", 2, "Evaluation data")]
    if not data.get("name"):
        return out + [("p", f"Not available: {data.get('reason', '')}.")]
    out.append(("p", data["description"]))
    out.append(("table", [_units(data).capitalize(), "Positive", "Negative", "Prevalence", "Used for tuning"],
                [[data["n"], data["n_positive"], data["n_negative"], _pct(data["prevalence"]),
                  "yes" if data["used_for_tuning"] else "no"]]))
    for factor, rows in data.get("prevalence_by_factor", {}).items():
        out.append(("h", 4, f"By {factor}"))
        out.append(("table", [factor, "Cases", "Positive", "Share positive"],
                    [[r["level"], r["n"], r["n_positive"], _pct(r["share_positive"])] for r in rows]))
    notes = list(data.get("notes", [])) + list(data.get("note", []))
    if notes:
        out.append(("ul", notes))
    cons = data.get("consistency_with_training_run")
    if cons:
        out.append(("p", "Recomputed against the training run's own validation numbers (same images, same threshold): "
                         + ", ".join(f"{k} {v['training_run']:.3f} -> {v['this_audit']:.3f}"
                                     for k, v in cons["metrics"].items()) + f"; {cons['note']}."))
    return out


def _training_blocks(t: dict) -> list[tuple]:
    out: list[tuple] = [("h", 2, "Training data")]
    out.append(("table", ["Field", "Value"], [["Data", t["description"] or "n/a"], ["Licence", t["licence"] or "n/a"],
                                               ["Reproduce with", f"`{t['training_command']}`" if t["training_command"] else "n/a"],
                                               ["Epochs", t["epochs"]]]))
    if t["notes"]:
        out.append(("ul", t["notes"]))
    rows = []
    for label, m in (("validation split", t["validation_at_training_time"]),
                     ("training subset", t["training_subset_at_training_time"])):
        if m:
            rows.append([label, m.get("n"), m.get("n_positive"), *(_f(m.get(k)) for k in M.METRIC_NAMES)])
    if rows:
        out.append(("p", "Recorded by the training run at the shipped threshold (point estimates, no intervals):"))
        out.append(("table", ["Set", "Cases", "Positive", "AUROC", "Sensitivity", "Specificity", "PPV", "NPV"], rows))
    if t["operating_points_at_training_time"]:
        out.append(("p", "Thresholds chosen at training time: " + ", ".join(
            f"{k} = {_f(v, 4)}" for k, v in t["operating_points_at_training_time"].items()) + "."))
    return out


def _external_blocks(ext: dict | None) -> list[tuple]:
    """The "External validation" section: other-source figures beside the same-source ones."""
    if not ext:
        return []
    out: list[tuple] = [("h", 2, "External validation")]
    if ext["sets"]:
        out.append(("p", "Radiographs from another source than the training data, measured "
                         f"{ext.get('measured', 'at training time')} at the shipped threshold. The set is used to "
                         "choose between candidate models (and, where measured at training time, the score head "
                         "and the threshold), never for training, so these figures flatter a little; independent "
                         "hold-out sets check the model apart."))
        if ext.get("mismatch"):
            out.append(("p", f"**{ext['mismatch']}**"))
    if ext.get("volumes"):
        out.append(("p", "Volumes from sources no training data came from, scored as triage scores them at the "
                         "shipped threshold (details under Volume level)."))
        out.append(("table", ["Set", "Volumes", "Flagged", "Localised", "Target", "Met"], ext["volumes"]))
    for name, regions in ext["sets"].items():
        rows = [_metric_row(f"{name}: {region}", m) for region, m in regions.items()]
        out.append(("table", ["Set: subgroup", *METRIC_HEADERS], rows))
    if ext.get("head_choice"):
        out.append(("table", ["Score head", "Validation AUROC", "External-dev AUROC"],
                    [[k, _f(v["validation_auroc"]), _f(v["external_dev_auroc"])] for k, v in ext["head_choice"].items()]))
    if ext.get("notes"):
        out.append(("ul", ext["notes"]))
    return out


def _metric_row(label: str, m: dict) -> list:
    return [label, m["n"], m["n_positive"], *(_ci(m[k], m["ci"][k]) for k in M.METRIC_NAMES)]


METRIC_HEADERS = ["Cases", "Positive", "AUROC", "Sensitivity", "Specificity", "PPV", "NPV"]


def _quantitative_blocks(q: dict, figures: dict[str, Path]) -> list[tuple]:
    out: list[tuple] = [("h", 2, "Quantitative analyses")]
    ev = q.get("evaluation")
    if ev:
        o = ev["overall"]
        out.append(("h", 3, "Overall, at the shipped threshold"))
        out.append(("table", ["Set", *METRIC_HEADERS], [_metric_row("all", o)]))
        out.append(("p", f"Confusion counts at threshold {_f(o['threshold'], 6)}: TP {o['tp']}, FP {o['fp']}, "
                         f"TN {o['tn']}, FN {o['fn']}."))
        if ev.get("unit") == "slice":
            out.append(("p", "Unit of analysis: one **slice**. Every number in this section is slice-level; the "
                             "model's clinical output is a study score (see *Volume level*)."))
        out += _contrast_blocks(ev.get("contrasts"))
        if "roc" in figures:
            out.append(("fig", "roc", "ROC curve; the red point is the shipped threshold with its intervals."))
        c = ev["calibration"]
        out.append(("h", 3, "Calibration"))
        out.append(("p", f"Expected calibration error {_f(c['ece'])} ({c['n_bins']} equal-width bins); "
                         f"Brier score {_f(c['brier'])}."))
        out.append(("table", ["Score bin", "Cases", "Mean score", "Observed positive rate"],
                    [[f"{b['lower']:.1f}-{b['upper']:.1f}", b["n"], _f(b["mean_score"]), _f(b["observed_rate"])]
                     for b in c["bins"]]))
        if "reliability" in figures:
            out.append(("fig", "reliability", "Reliability diagram: observed rate against mean score per bin."))
        out.append(("h", 3, "Operating points"))
        out.append(("table", ["Target sensitivity", "Threshold", "Sensitivity", "Specificity", "PPV", "NPV"],
                    [[_pct(p["target_sensitivity"]), _f(p["threshold"], 4), *(_f(p[k]) for k in
                      ("sensitivity", "specificity", "ppv", "npv"))] for p in ev["operating_points"]]))
        if ev["training_operating_points_on_this_set"]:
            out.append(("p", "The training run's thresholds applied to this set:"))
            out.append(("table", ["Operating point", "Threshold", "Sensitivity", "Specificity", "PPV", "NPV"],
                        [[p["name"], _f(p["threshold"], 4), *(_f(p[k]) for k in ("sensitivity", "specificity", "ppv", "npv"))]
                         for p in ev["training_operating_points_on_this_set"]]))
        out.append(("h", 3, "Subgroups"))
        if not ev["subgroups"]:
            out.append(("p", "The evaluation set carries no factors to split by."))
        for factor, rows in ev["subgroups"].items():
            out.append(("h", 4, f"By {factor}"))
            out.append(("table", [factor, *METRIC_HEADERS, "Warnings"],
                        [[*_metric_row(r["level"], r), "; ".join(w["message"] for w in r["warnings"]) or "-"]
                         for r in rows]))
        if "subgroups" in figures:
            out.append(("fig", "subgroups", "Sensitivity and specificity by subgroup with their intervals."))
        low = [w for w in ev["subgroup_warnings"] if w["kind"].startswith("low_")]
        for w in low:
            out.append(("warn", f"{w['factor']} = {w['level']}: {w['message']}."))
        if not low and ev["subgroups"]:
            out.append(("p", "No subgroup's interval lies entirely below the overall sensitivity or specificity."))
        out += _type_blocks(ev.get("type_head"))
    else:
        out.append(("p", "No evaluation set: no performance analyses."))
    if "volume_level" in q:
        out += _volume_blocks(q["volume_level"], (ev or {}).get("pseudo_volumes"))
    out += _review_blocks(q.get("human_ai_review"), q.get("review_log_integrity"))
    out += _localisation_blocks(q.get("saliency_localisation"))
    return out


def _contrast_blocks(contrasts: list[dict] | None) -> list[tuple]:
    if not contrasts:
        return []
    out: list[tuple] = [("h", 3, "Positives against each kind of negative")]
    out.append(("table", ["Contrast", *METRIC_HEADERS], [_metric_row(c["name"], c) for c in contrasts]))
    out.append(("ul", [f"**{c['name']}**: {c['description']}." for c in contrasts]))
    return out


def _type_blocks(t: dict | None) -> list[tuple]:
    if not t:
        return []
    out: list[tuple] = [("h", 3, "Type (secondary output)")]
    out.append(("p", f"Among the positive cases, the type with the highest probability ({t['rule']}) against the "
                     "true type; intervals as above (bootstrap over cases)."))
    rows = [[label, r["n"], r["n_correct"], _ci(r["accuracy"], r["ci"])]
            for label, r in (("all positive cases", t["all_typed"]), ("positive cases flagged at the threshold",
                                                                        t["flagged_typed"]))]
    out.append(("table", ["Cases", "Number", "Correct", "Accuracy"], rows))
    a = t["all_typed"]
    out.append(("p", "Confusion matrix, all positive cases (rows: true type, columns: predicted):"))
    out.append(("table", ["True type", *a["labels"], "Recall"],
                [[label, *row, _f(pc["recall"])] for label, row, pc in zip(a["labels"], a["confusion_rows_true"],
                                                                           a["per_class"])]
                + [["Precision", *(_f(pc["precision"]) for pc in a["per_class"]), ""]]))
    return out


def _labelled_volume_blocks(labelled: dict) -> list[tuple]:
    """The volume-level validation per source: a summary table, then one row per volume."""
    out: list[tuple] = [("h", 4, "Labelled volumes by source")]
    out.append(("p", f"From `{labelled.get('source', '')}` (model {labelled.get('model')} {labelled.get('version')}, "
                     f"threshold {_f(labelled.get('threshold'))}): every volume scored as triage scores it. "
                     "\"Localised\": flagged, and every slice the study reports shows tumour in the mask."))
    sources = labelled.get("sources") or {}
    out.append(("table", ["Source / variant", "Volumes", "Flagged", "Localised", "Errors", "Target", "Met"],
                [[key, r["n_volumes"], r["n_flagged"], _f(r.get("n_localised")), r["n_errors"], r["target"],
                  "yes" if r.get("target_met") else "no"] for key, r in sources.items()]))
    rows = [[key, vol["name"], _f(vol.get("score")), "yes" if vol.get("flagged") else "no",
             " ".join(map(str, vol.get("slices") or [])) or "—", _f(vol.get("slices_in_tumour")),
             vol.get("error") or ""]
            for key, r in sources.items() for vol in r.get("volumes", [])]
    out.append(("table", ["Source / variant", "Volume", "Study score", "Flagged", "Reported slices",
                          "Reported slices in tumour", "Error"], rows))
    for name, text in (labelled.get("assumptions") or {}).items():
        out.append(("p", f"{name.replace('_', ' ').capitalize()}: {text}."))
    if labelled.get("mismatch"):
        out.append(("warn", labelled["mismatch"]))
    return out


def _volume_blocks(v: dict, pseudo_here: dict | None) -> list[tuple]:
    out: list[tuple] = [("h", 3, "Volume level")]
    labelled = v.get("labelled_volumes")
    if labelled:
        out.append(("p", "The model scores a study slice by slice and flags it by the study rule. Measured: labelled "
                         "tumour and normal volumes per source, normal brains from other sources, and pseudo-volumes "
                         "assembled from validation slices."))
        out += _labelled_volume_blocks(labelled)
    else:
        out.append(("p", "The model scores a study slice by slice and flags it by the study rule. No labelled tumour "
                         "volumes were available, so study-level sensitivity is not measured; what is measured: normal "
                         "brains from other sources (false positives) and pseudo-volumes assembled from validation "
                         "slices."))
    nv = v.get("normal_volumes")
    out.append(("h", 4, "Normal volumes from other sources"))
    if not nv:
        out.append(("p", "No normal-volume report (`model_cards/<model>_normal_volumes.json`) was found."))
    else:
        rows = [[name, variant, r.get("plane", ""), _f(r.get("spacing_mm"), 1),
                 f"{r.get('n_in_brain')} / {r.get('n_slices')}", _pct(r.get("fraction_slices_flagged")), _f(r.get("max_slice_score")), _f(r.get("study_score")),
                 "yes" if r.get("flagged") else "no"]
                for name, variants in nv.get("volumes", {}).items() for variant, r in variants.items()
                if isinstance(r, dict) and "flagged" in r]
        out.append(("p", f"From `{nv.get('source', '')}` (model {nv.get('model')} {nv.get('version')}, threshold "
                         f"{_f(nv.get('threshold'))}): each brain as given, resampled to thick slices, and "
                         f"skull-stripped. All clear (no volume flagged): {_f(nv.get('all_clear'))}."))
        out.append(("table", ["Volume", "Variant", "Plane", "Spacing (mm)", "Slices in brain / all",
                              "In-brain slices >= threshold", "Max slice score", "Study score", "Flagged"], rows))
        if nv.get("mismatch"):
            out.append(("warn", nv["mismatch"]))
    recorded = v.get("study_rule_at_training_time")
    tables = [("Pseudo-volumes from the slice scores above", pseudo_here)]
    if recorded and _pseudo_rates(recorded) != _pseudo_rates(pseudo_here):
        tables.append(("Pseudo-volumes at training time (recorded by the training run)", recorded))
    for title, pv in tables:
        if not pv:
            continue
        out.append(("h", 4, title))
        out.append(("p", "Negatives: N negative slices drawn at random (300 draws each), share of pseudo-volumes "
                         "flagged by the shipped study rule, by its window alone, and by the plain maximum; threshold "
                         f"{_f(pv.get('threshold'))}, {_f(pv.get('extent_mm'), 0)} mm window. Positives: runs of up to "
                         "8 consecutive tumour slices of one class (about one patient, taken as 7 mm apart) alone and "
                         "with normal slices drawn around them: the share flagged is a rough stand-in for study-level "
                         "sensitivity on short tumour runs."))
        rows = [[key.split("_")[0].lstrip("n"), key.split("_")[1], _pct(r["shipped_rule"]), _pct(r["window_only"]),
                 _pct(r["max_rule"])] for key, r in pv.get("negatives", {}).items()]
        out.append(("table", ["Negative slices", "Spacing", "Flagged (shipped rule)", "Flagged (window only)",
                              "Flagged (plain max)"], rows))
        out.append(("table", ["Positive pseudo-volume", "Runs", "Flagged"],
                    [[key.replace("_", " "), r["n_runs"], _pct(r["flagged"])]
                     for key, r in pv.get("positives", {}).items()]))
        if title.startswith("Pseudo-volumes from") and recorded and len(tables) == 1:
            out.append(("p", "The training run recorded the same shares on its cached inputs "
                             "(`study_rule_calibration` in the model spec)."))
    return out


def _pseudo_rates(pv: dict | None) -> tuple:
    """The flagged shares of a pseudo-volume report, for comparing two of them."""
    if not pv:
        return ()
    return (tuple(sorted((k, tuple(sorted(r.items()))) for k, r in pv.get("negatives", {}).items())),
            tuple(sorted((k, r.get("flagged")) for k, r in pv.get("positives", {}).items())))


def _review_blocks(review: dict | None, chain: list[str] | None) -> list[tuple]:
    out: list[tuple] = [("h", 3, "Human-AI review in deployment")]
    if review is None:
        return out + [("p", "No review log given (`--review-db`).")]
    out.append(("p", f"From `{review['source']}`: {review['rows_in_log']} decision row(s) for this model, "
                     f"{review['current_decisions']} current decision(s) (the latest per series and finding). "
                     "Final call: accept keeps the model's call, reject reverses it, correct means the finding is "
                     "present (unless corrected to a negative)."))
    if chain is not None:
        out.append(("p", "Review log hash chain: verified intact." if not chain else
                    f"Review log hash chain: {len(chain)} problem(s): " + "; ".join(chain[:5])))
        if chain:
            out.append(("warn", "The review log's hash chain does not verify: the figures below may rest on edited rows."))
    rows = [[v, s["n_decided"], s["n_flagged"], _pct(s["accept_rate"]), _pct(s["reject_rate"]), _pct(s["correct_rate"]),
             _f(s["agreement"]), _f(s["cohen_kappa"]), s["n_overrides"], s["n_reviewers"],
             f"{(s['first_decision'] or '')[:10]} to {(s['last_decision'] or '')[:10]}"]
            for v, s in review["by_version"].items()]
    if rows:
        out.append(("table", ["Model version", "Decided", "Flagged", "Accepted", "Rejected", "Corrected",
                              "Agreement", "Cohen's kappa", "Overrides", "Reviewers", "Period"], rows))
        month_rows = [[v, m, s["n_decided"], _pct(s["accept_rate"]), _pct(s["reject_rate"]), _pct(s["correct_rate"]),
                       _f(s["agreement"]), _f(s["cohen_kappa"]), s["n_overrides"]]
                      for v, months in review["by_month"].items() for m, s in months.items()]
        out.append(("h", 4, "Over time"))
        out.append(("table", ["Model version", "Month", "Decided", "Accepted", "Rejected", "Corrected", "Agreement",
                              "Cohen's kappa", "Overrides"], month_rows))
    else:
        out.append(("p", "No decisions recorded for this model."))
    if review["overrides"]:
        out.append(("h", 4, f"Overrides ({len(review['overrides'])})"))
        out.append(("p", "Findings whose radiologist call differs from the model's. These rows carry local study "
                         "identifiers: keep this card inside the institution."))
        out.append(("table", ["Decided at", "Version", "Series UID", "Score", "Kind", "Corrected finding", "Reviewer",
                              "Comment"],
                    [[(o["decided_at"] or "")[:19], o["model_version"], o["series_uid"], _f(o["score"]), o["kind"],
                      o["corrected_finding"] or "", o["reviewer"] or "", o["comment"] or ""] for o in review["overrides"]]))
    return out


# the pointing games that count a peak near the annotation as a hit, and how near
TOLERANT_POINTING = {"pointing_game_tolerant": "within 15 px", "pointing_game_side": "within 5% of the side"}


def _tolerant_cells(pg: dict | None) -> list:
    pg = pg or {}
    return [_ci(pg.get("hit_rate"), pg.get("ci95")), _f(pg.get("baseline_random_peak")),
            _f(pg.get("baseline_centre_peak"))]


def _localisation_blocks(loc: dict | None) -> list[tuple]:
    out: list[tuple] = [("h", 3, "Saliency localisation")]
    if loc is None:
        return out + [("p", "No localisation report (`model_cards/<model>_localisation.json`) was found.")]
    methods = loc.get("methods", {})
    data = loc.get("data", {})
    if data:
        out.append(("p", f"{data.get('dataset', 'Localisation data')}: "
                         + ", ".join(f"{k} {v}" for k, v in data.items() if isinstance(v, (int, float)) and k != "limit")
                         + "."))
    rows = []
    in_support = any("baseline_random_peak_in_support" in (m.get("pointing_game") or {}) for m in methods.values())
    for name, m in methods.items():
        pg, ei = m.get("pointing_game", {}), m.get("energy_inside", {})
        rows.append([name, m.get("n_images"), _ci(pg.get("hit_rate"), pg.get("ci95")), _f(pg.get("baseline_random_peak")),
                     *([_f(pg.get("baseline_random_peak_in_support"))] if in_support else []),
                     _f(pg.get("baseline_centre_peak")), _ci(ei.get("mean"), ei.get("ci95")),
                     _f(ei.get("baseline_uniform_map")),
                     *([_f(ei.get("baseline_uniform_map_in_support"))] if in_support else [])])
    if rows:
        out.append(("table", ["Method", "Images", "Pointing-game hit rate", "Random-peak baseline",
                              *(["Random peak in map support"] if in_support else []), "Centre-peak baseline",
                              "Energy inside", "Uniform-map baseline",
                              *(["Uniform map in support"] if in_support else [])],
                    rows))
    tolerant = [[name, *(cell for key in TOLERANT_POINTING for cell in _tolerant_cells(m.get(key)))]
                for name, m in methods.items() if any(m.get(key) for key in TOLERANT_POINTING)]
    if tolerant:
        out.append(("table", ["Method", *(h for key in TOLERANT_POINTING for h in (
            f"Hit rate, {TOLERANT_POINTING[key]}", "Random-peak baseline", "Centre-peak baseline"))], tolerant))
    group_rows = [[name, group, g.get("n_images"), _ci((g.get("pointing_game") or {}).get("hit_rate"),
                                                        (g.get("pointing_game") or {}).get("ci95")),
                   _f((g.get("pointing_game") or {}).get("baseline_centre_peak")),
                   _f((g.get("pointing_game") or {}).get("baseline_random_peak_in_support",
                                                         (g.get("pointing_game") or {}).get("baseline_random_peak"))),
                   _ci((g.get("energy_inside") or {}).get("mean"), (g.get("energy_inside") or {}).get("ci95"))]
                  for name, m in methods.items() for group, g in (m.get("by_group") or {}).items()]
    if group_rows:
        out.append(("p", "By group (tumour type):"))
        out.append(("table", ["Method", "Group", "Images", "Pointing-game hit rate", "Centre-peak baseline",
                              "Random-peak baseline" + (" in support" if in_support else ""), "Energy inside"],
                    group_rows))
    subsets = [f"{name}: the first {m['limited_to_first']} of the images"
               + (f", options {json.dumps(m['options'])}" if m.get("options") else "")
               + (f" ({_f(m.get('seconds_per_image'), 1)} s per image)"
                  if m.get("seconds_per_image") is not None else "")
               for name, m in methods.items() if m.get("limited_to_first") is not None]
    if subsets:
        out.append(("p", "Method subsets (slow methods): " + "; ".join(subsets) + "."))
    if data.get("order"):
        out.append(("p", f"Image order: {data['order']}."))
    sanity = loc.get("sanity_randomisation") or {}
    if (sanity.get("signed") or {}).get("n"):
        out.append(("p", f"Model-randomisation sanity check ({sanity.get('method', 'gradcam')}, {sanity.get('images')} "
                         f"images): mean Spearman correlation between the trained and re-initialised models' maps "
                         f"{_f(sanity['signed'].get('mean'))} (signed maps); low means the maps depend on what the "
                         "model learned."))
    for key, text in (loc.get("metrics") or {}).items():
        out.append(("p", f"**{key}**: {text}."))
    if loc.get("weights_mismatch"):
        out.append(("warn", loc["weights_mismatch"]))
    return out


# --- renderers -----------------------------------------------------------------------------------

_INLINE = re.compile(r"(\*\*[^*]+\*\*|`[^`]+`|\*[^*]+\*)")


def _md_cell(value) -> str:
    return str(value if value is not None else "").replace("|", "\\|").replace("\n", " ")


def render_markdown(card: dict, figures: dict[str, Path] | None = None, *, base: Path | None = None) -> str:
    """Markdown; figures are linked by their path relative to ``base`` (the card's folder)."""
    figures = figures or {}
    lines: list[str] = []
    for block in blocks(card, figures):
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "warn":
            lines += [f"> **Warning:** {block[1]}", ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
            lines.append("|" + "|".join("---" for _ in headers) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "fig":
            path = figures[block[1]]
            rel = path.name if base is None else Path(_relative(path, base))
            lines += [f"![{block[2]}]({rel})", "", f"*{block[2]}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)


def _inline_html(text: str) -> str:
    parts = []
    for piece in _INLINE.split(str(text)):
        if piece.startswith("**") and piece.endswith("**") and len(piece) > 4:
            parts.append(f"<strong>{html.escape(piece[2:-2])}</strong>")
        elif piece.startswith("`") and piece.endswith("`") and len(piece) > 2:
            parts.append(f"<code>{html.escape(piece[1:-1])}</code>")
        elif piece.startswith("*") and piece.endswith("*") and len(piece) > 2:
            parts.append(f"<em>{html.escape(piece[1:-1])}</em>")
        else:
            parts.append(html.escape(piece))
    return "".join(parts)


def render_html(card: dict, figures: dict[str, Path] | None = None) -> str:
    """A self-contained HTML page; figures embedded as base64 PNG."""
    figures = figures or {}
    title = f"Model card: {card['model_details']['name']} {card['model_details']['version']}"
    body: list[str] = []
    for block in blocks(card, figures):
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{_inline_html(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "warn":
            body.append(f'<div class="warn"><strong>Warning:</strong> {_inline_html(block[1])}</div>')
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c if c is not None else '')}</td>" for c in row) + "</tr>"
                           for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "fig":
            data = base64.b64encode(Path(figures[block[1]]).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_inline_html(block[2])}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{REPORT_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
