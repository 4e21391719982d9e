"""``medassist audit``: regenerate the model cards of the shipped models in one call.

For each model: pick the evaluation set (the one given, else the model's default), score it,
compute metrics with intervals, calibration, operating points and subgroups, read the review log
and the saliency localisation report when present, and write ``<model>.json``, ``<model>.md``,
``<model>.html`` and the figures into ``out_dir``.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from medassist.atomic import write_atomic
from medassist.audit import plots
from medassist.audit.agreement import review_agreement, verify_review_log
from medassist.audit.card import (
    REPO_ROOT,
    TEMPLATE_DIRS,
    build_card,
    card_json,
    load_narrative,
    sanitise,
)
from medassist.audit.card_analysis import AuditOptions, analyse
from medassist.audit.card_render import render_html, render_markdown
from medassist.audit.evaluation import (
    EvalSet,
    eval_from_brain_tumor,
    eval_from_dicom,
    eval_from_fracatlas,
    eval_from_images,
    eval_from_scores,
    find_brain_tumor,
    find_fracatlas,
    is_brain_tumor_model,
    is_fracatlas_model,
)
from medassist.errors import MedassistError
from medassist.models.spec import InputKind, ModelSpec

log = logging.getLogger(__name__)

# "auto": each model's own default set (FracAtlas validation for FracAtlas models, the brain-tumour
# validation split for the tumour model); the others name one default set, "none" evaluates nothing.
DEFAULT_EVALS = ("auto", "fracatlas-validation", "brain-tumor-validation", "none")

__all__ = ["run_audit", "verify_review_log", "audit_model"]


def run_audit(
    *,
    models: list[str] | None = None,
    eval_images: str | Path | None = None,
    eval_labels: str | Path | None = None,
    eval_dicom: str | Path | None = None,
    review_db: str | Path | None = None,
    out_dir: str | Path = "model_cards",
    default_eval: str | None = "auto",
    eval_scores: str | Path | None = None,
    weights_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 16,
    options: AuditOptions | None = None,
    eval_limit: int | None = None,
    data_root: str | Path | None = None,
) -> list[Path]:
    """Write the model cards of ``models`` (default: every shipped model); return the files written.

    Evaluation set, first that applies: ``eval_images`` + ``eval_labels`` (image files and a CSV with
    ``image``/``path``, ``label`` and factor columns); ``eval_dicom`` + ``eval_labels`` (labels keyed by
    ``series_uid``; sex, age band, manufacturer from the headers); ``eval_scores`` (a CSV with
    ``label``, ``score`` and factor columns, scored beforehand); else ``default_eval``: "auto" (the
    default) evaluates each model on its own default set when its data is found: a FracAtlas-trained
    model on the FracAtlas validation split, the tumour model on the brain-tumour validation split
    (slices, through its own slice preprocessing); "fracatlas-validation" or
    "brain-tumor-validation" only that set, "none" (or None) nothing. ``data_root``: the default
    set's data folder, instead of looking for it. An explicit evaluation set applies to one model
    only: name it in ``models`` when several are shipped; images and series are scored through the
    model's own input path (its family, ``medassist.families.family_for``).

    ``review_db``: the review stage's decisions SQLite; ``eval_limit`` caps the default set (smoke runs).
    """
    from medassist.models.registry import WEIGHTS_DIR, shipped_specs

    options = options or AuditOptions()
    weights_dir = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    out_dir = Path(out_dir)
    explicit = _check_eval_args(eval_images, eval_labels, eval_dicom, eval_scores)
    if default_eval not in (None, *DEFAULT_EVALS):
        raise MedassistError(f"unknown default evaluation {default_eval!r}; known: {', '.join(DEFAULT_EVALS)}")

    shipped = {s.name: s for s in shipped_specs(weights_dir)}
    if models:
        unknown = [m for m in models if m not in shipped]
        if unknown:
            raise MedassistError(f"unknown model {unknown[0]!r}; shipped models: {', '.join(sorted(shipped)) or 'none'}")
        specs = [shipped[m] for m in models]
    else:
        specs = list(shipped.values())
    if not specs:
        raise MedassistError(f"{weights_dir}: no shipped models (no model spec JSON files there)")
    if explicit and len(specs) > 1:
        raise MedassistError(
            f"an evaluation set applies to one model; {len(specs)} are shipped ({', '.join(s.name for s in specs)}): "
            "choose one with --model")
    if review_db is not None and not Path(review_db).is_file():
        raise MedassistError(f"{review_db}: review database not found")
    if data_root is not None and not Path(data_root).is_dir():
        raise MedassistError(f"{data_root}: data folder not found")

    written: list[Path] = []
    for spec in specs:
        written += audit_model(
            spec, out_dir=out_dir, eval_images=eval_images, eval_labels=eval_labels, eval_dicom=eval_dicom,
            eval_scores=eval_scores, default_eval=default_eval, review_db=review_db, weights_dir=weights_dir,
            device=device, batch_size=batch_size, options=options, eval_limit=eval_limit, data_root=data_root,
        )
    return written


def _check_eval_args(images, labels, dicom, scores) -> bool:
    given = [name for name, v in (("--images", images), ("--dicom", dicom), ("--scores", scores)) if v is not None]
    if len(given) > 1:
        raise MedassistError(f"give one evaluation set, not {' and '.join(given)}")
    if (images is not None or dicom is not None) and labels is None:
        raise MedassistError(f"{given[0]} needs --labels CSV")
    if labels is not None and images is None and dicom is None:
        raise MedassistError("--labels goes with --images DIR or --dicom DIR")
    return bool(given)


def audit_model(
    spec: ModelSpec,
    *,
    out_dir: Path,
    eval_images=None,
    eval_labels=None,
    eval_dicom=None,
    eval_scores=None,
    default_eval: str | None = "auto",
    review_db=None,
    weights_dir: Path,
    device: str = "auto",
    batch_size: int = 16,
    options: AuditOptions = AuditOptions(),
    eval_limit: int | None = None,
    data_root=None,
) -> list[Path]:
    """One model's card: evaluate, analyse, render; returns the files written."""
    from medassist.models.registry import choose_device, load_model, verify_weights

    weights_check = ""
    try:
        verify_weights(spec, weights_dir)
        weights_check = "sha256 verified against the weights file when this card was generated"
    except MedassistError as exc:
        weights_check = f"NOT verified: {exc}"

    @functools.cache
    def model_loader():
        return load_model(spec, choose_device(device), weights_dir)

    evaluation, problem = _evaluation_for(spec, model_loader, eval_images=eval_images, eval_labels=eval_labels,
                                          eval_dicom=eval_dicom, eval_scores=eval_scores, default_eval=default_eval,
                                          batch_size=batch_size, eval_limit=eval_limit, data_root=data_root)
    analysis = None
    if evaluation is not None:
        analysis = analyse(evaluation, spec.threshold, options,
                           training_operating_points=(spec.validation or {}).get("operating_points"))

    review = chain = None
    if review_db is not None:
        review = review_agreement(review_db, spec.name, negative_labels=spec.labels[:1])
        chain = verify_review_log(review_db)

    localisation = _localisation(spec, out_dir)
    normal_volumes = _report(spec, out_dir, "normal_volumes") if spec.input_kind == InputKind.VOLUME else None
    volume_validation = _report(spec, out_dir, "volumes") if spec.input_kind == InputKind.VOLUME else None
    external_report = _report(spec, out_dir, "external") if spec.input_kind != InputKind.VOLUME else None
    narrative = load_narrative(spec.name, (out_dir / "templates", *TEMPLATE_DIRS))
    card = build_card(spec, evaluation=evaluation, analysis=analysis, review=review, review_chain_problems=chain,
                      localisation=localisation, narrative=narrative, options=options, weights_check=weights_check,
                      evaluation_problem=problem, normal_volumes=normal_volumes,
                      volume_validation=volume_validation, external_report=external_report)

    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    title = f"{spec.name} {spec.version}" + (f" on {evaluation.name}" if evaluation else "")
    if analysis is not None:
        overall = analysis["overall"]
        if analysis["roc"]["fpr"]:
            figures["roc"] = plots.plot_roc(analysis["roc"], overall, analysis["operating_points"],
                                            out_dir / f"{spec.name}_roc.png", title)
        if analysis["calibration"]["bins"]:
            figures["reliability"] = plots.plot_reliability(analysis["calibration"],
                                                            out_dir / f"{spec.name}_reliability.png", title)
        if analysis["subgroups"]:
            figures["subgroups"] = plots.plot_subgroups(analysis["subgroups"], overall,
                                                        out_dir / f"{spec.name}_subgroups.png", title)
    card = sanitise(card)
    paths = [
        _write(out_dir / f"{spec.name}.json", card_json(card)),
        _write(out_dir / f"{spec.name}.md", render_markdown(card, figures, base=out_dir)),
        _write(out_dir / f"{spec.name}.html", render_html(card, figures)),
    ]
    log.info("audit: wrote the model card of %s %s to %s", spec.name, spec.version, out_dir)
    return paths + list(figures.values())


