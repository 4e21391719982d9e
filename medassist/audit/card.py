"""Model cards (Mitchell et al. 2019, "Model Cards for Model Reporting"): the card as one JSON-able dict.

``build_card`` assembles the dict with the paper's sections: model details, intended use,
factors, metrics, evaluation data, training data, quantitative analyses, ethical considerations,
caveats and recommendations; ``card_json`` is its machine-readable copy. The numbers come from
``medassist.audit.card_analysis``; ``medassist.audit.card_layout`` lays the dict out as typed
blocks and ``medassist.audit.card_render`` renders them as Markdown and HTML, so the two documents
always say the same thing.

The narrative parts (intended use, out-of-scope uses, ethical considerations, known shortcuts)
come from ``model_cards/templates/<model>.yaml`` when present, else ``default.yaml``, else the
generic text below; everything numeric comes from the evaluation.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from medassist import metrics as M
from medassist.audit.card_analysis import AuditOptions
from medassist.audit.evaluation import EvalSet
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


# --- number formats (the card's table rows and the layout) -------------------------------------


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

