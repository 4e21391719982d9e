"""A model card laid out as typed blocks, shared by the Markdown and HTML renderers
(``medassist.audit.card_render``), so the two documents always say the same thing.

``blocks`` turns the card dict (``medassist.audit.card.build_card``) into a list of ``Block``:
``Heading``, ``Paragraph``, ``Bullets``, ``Table``, ``Warning`` and ``Figure``. Text may use
**bold**, *emphasis* and `code`; everything else is literal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medassist import metrics as M
from medassist.audit.card import _ci, _f, _pct, _small_warnings


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    headers: Sequence[Any]
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True)
class Warning:  # noqa: A001 - the card's own kind of block; the builtin is not used here
    text: str


@dataclass(frozen=True)
class Figure:
    """A figure of the card: ``key`` names its file in the renderers' ``figures``."""

    key: str
    caption: str


Block = Heading | Paragraph | Bullets | Table | Warning | Figure


def blocks(card: dict, figures: dict[str, Path]) -> list[Block]:
    """The card laid out as blocks (shared by the Markdown and HTML renderers)."""
    d = card["model_details"]
    out: list[Block] = [Heading(1, f"Model card: {d['name']} {d['version']}")]
    out.append(Paragraph(f"Generated {card['generated']} by `medassist audit` (schema `{card['schema']}`); "
                         "structure after Mitchell et al. 2019, *Model Cards for Model Reporting*. "
                         "The JSON file beside this card holds every number shown here."))
    out += _at_a_glance(card)

    out.append(Heading(2, "Model details"))
    arch = d["architecture"]
    out.append(Table(["Field", "Value"], [
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
    out.append(Heading(2, "Intended use"))
    out += [Heading(3, "Primary uses"), Bullets(u["primary_uses"]), Heading(3, "Primary users"), Bullets(u["primary_users"]),
            Heading(3, "Scope"), Bullets(u["scope"]), Heading(3, "Out-of-scope uses"), Bullets(u["out_of_scope"])]

    fa = card["factors"]
    out.append(Heading(2, "Factors"))
    if fa["relevant"]:
        out += [Paragraph("Factors that can change this model's performance:"), Bullets(fa["relevant"])]
    out.append(Paragraph("Evaluated here (subgroup analyses below): "
                    + (", ".join(f"`{f}`" for f in fa["evaluated"]) if fa["evaluated"] else "none (no evaluation set).")))
    if fa["notes"]:
        out.append(Bullets(fa["notes"]))

    me = card["metrics"]
    ci = me["confidence_intervals"]
    out.append(Heading(2, "Metrics"))
    out.append(Paragraph(f"All threshold metrics use the shipped threshold {_f(me['threshold'], 6)} "
                         f"({me['flag_rule']})."))
    out.append(Bullets([f"**{k}**: {v}" for k, v in me["definitions"].items()]))
    out.append(Paragraph(f"Intervals: {int(ci['confidence_level'] * 100)}% {ci['method']} bootstrap "
                         f"(`{ci['library']}`, paired resampling of cases, {ci['n_resamples']} resamples, seed {ci['seed']}); "
                         f"{ci['note']}."))
    out.append(Paragraph(f"Subgroup warnings: {me['subgroup_warning_rule']}."))

    out += _evaluation_data_blocks(card["evaluation_data"])
    out += _training_blocks(card["training_data"])
    out += _external_blocks(card.get("external_validation"))
    out += _quantitative_blocks(card["quantitative_analyses"], figures)

    out.append(Heading(2, "Ethical considerations"))
    out.append(Bullets(card["ethical_considerations"]))
    out.append(Heading(2, "Caveats and recommendations"))
    out.append(Bullets(card["caveats_and_recommendations"]))
    return out


def _units(data: dict) -> str:
    return {"slice": "slices"}.get(data.get("unit", "case"), "cases")


def _at_a_glance(card: dict) -> list[Block]:
    q = card["quantitative_analyses"]
    ev = (q.get("evaluation") or {})
    data = card["evaluation_data"]
    volume_lines = _volume_glance(q.get("volume_level"), (q.get("evaluation") or {}).get("pseudo_volumes"))
    if not ev:
        out: list[Block] = [Warning("No labelled evaluation set: this card reports no measured performance.")]
        return out + ([Heading(2, "At a glance"), Bullets(volume_lines)] if volume_lines else [])
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
    out = [Heading(2, "At a glance"), Bullets(lines)]
    if slice_level:
        out.append(Warning("These are slice-level numbers; the model flags studies. Tumour-vs-normal discrimination "
                           "across data sources is easy on this data and says little: the same-source contrast and "
                           "the volume-level results (normal volumes) matter more."))
    if data["used_for_tuning"]:
        out.append(Warning("Evaluation set = the validation split used for tuning the threshold; "
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


def _evaluation_data_blocks(data: dict) -> list[Block]:
    out: list[Block] = [Heading(2, "Evaluation data")]
    if not data.get("name"):
        return out + [Paragraph(f"Not available: {data.get('reason', '')}.")]
    out.append(Paragraph(data["description"]))
    out.append(Table([_units(data).capitalize(), "Positive", "Negative", "Prevalence", "Used for tuning"],
            [[data["n"], data["n_positive"], data["n_negative"], _pct(data["prevalence"]),
              "yes" if data["used_for_tuning"] else "no"]]))
    for factor, rows in data.get("prevalence_by_factor", {}).items():
        out.append(Heading(4, f"By {factor}"))
        out.append(Table([factor, "Cases", "Positive", "Share positive"],
                [[r["level"], r["n"], r["n_positive"], _pct(r["share_positive"])] for r in rows]))
    notes = list(data.get("notes", [])) + list(data.get("note", []))
    if notes:
        out.append(Bullets(notes))
    cons = data.get("consistency_with_training_run")
    if cons:
        out.append(Paragraph("Recomputed against the training run's own validation numbers (same images, same threshold): "
                             + ", ".join(f"{k} {v['training_run']:.3f} -> {v['this_audit']:.3f}"
                                         for k, v in cons["metrics"].items()) + f"; {cons['note']}."))
    return out


def _training_blocks(t: dict) -> list[Block]:
    out: list[Block] = [Heading(2, "Training data")]
    out.append(Table(["Field", "Value"], [["Data", t["description"] or "n/a"], ["Licence", t["licence"] or "n/a"],
                                           ["Reproduce with", f"`{t['training_command']}`" if t["training_command"] else "n/a"],
                                           ["Epochs", t["epochs"]]]))
    if t["notes"]:
        out.append(Bullets(t["notes"]))
    rows = []
    for label, m in (("validation split", t["validation_at_training_time"]),
                     ("training subset", t["training_subset_at_training_time"])):
        if m:
            rows.append([label, m.get("n"), m.get("n_positive"), *(_f(m.get(k)) for k in M.METRIC_NAMES)])
    if rows:
        out.append(Paragraph("Recorded by the training run at the shipped threshold (point estimates, no intervals):"))
        out.append(Table(["Set", "Cases", "Positive", "AUROC", "Sensitivity", "Specificity", "PPV", "NPV"], rows))
    if t["operating_points_at_training_time"]:
        out.append(Paragraph("Thresholds chosen at training time: " + ", ".join(
            f"{k} = {_f(v, 4)}" for k, v in t["operating_points_at_training_time"].items()) + "."))
    return out


def _external_blocks(ext: dict | None) -> list[Block]:
    """The "External validation" section: other-source figures beside the same-source ones."""
    if not ext:
        return []
    out: list[Block] = [Heading(2, "External validation")]
    if ext["sets"]:
        out.append(Paragraph("Radiographs from another source than the training data, measured "
                             f"{ext.get('measured', 'at training time')} at the shipped threshold. The set is used to "
                             "choose between candidate models (and, where measured at training time, the score head "
                             "and the threshold), never for training, so these figures flatter a little; independent "
                             "hold-out sets check the model apart."))
        if ext.get("mismatch"):
            out.append(Paragraph(f"**{ext['mismatch']}**"))
    if ext.get("volumes"):
        out.append(Paragraph("Volumes from sources no training data came from, scored as triage scores them at the "
                             "shipped threshold (details under Volume level)."))
        out.append(Table(["Set", "Volumes", "Flagged", "Localised", "Target", "Met"], ext["volumes"]))
    for name, regions in ext["sets"].items():
        rows = [_metric_row(f"{name}: {region}", m) for region, m in regions.items()]
        out.append(Table(["Set: subgroup", *METRIC_HEADERS], rows))
    if ext.get("head_choice"):
        out.append(Table(["Score head", "Validation AUROC", "External-dev AUROC"],
                [[k, _f(v["validation_auroc"]), _f(v["external_dev_auroc"])] for k, v in ext["head_choice"].items()]))
    if ext.get("notes"):
        out.append(Bullets(ext["notes"]))
    return out


def _metric_row(label: str, m: dict) -> list:
    return [label, m["n"], m["n_positive"], *(_ci(m[k], m["ci"][k]) for k in M.METRIC_NAMES)]


METRIC_HEADERS = ["Cases", "Positive", "AUROC", "Sensitivity", "Specificity", "PPV", "NPV"]


def _quantitative_blocks(q: dict, figures: dict[str, Path]) -> list[Block]:
    out: list[Block] = [Heading(2, "Quantitative analyses")]
    ev = q.get("evaluation")
    if ev:
        o = ev["overall"]
        out.append(Heading(3, "Overall, at the shipped threshold"))
        out.append(Table(["Set", *METRIC_HEADERS], [_metric_row("all", o)]))
        out.append(Paragraph(f"Confusion counts at threshold {_f(o['threshold'], 6)}: TP {o['tp']}, FP {o['fp']}, "
                             f"TN {o['tn']}, FN {o['fn']}."))
        if ev.get("unit") == "slice":
            out.append(Paragraph("Unit of analysis: one **slice**. Every number in this section is slice-level; the "
                                 "model's clinical output is a study score (see *Volume level*)."))
        out += _contrast_blocks(ev.get("contrasts"))
        if "roc" in figures:
            out.append(Figure("roc", "ROC curve; the red point is the shipped threshold with its intervals."))
        c = ev["calibration"]
        out.append(Heading(3, "Calibration"))
        out.append(Paragraph(f"Expected calibration error {_f(c['ece'])} ({c['n_bins']} equal-width bins); "
                             f"Brier score {_f(c['brier'])}."))
        out.append(Table(["Score bin", "Cases", "Mean score", "Observed positive rate"],
                [[f"{b['lower']:.1f}-{b['upper']:.1f}", b["n"], _f(b["mean_score"]), _f(b["observed_rate"])]
                 for b in c["bins"]]))
        if "reliability" in figures:
            out.append(Figure("reliability", "Reliability diagram: observed rate against mean score per bin."))
        out.append(Heading(3, "Operating points"))
        out.append(Table(["Target sensitivity", "Threshold", "Sensitivity", "Specificity", "PPV", "NPV"],
                [[_pct(p["target_sensitivity"]), _f(p["threshold"], 4), *(_f(p[k]) for k in
                  ("sensitivity", "specificity", "ppv", "npv"))] for p in ev["operating_points"]]))
        if ev["training_operating_points_on_this_set"]:
            out.append(Paragraph("The training run's thresholds applied to this set:"))
            out.append(Table(["Operating point", "Threshold", "Sensitivity", "Specificity", "PPV", "NPV"],
                    [[p["name"], _f(p["threshold"], 4), *(_f(p[k]) for k in ("sensitivity", "specificity", "ppv", "npv"))]
                     for p in ev["training_operating_points_on_this_set"]]))
        out.append(Heading(3, "Subgroups"))
        if not ev["subgroups"]:
            out.append(Paragraph("The evaluation set carries no factors to split by."))
        for factor, rows in ev["subgroups"].items():
            out.append(Heading(4, f"By {factor}"))
            out.append(Table([factor, *METRIC_HEADERS, "Warnings"],
                    [[*_metric_row(r["level"], r), "; ".join(w["message"] for w in r["warnings"]) or "-"]
                     for r in rows]))
        if "subgroups" in figures:
            out.append(Figure("subgroups", "Sensitivity and specificity by subgroup with their intervals."))
        low = [w for w in ev["subgroup_warnings"] if w["kind"].startswith("low_")]
        for w in low:
            out.append(Warning(f"{w['factor']} = {w['level']}: {w['message']}."))
        if not low and ev["subgroups"]:
            out.append(Paragraph("No subgroup's interval lies entirely below the overall sensitivity or specificity."))
        out += _type_blocks(ev.get("type_head"))
    else:
        out.append(Paragraph("No evaluation set: no performance analyses."))
    if "volume_level" in q:
        out += _volume_blocks(q["volume_level"], (ev or {}).get("pseudo_volumes"))
    out += _review_blocks(q.get("human_ai_review"), q.get("review_log_integrity"))
    out += _localisation_blocks(q.get("saliency_localisation"))
    return out


def _contrast_blocks(contrasts: list[dict] | None) -> list[Block]:
    if not contrasts:
        return []
    out: list[Block] = [Heading(3, "Positives against each kind of negative")]
    out.append(Table(["Contrast", *METRIC_HEADERS], [_metric_row(c["name"], c) for c in contrasts]))
    out.append(Bullets([f"**{c['name']}**: {c['description']}." for c in contrasts]))
    return out


def _type_blocks(t: dict | None) -> list[Block]:
    if not t:
        return []
    out: list[Block] = [Heading(3, "Type (secondary output)")]
    out.append(Paragraph(f"Among the positive cases, the type with the highest probability ({t['rule']}) against the "
                         "true type; intervals as above (bootstrap over cases)."))
    rows = [[label, r["n"], r["n_correct"], _ci(r["accuracy"], r["ci"])]
            for label, r in (("all positive cases", t["all_typed"]), ("positive cases flagged at the threshold",
                                                                        t["flagged_typed"]))]
    out.append(Table(["Cases", "Number", "Correct", "Accuracy"], rows))
    a = t["all_typed"]
    out.append(Paragraph("Confusion matrix, all positive cases (rows: true type, columns: predicted):"))
    out.append(Table(["True type", *a["labels"], "Recall"],
            [[label, *row, _f(pc["recall"])] for label, row, pc in zip(a["labels"], a["confusion_rows_true"],
                                                                       a["per_class"])]
            + [["Precision", *(_f(pc["precision"]) for pc in a["per_class"]), ""]]))
    return out


def _labelled_volume_blocks(labelled: dict) -> list[Block]:
    """The volume-level validation per source: a summary table, then one row per volume."""
    out: list[Block] = [Heading(4, "Labelled volumes by source")]
    out.append(Paragraph(f"From `{labelled.get('source', '')}` (model {labelled.get('model')} {labelled.get('version')}, "
                         f"threshold {_f(labelled.get('threshold'))}): every volume scored as triage scores it. "
                         "\"Localised\": flagged, and every slice the study reports shows tumour in the mask."))
    sources = labelled.get("sources") or {}
    out.append(Table(["Source / variant", "Volumes", "Flagged", "Localised", "Errors", "Target", "Met"],
            [[key, r["n_volumes"], r["n_flagged"], _f(r.get("n_localised")), r["n_errors"], r["target"],
              "yes" if r.get("target_met") else "no"] for key, r in sources.items()]))
    rows = [[key, vol["name"], _f(vol.get("score")), "yes" if vol.get("flagged") else "no",
             " ".join(map(str, vol.get("slices") or [])) or "—", _f(vol.get("slices_in_tumour")),
             vol.get("error") or ""]
            for key, r in sources.items() for vol in r.get("volumes", [])]
    out.append(Table(["Source / variant", "Volume", "Study score", "Flagged", "Reported slices",
                      "Reported slices in tumour", "Error"], rows))
    for name, text in (labelled.get("assumptions") or {}).items():
        out.append(Paragraph(f"{name.replace('_', ' ').capitalize()}: {text}."))
    if labelled.get("mismatch"):
        out.append(Warning(labelled["mismatch"]))
    return out


def _volume_blocks(v: dict, pseudo_here: dict | None) -> list[Block]:
    out: list[Block] = [Heading(3, "Volume level")]
    labelled = v.get("labelled_volumes")
    if labelled:
        out.append(Paragraph("The model scores a study slice by slice and flags it by the study rule. Measured: labelled "
                             "tumour and normal volumes per source, normal brains from other sources, and pseudo-volumes "
                             "assembled from validation slices."))
        out += _labelled_volume_blocks(labelled)
    else:
        out.append(Paragraph("The model scores a study slice by slice and flags it by the study rule. No labelled tumour "
                             "volumes were available, so study-level sensitivity is not measured; what is measured: normal "
                             "brains from other sources (false positives) and pseudo-volumes assembled from validation "
                             "slices."))
    nv = v.get("normal_volumes")
    out.append(Heading(4, "Normal volumes from other sources"))
    if not nv:
        out.append(Paragraph("No normal-volume report (`model_cards/<model>_normal_volumes.json`) was found."))
    else:
        rows = [[name, variant, r.get("plane", ""), _f(r.get("spacing_mm"), 1),
                 f"{r.get('n_in_brain')} / {r.get('n_slices')}", _pct(r.get("fraction_slices_flagged")), _f(r.get("max_slice_score")), _f(r.get("study_score")),
                 "yes" if r.get("flagged") else "no"]
                for name, variants in nv.get("volumes", {}).items() for variant, r in variants.items()
                if isinstance(r, dict) and "flagged" in r]
        out.append(Paragraph(f"From `{nv.get('source', '')}` (model {nv.get('model')} {nv.get('version')}, threshold "
                             f"{_f(nv.get('threshold'))}): each brain as given, resampled to thick slices, and "
                             f"skull-stripped. All clear (no volume flagged): {_f(nv.get('all_clear'))}."))
        out.append(Table(["Volume", "Variant", "Plane", "Spacing (mm)", "Slices in brain / all",
                          "In-brain slices >= threshold", "Max slice score", "Study score", "Flagged"], rows))
        if nv.get("mismatch"):
            out.append(Warning(nv["mismatch"]))
    recorded = v.get("study_rule_at_training_time")
    tables = [("Pseudo-volumes from the slice scores above", pseudo_here)]
    if recorded and _pseudo_rates(recorded) != _pseudo_rates(pseudo_here):
        tables.append(("Pseudo-volumes at training time (recorded by the training run)", recorded))
    for title, pv in tables:
        if not pv:
            continue
        out.append(Heading(4, title))
        out.append(Paragraph("Negatives: N negative slices drawn at random (300 draws each), share of pseudo-volumes "
                             "flagged by the shipped study rule, by its window alone, and by the plain maximum; threshold "
                             f"{_f(pv.get('threshold'))}, {_f(pv.get('extent_mm'), 0)} mm window. Positives: runs of up to "
                             "8 consecutive tumour slices of one class (about one patient, taken as 7 mm apart) alone and "
                             "with normal slices drawn around them: the share flagged is a rough stand-in for study-level "
                             "sensitivity on short tumour runs."))
        rows = [[key.split("_")[0].lstrip("n"), key.split("_")[1], _pct(r["shipped_rule"]), _pct(r["window_only"]),
                 _pct(r["max_rule"])] for key, r in pv.get("negatives", {}).items()]
        out.append(Table(["Negative slices", "Spacing", "Flagged (shipped rule)", "Flagged (window only)",
                          "Flagged (plain max)"], rows))
        out.append(Table(["Positive pseudo-volume", "Runs", "Flagged"],
                [[key.replace("_", " "), r["n_runs"], _pct(r["flagged"])]
                 for key, r in pv.get("positives", {}).items()]))
        if title.startswith("Pseudo-volumes from") and recorded and len(tables) == 1:
            out.append(Paragraph("The training run recorded the same shares on its cached inputs "
                                 "(`study_rule_calibration` in the model spec)."))
    return out


def _pseudo_rates(pv: dict | None) -> tuple:
    """The flagged shares of a pseudo-volume report, for comparing two of them."""
    if not pv:
        return ()
    return (tuple(sorted((k, tuple(sorted(r.items()))) for k, r in pv.get("negatives", {}).items())),
            tuple(sorted((k, r.get("flagged")) for k, r in pv.get("positives", {}).items())))


def _review_blocks(review: dict | None, chain: list[str] | None) -> list[Block]:
    out: list[Block] = [Heading(3, "Human-AI review in deployment")]
    if review is None:
        return out + [Paragraph("No review log given (`--review-db`).")]
    out.append(Paragraph(f"From `{review['source']}`: {review['rows_in_log']} decision row(s) for this model, "
                         f"{review['current_decisions']} current decision(s) (the latest per series and finding). "
                         "Final call: accept keeps the model's call, reject reverses it, correct means the finding is "
                         "present (unless corrected to a negative)."))
    if chain is not None:
        out.append(Paragraph("Review log hash chain: verified intact." if not chain else
                        f"Review log hash chain: {len(chain)} problem(s): " + "; ".join(chain[:5])))
        if chain:
            out.append(Warning("The review log's hash chain does not verify: the figures below may rest on edited rows."))
    rows = [[v, s["n_decided"], s["n_flagged"], _pct(s["accept_rate"]), _pct(s["reject_rate"]), _pct(s["correct_rate"]),
             _f(s["agreement"]), _f(s["cohen_kappa"]), s["n_overrides"], s["n_reviewers"],
             f"{(s['first_decision'] or '')[:10]} to {(s['last_decision'] or '')[:10]}"]
            for v, s in review["by_version"].items()]
    if rows:
        out.append(Table(["Model version", "Decided", "Flagged", "Accepted", "Rejected", "Corrected",
                          "Agreement", "Cohen's kappa", "Overrides", "Reviewers", "Period"], rows))
        month_rows = [[v, m, s["n_decided"], _pct(s["accept_rate"]), _pct(s["reject_rate"]), _pct(s["correct_rate"]),
                       _f(s["agreement"]), _f(s["cohen_kappa"]), s["n_overrides"]]
                      for v, months in review["by_month"].items() for m, s in months.items()]
        out.append(Heading(4, "Over time"))
        out.append(Table(["Model version", "Month", "Decided", "Accepted", "Rejected", "Corrected", "Agreement",
                          "Cohen's kappa", "Overrides"], month_rows))
    else:
        out.append(Paragraph("No decisions recorded for this model."))
    if review["overrides"]:
        out.append(Heading(4, f"Overrides ({len(review['overrides'])})"))
        out.append(Paragraph("Findings whose radiologist call differs from the model's. These rows carry local study "
                             "identifiers: keep this card inside the institution."))
        out.append(Table(["Decided at", "Version", "Series UID", "Score", "Kind", "Corrected finding", "Reviewer",
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


def _localisation_blocks(loc: dict | None) -> list[Block]:
    out: list[Block] = [Heading(3, "Saliency localisation")]
    if loc is None:
        return out + [Paragraph("No localisation report (`model_cards/<model>_localisation.json`) was found.")]
    methods = loc.get("methods", {})
    data = loc.get("data", {})
    if data:
        out.append(Paragraph(f"{data.get('dataset', 'Localisation data')}: "
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
        out.append(Table(["Method", "Images", "Pointing-game hit rate", "Random-peak baseline",
                          *(["Random peak in map support"] if in_support else []), "Centre-peak baseline",
                          "Energy inside", "Uniform-map baseline",
                          *(["Uniform map in support"] if in_support else [])],
                rows))
    tolerant = [[name, *(cell for key in TOLERANT_POINTING for cell in _tolerant_cells(m.get(key)))]
                for name, m in methods.items() if any(m.get(key) for key in TOLERANT_POINTING)]
    if tolerant:
        out.append(Table(["Method", *(h for key in TOLERANT_POINTING for h in (
            f"Hit rate, {TOLERANT_POINTING[key]}", "Random-peak baseline", "Centre-peak baseline"))], tolerant))
    group_rows = [[name, group, g.get("n_images"), _ci((g.get("pointing_game") or {}).get("hit_rate"),
                                                        (g.get("pointing_game") or {}).get("ci95")),
                   _f((g.get("pointing_game") or {}).get("baseline_centre_peak")),
                   _f((g.get("pointing_game") or {}).get("baseline_random_peak_in_support",
                                                         (g.get("pointing_game") or {}).get("baseline_random_peak"))),
                   _ci((g.get("energy_inside") or {}).get("mean"), (g.get("energy_inside") or {}).get("ci95"))]
                  for name, m in methods.items() for group, g in (m.get("by_group") or {}).items()]
    if group_rows:
        out.append(Paragraph("By group (tumour type):"))
        out.append(Table(["Method", "Group", "Images", "Pointing-game hit rate", "Centre-peak baseline",
                          "Random-peak baseline" + (" in support" if in_support else ""), "Energy inside"],
                group_rows))
    subsets = [f"{name}: the first {m['limited_to_first']} of the images"
               + (f", options {json.dumps(m['options'])}" if m.get("options") else "")
               + (f" ({_f(m.get('seconds_per_image'), 1)} s per image)"
                  if m.get("seconds_per_image") is not None else "")
               for name, m in methods.items() if m.get("limited_to_first") is not None]
    if subsets:
        out.append(Paragraph("Method subsets (slow methods): " + "; ".join(subsets) + "."))
    if data.get("order"):
        out.append(Paragraph(f"Image order: {data['order']}."))
    sanity = loc.get("sanity_randomisation") or {}
    if (sanity.get("signed") or {}).get("n"):
        out.append(Paragraph(f"Model-randomisation sanity check ({sanity.get('method', 'gradcam')}, {sanity.get('images')} "
                             f"images): mean Spearman correlation between the trained and re-initialised models' maps "
                             f"{_f(sanity['signed'].get('mean'))} (signed maps); low means the maps depend on what the "
                             "model learned."))
    for key, text in (loc.get("metrics") or {}).items():
        out.append(Paragraph(f"**{key}**: {text}."))
    if loc.get("weights_mismatch"):
        out.append(Warning(loc["weights_mismatch"]))
    return out