def _evaluation_for(spec, model_loader, *, eval_images, eval_labels, eval_dicom, eval_scores, default_eval,
                    batch_size, eval_limit, data_root=None) -> tuple[EvalSet | None, str]:
    if eval_images is not None:
        return eval_from_images(spec, model_loader, eval_images, eval_labels, batch_size=batch_size), ""
    if eval_dicom is not None:
        return eval_from_dicom(spec, model_loader, eval_dicom, eval_labels, batch_size=batch_size), ""
    if eval_scores is not None:
        return eval_from_scores(spec, eval_scores), ""
    if default_eval in (None, "none"):
        return None, "no evaluation set given"
    defaults = {  # name: (applies to the model, finder, evaluator, what the data is, where it was looked for)
        "fracatlas-validation": (is_fracatlas_model, find_fracatlas, eval_from_fracatlas, "the FracAtlas data",
                                 "$MEDASSIST_DATA/fracatlas, the training config's data root and ../shared/data"),
        "brain-tumor-validation": (is_brain_tumor_model, find_brain_tumor, eval_from_brain_tumor,
                                   "the brain-tumour data",
                                   "$MEDASSIST_DATA/brain_tumor, the training config's data root and ../shared/data"),
    }
    names = list(defaults) if default_eval == "auto" else [default_eval]
    name = next((n for n in names if defaults[n][0](spec)), None)
    if name is None:
        return None, f"no evaluation set given, and {spec.name} has no default one"
    _, finder, evaluator, what, where = defaults[name]
    root = Path(data_root) if data_root is not None else finder(spec)
    if root is None:
        log.warning("audit: %s not found; the card of %s carries no evaluation", what, spec.name)
        return None, f"no evaluation set given, and {what} (default for this model) was not found (looked in {where})"
    return evaluator(spec, model_loader, root, batch_size=batch_size, limit=eval_limit), ""


def _report(spec: ModelSpec, out_dir: Path, kind: str) -> dict | None:
    """A JSON report ``<model>_<kind>.json`` (e.g. the tumour model's normal volumes) from ``out_dir``
    or model_cards/, with a note when it was made for another version or threshold."""
    for candidate in (out_dir / f"{spec.name}_{kind}.json", REPO_ROOT / "model_cards" / f"{spec.name}_{kind}.json"):
        if candidate.is_file():
            try:
                report = sanitise(json.loads(candidate.read_text()))
            except (OSError, ValueError) as exc:
                log.warning("audit: %s unreadable (%s); left out of the card", candidate, exc)
                return None
            report["source"] = _shown_path(candidate)
            made_for = (report.get("version"), report.get("threshold"))
            if made_for[0] not in (None, spec.version) or (
                    made_for[1] is not None and abs(float(made_for[1]) - float(spec.threshold)) > 1e-6):
                report["mismatch"] = (f"This report was made for version {made_for[0]} at threshold {made_for[1]}, "
                                      f"not the shipped {spec.version} at {spec.threshold}: regenerate it.")
            return report
    return None


def _localisation(spec: ModelSpec, out_dir: Path) -> dict | None:
    """The explain stage's localisation report for this model, if one exists."""
    for candidate in (out_dir / f"{spec.name}_localisation.json",
                      REPO_ROOT / "model_cards" / f"{spec.name}_localisation.json"):
        if candidate.is_file():
            try:
                report = json.loads(candidate.read_text())
            except (OSError, ValueError) as exc:
                log.warning("audit: %s unreadable (%s); left out of the card", candidate, exc)
                return None
            report = sanitise(report)
            report["source"] = str(candidate)
            sha = (report.get("model") or {}).get("sha256")
            if sha and sha != spec.sha256:
                report["weights_mismatch"] = (
                    f"These localisation scores were computed for weights {sha[:12]}..., not the shipped "
                    f"{spec.sha256[:12]}...: regenerate them.")
            return report
    return None


def _shown_path(path: Path) -> str:
    """A path as a card shows it: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _write(path: Path, text: str) -> Path:
    """Write atomically (a reader never sees half a card)."""
    return write_atomic(path, text)
