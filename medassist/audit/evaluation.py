"""Labelled evaluation sets for the audit: cases with a label, the model's score and their factors.

Four sources, one result type (``EvalSet``):

- image files + a labels CSV (``image`` or ``path`` column, ``label``, any factor columns);
- a DICOM folder + a labels CSV keyed by ``series_uid``: sex, age band and manufacturer come from
  the headers, any other CSV columns are factors too;
- the FracAtlas validation split (the default for the fracture model);
- the brain-tumour validation split (the default for the tumour model): slices, with the tumour
  type, the data source and the same-source mirror negatives training validated on;
- a CSV of scores already computed (``label``, ``score``, factor columns), e.g. a triage worklist
  joined with labels.

Scoring follows the model's own inference path, its family's (``medassist.families.family_for``,
by ``spec.input_kind``; ``image_case``, ``series_case``): for radiograph models image files go
through ``prepare_2d`` and DICOM series are prepared as triage prepares them; for volume models
(brain MRI) an image file is one slice through ``tumor.prepare_slice`` and a DICOM series is scored
as triage scores it (``tumor.score_prepared_volume``: slice by slice, aggregated to a study score).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medassist.datamodel import age_band as datamodel_age_band
from medassist.errors import MedassistError
from medassist.families import family_for
from medassist.models import splits
from medassist.models.heads import score_probability
from medassist.models.spec import ModelSpec

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

IMAGE_COLUMNS = ("image", "path", "source_image", "image_id", "file")
ID_COLUMNS = frozenset(IMAGE_COLUMNS) | {"series_uid", "study_uid", "patient_id", "accession", "label", "score", "id"}
POSITIVE = frozenset({"1", "true", "yes", "y", "positive", "pos"})
NEGATIVE = frozenset({"0", "false", "no", "n", "negative", "neg"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})


@dataclass
class EvalSet:
    """A labelled, scored evaluation set and what it is.

    ``used_for_tuning``: the model's threshold (or other choices) were made on these cases, so the
    metrics are optimistic; the card says so.

    ``unit``: what one case is ("case": an image or a study; "slice": one slice of a volume model,
    whose clinical unit is the study). ``label_factors``: factors that refine the label (tumour
    class) rather than describe the case: not label shortcuts. ``contrasts``: named subsets
    (name -> (description, boolean mask)) analysed on their own, e.g. positives against one kind of
    negative. ``type_labels``/``type_true``/``type_probs``: a secondary categorical output (tumour
    type): the true class index per case (-1 where it does not apply) and the predicted
    probabilities (n, k). ``extras``: further JSON-able analyses made with the set (tumour:
    ``pseudo_volumes``, the study rule on pseudo-volumes of these slices).
    """

    name: str
    description: str
    ids: list[str]
    labels: np.ndarray
    scores: np.ndarray
    factors: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""
    used_for_tuning: bool = False
    notes: list[str] = field(default_factory=list)
    unit: str = "case"
    label_factors: tuple[str, ...] = ()
    contrasts: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    type_labels: tuple[str, ...] = ()
    type_true: np.ndarray | None = None
    type_probs: np.ndarray | None = None
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels).astype(int)
        self.scores = np.asarray(self.scores, dtype=float)
        n = len(self.labels)
        if not (len(self.ids) == n == len(self.scores)):
            raise ValueError("ids, labels and scores differ in length")
        for name, values in self.factors.items():
            if len(values) != n:
                raise ValueError(f"factor {name!r} has {len(values)} values for {n} cases")
        for name, (_, mask) in self.contrasts.items():
            if np.asarray(mask).shape != (n,):
                raise ValueError(f"contrast {name!r} has a mask of shape {np.shape(mask)} for {n} cases")
        if self.type_probs is not None:
            self.type_true = np.asarray(self.type_true).astype(int)
            self.type_probs = np.asarray(self.type_probs, dtype=float)
            if self.type_true.shape != (n,) or self.type_probs.shape != (n, len(self.type_labels)):
                raise ValueError("type_true / type_probs do not match the cases and type_labels")

    def summary(self) -> dict:
        """JSON-able description (no per-case identifiers)."""
        n, n_pos = len(self.labels), int(self.labels.sum())
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "n": n,
            "n_positive": n_pos,
            "n_negative": n - n_pos,
            "prevalence": n_pos / n if n else None,
            "used_for_tuning": self.used_for_tuning,
            "unit": self.unit,
            "factors": {k: _level_counts(v) for k, v in self.factors.items()},
            "notes": list(self.notes),
        }


def _level_counts(values: Sequence[str]) -> dict[str, int]:
    levels: dict[str, int] = {}
    for v in values:
        levels[v] = levels.get(v, 0) + 1
    return dict(sorted(levels.items(), key=lambda kv: (-kv[1], kv[0])))


# --- labels CSV ------------------------------------------------------------------------------------


def parse_label(value: str, spec: ModelSpec | None = None, *, where: str = "") -> int:
    """0/1, yes/no, true/false, or the spec's label names (labels[0] negative, others positive)."""
    text = str(value).strip().lower()
    if text in POSITIVE:
        return 1
    if text in NEGATIVE:
        return 0
    if spec is not None:
        names = [n.lower() for n in spec.labels]
        if text in names:
            return int(names.index(text) != 0)
        if text == spec.finding.lower():
            return 1
    raise MedassistError(f"{where}: label {value!r} is not 0/1 (or one of the model's labels)")


def age_band(age: str | float | int | None) -> str:
    """A DICOM age string ('034Y', '006M', '012W', '003D') or a number of years -> an age band
    (``medassist.datamodel.age_band``, the worklist's rule), "unknown" when missing or malformed."""
    return datamodel_age_band(age) or "unknown"


def _factor_value(column: str, value: str) -> str:
    value = (value or "").strip()
    if not value:
        return "unknown"
    if column.lower() == "hardware" and value in ("0", "1"):
        return "present" if value == "1" else "absent"
    if column.lower() == "sex":
        return {"M": "male", "F": "female", "O": "other"}.get(value.upper(), value)
    return value


def read_labels_csv(path: str | Path) -> tuple[list[dict], list[str]]:
    """The rows of a labels CSV and its header; a missing file or label column is a MedassistError."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
            header = [h.strip() for h in (reader.fieldnames or [])]
    except OSError as exc:
        raise MedassistError(f"{path}: cannot read labels CSV ({exc})") from exc
    if "label" not in header:
        raise MedassistError(f"{path}: labels CSV needs a 'label' column (found: {', '.join(header) or 'none'})")
    return rows, header


def _csv_factors(rows: list[dict], header: list[str]) -> dict[str, list[str]]:
    """Every non-identifier column is a factor; a numeric 'age' column becomes 'age_band'."""
    factors: dict[str, list[str]] = {}
    for column in header:
        if column.lower() in ID_COLUMNS or not column:
            continue
        if column.lower() == "age":
            factors["age_band"] = [age_band(r.get(column)) for r in rows]
        else:
            factors[column] = [_factor_value(column, r.get(column, "")) for r in rows]
    return factors


# --- scoring -------------------------------------------------------------------------------------


Prepared = tuple  # (inputs (k, 1, S, S) tensor, aggregate(scores (k,)) -> float), or a float score


def score_cases(model, preparers: Sequence[Callable[[], Prepared | float]], *, batch_size: int = 16
                ) -> tuple[np.ndarray, list[str]]:
    """One score per case: each preparer gives its network inputs and how to combine their scores,
    or (a case its model's input path scores by itself, as a volume) the score.

    Inputs of several cases are scored together, ``batch_size`` at a time. A case that cannot be
    read or prepared (MedassistError, ValueError) gets a NaN score and its message is returned.
    """
    import torch

    scores = np.full(len(preparers), np.nan)
    errors: list[str] = []
    for start in range(0, len(preparers), batch_size):
        prepared: list[tuple[int, object, Callable]] = []
        for i in range(start, min(start + batch_size, len(preparers))):
            try:
                result = preparers[i]()
            except (MedassistError, ValueError) as exc:
                errors.append(str(exc))
                continue
            if isinstance(result, (float, int)):
                scores[i] = float(result)
            else:
                inputs, aggregate = result
                prepared.append((i, inputs, aggregate))
        if prepared:
            out = torch.cat([model.scores(chunk) for chunk in torch.cat([p[1] for p in prepared]).split(batch_size)])
            offset = 0
            for i, inputs, aggregate in prepared:
                scores[i] = float(aggregate(out[offset : offset + len(inputs)]))
                offset += len(inputs)
        log.info("audit: scored %d/%d", min(start + batch_size, len(preparers)), len(preparers))
    return scores, errors


def image_case(path: Path, spec: ModelSpec) -> Callable[[], Prepared]:
    """An image file (JPEG/PNG) as the model's family reads one 2D image (grey 0..1 ->
    ``ModelFamily.prepare_plane``: radiographs ``prepare_2d``, brain MR ``tumor.prepare_slice``)
    -> one input, its score the case's."""
    family = family_for(spec)

    def prepare() -> Prepared:
        from medassist.ingest.images import load_jpeg_grayscale

        image = load_jpeg_grayscale(path).astype(np.float32) / 255.0
        return family.prepare_plane(image, spec.preprocess).input[None], lambda s: s[0]

    return prepare


def series_case(series, spec: ModelSpec, model_loader) -> Callable[[], Prepared | float]:
    """A DICOM series prepared exactly as triage prepares it for this model (its family): inputs
    batched with other cases' and aggregated (radiographs), or the study scored whole by the
    family (brain MR: ``tumor.score_prepared_volume``, in-brain slices, study aggregation)."""
    family = family_for(spec)

    def prepare() -> Prepared:
        prepared = family.prepare(series.load(), spec)
        return prepared.inputs, lambda s: family.aggregate(s, prepared.slices).score

    def score() -> float:
        model = model_loader()
        return float(family.score_study(model.network, spec, family.prepare(series.load(), spec)).score)

    return prepare if family.batches_across_studies else score


def _drop_unscored(rows: list, scores: np.ndarray, errors: list[str], notes: list[str]) -> tuple[list, np.ndarray]:
    """Leave out cases whose image could not be scored, with a note."""
    ok = np.isfinite(scores)
    if not ok.all():
        notes.append(f"{int((~ok).sum())} case(s) could not be read and are left out (first: {errors[0]})")
        log.warning("audit: %s", notes[-1])
    if not ok.any():
        raise MedassistError(f"no evaluation image could be scored ({errors[0]})")
    return [r for r, keep in zip(rows, ok) if keep], scores[ok]


def _index_images(root: Path) -> dict[str, Path]:
    """File name (and stem) -> path for every image under ``root`` (first found wins)."""
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            index.setdefault(path.name, path)
            index.setdefault(path.stem, path)
    return index


def eval_from_images(spec: ModelSpec, model_loader, images_dir: str | Path, labels_csv: str | Path,
                     *, batch_size: int = 16) -> EvalSet:
    """Image files (JPEG/PNG...) named by the labels CSV's ``image`` or ``path`` column, scored now."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise MedassistError(f"{images_dir}: not a folder of images")
    rows, header = read_labels_csv(labels_csv)
    column = next((c for c in IMAGE_COLUMNS if c in header), None)
    if column is None:
        raise MedassistError(f"{labels_csv}: labels CSV needs an 'image' or 'path' column")
    index: dict[str, Path] | None = None
    paths, kept, missing = [], [], []
    for i, row in enumerate(rows):
        name = row[column]
        candidate = Path(name) if Path(name).is_absolute() else images_dir / name
        if not candidate.is_file():
            index = _index_images(images_dir) if index is None else index
            candidate = index.get(Path(name).name) or index.get(name)
        if candidate is None:
            missing.append(name)
            continue
        paths.append(candidate)
        kept.append(i)
    if missing:
        log.warning("audit: %d labelled image(s) not found under %s (first: %s)", len(missing), images_dir, missing[0])
    if not kept:
        raise MedassistError(f"{labels_csv}: none of the labelled images were found under {images_dir}")
    rows = [rows[i] for i in kept]
    labels = [parse_label(r["label"], spec, where=f"{labels_csv} ({r[column]})") for r in rows]
    notes = [f"{len(missing)} labelled image(s) were not found and are left out"] if missing else []
    unit = family_for(spec).case_unit
    if unit == "slice":
        notes.append(f"Model {spec.name} reads volumes: each image file is scored as one slice "
                     "(tumor.prepare_slice), without the study aggregation triage applies to a series.")
    scores, errors = score_cases(model_loader(), [image_case(p, spec) for p in paths],
                                 batch_size=batch_size)
    ok = np.isfinite(scores)
    rows, scores = _drop_unscored(rows, scores, errors, notes)
    labels = [v for v, keep in zip(labels, ok) if keep]
    return EvalSet(
        name=f"images in {images_dir.name}",
        description=f"{len(rows)} labelled image files from {images_dir} (labels: {Path(labels_csv).name})",
        ids=[r[column] for r in rows], labels=np.array(labels), scores=scores,
        factors=_csv_factors(rows, header), source=str(images_dir), notes=notes, unit=unit,
    )


def eval_from_dicom(spec: ModelSpec, model_loader, dicom_dir: str | Path, labels_csv: str | Path,
                    *, batch_size: int = 16) -> EvalSet:
    """DICOM series labelled by ``series_uid``; sex, age band and manufacturer from their headers.

    Only series the model's scope covers are scored (as triage routes them), each prepared by the
    model's triage input kind; labelled series that are missing, out of scope or unreadable are
    counted in the notes.
    """
    from medassist.ingest.discover import discover_series
    from medassist.models.registry import applies_to

    rows, header = read_labels_csv(labels_csv)
    if "series_uid" not in header:
        raise MedassistError(f"{labels_csv}: labels CSV for DICOM input needs a 'series_uid' column")
    series, problems = discover_series([dicom_dir])
    by_uid = {s.series_uid: s for s in series}
    kept_rows, loaders, header_factors, notes = [], [], {"sex": [], "age_band": [], "manufacturer": []}, []
    missing = out_of_scope = 0
    for row in rows:
        s = by_uid.get(row["series_uid"])
        if s is None:
            missing += 1
            continue
        if not applies_to(spec, s):
            out_of_scope += 1
            continue
        kept_rows.append(row)
        loaders.append(series_case(s, spec, model_loader))
        header_factors["sex"].append(_factor_value("sex", s.sex))
        header_factors["age_band"].append(age_band(s.age))
        header_factors["manufacturer"].append(s.manufacturer.strip() or "unknown")
    if not kept_rows:
        raise MedassistError(f"{dicom_dir}: no labelled series in {labels_csv} found that model {spec.name} applies to")
    labels = [parse_label(r["label"], spec, where=f"{labels_csv} ({r['series_uid']})") for r in kept_rows]
    for count, what in ((missing, "not found in the DICOM folder"), (out_of_scope, "outside the model's scope")):
        if count:
            notes.append(f"{count} labelled series {what}: left out")
    if problems:
        notes.append(f"{len(problems)} file(s) in the folder could not be read")
    scores, errors = score_cases(model_loader(), loaders, batch_size=batch_size)
    ok = np.isfinite(scores)
    _drop_unscored(kept_rows, scores, errors, notes)
    kept_rows, labels, scores = [r for r, k in zip(kept_rows, ok) if k], [v for v, k in zip(labels, ok) if k], scores[ok]
    header_factors = {k: [v for v, keep in zip(vals, ok) if keep] for k, vals in header_factors.items()}
    factors = {**header_factors, **_csv_factors(kept_rows, header)}
    return EvalSet(
        name=f"DICOM series in {Path(dicom_dir).name}",
        description=(f"{len(kept_rows)} labelled DICOM series from {dicom_dir} (labels: {Path(labels_csv).name}); "
                     "sex, age band and manufacturer from the DICOM headers"),
        ids=[r["series_uid"] for r in kept_rows], labels=np.array(labels), scores=scores,
        factors=factors, source=str(dicom_dir), notes=notes,
    )


def eval_from_scores(spec: ModelSpec | None, scores_csv: str | Path) -> EvalSet:
    """Scores computed elsewhere: a CSV with ``label`` and ``score`` columns, other columns factors.

    When the CSV has ``model``/``model_version`` columns (a worklist joined with labels), only rows
    of this model (and version, where given) are used.
    """
    rows, header = read_labels_csv(scores_csv)
    if "score" not in header:
        raise MedassistError(f"{scores_csv}: scores CSV needs a 'score' column")
    if spec is not None and "model" in header:
        rows = [r for r in rows if r["model"] in ("", spec.name)]
        if "model_version" in header:
            rows = [r for r in rows if r["model_version"] in ("", spec.version)]
    rows = [r for r in rows if r["score"] not in ("", "None", "nan")]
    if not rows:
        raise MedassistError(f"{scores_csv}: no scored rows{f' for model {spec.name}' if spec else ''}")
    id_col = next((c for c in ("series_uid", *IMAGE_COLUMNS, "id") if c in header), None)
    skip = {"model", "model_version", "finding", "threshold", "flagged", "slices", "saliency_path", "error",
            "modality", "source_path"}
    factors = {k: v for k, v in _csv_factors(rows, [h for h in header if h not in skip]).items()}
    try:
        scores = np.array([float(r["score"]) for r in rows])
    except ValueError as exc:
        raise MedassistError(f"{scores_csv}: a score is not a number ({exc})") from exc
    return EvalSet(
        name=f"scores in {Path(scores_csv).name}",
        description=f"{len(rows)} labelled cases scored beforehand ({scores_csv})",
        ids=[r[id_col] if id_col else str(i) for i, r in enumerate(rows)],
        labels=np.array([parse_label(r["label"], spec, where=str(scores_csv)) for r in rows]),
        scores=scores, factors=factors, source=str(scores_csv),
    )


# --- FracAtlas validation split (the fracture model's default) ------------------------------------

FRACATLAS_SPLIT_DEFAULTS = splits.FRACATLAS_SPLIT


def training_config(spec: ModelSpec) -> dict:
    """The training config ``configs/<name>.yaml`` of a shipped model, or {} when not found."""
    import yaml

    path = REPO_ROOT / "configs" / f"{spec.name}.yaml"
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def find_fracatlas(spec: ModelSpec | None = None) -> Path | None:
    """The FracAtlas folder: $MEDASSIST_DATA/fracatlas, the training config's root, the shared data."""
    candidates = []
    if os.environ.get("MEDASSIST_DATA"):
        candidates.append(Path(os.environ["MEDASSIST_DATA"]) / "fracatlas")
    if spec is not None:
        root = training_config(spec).get("data", {}).get("root")
        if root:
            candidates.append(Path(root) if Path(root).is_absolute() else REPO_ROOT / root)
    candidates += [Path("/work/shared/data/fracatlas"), REPO_ROOT.parent / "shared" / "data" / "fracatlas",
                   Path("../shared/data/fracatlas")]
    return next((c.resolve() for c in candidates if (c / "dataset.csv").is_file()), None)


def is_fracatlas_model(spec: ModelSpec) -> bool:
    """Whether the model was trained on FracAtlas (its validation split is then the default set)."""
    return "fracatlas" in spec.training_data.lower() or "fracatlas" in str(training_config(spec).get("data", {}))


def eval_from_fracatlas(spec: ModelSpec, model_loader, root: str | Path, *, batch_size: int = 16,
                        limit: int | None = None) -> EvalSet:
    """The FracAtlas validation split the training config defines (block split by image id)."""
    from medassist.models import fracatlas

    split = {**FRACATLAS_SPLIT_DEFAULTS,
             **{k: v for k, v in training_config(spec).get("data", {}).items() if k in FRACATLAS_SPLIT_DEFAULTS}}
    records = [r for r in fracatlas.read_records(root) if fracatlas.split_of(r.image_id, **split) == "val"]
    notes: list[str] = []
    if limit is not None and limit < len(records):
        notes.append(f"Limited to the first {limit} of {len(records)} validation images (a smoke run): "
                     "not representative of the split.")
        records = records[:limit]
    if not records:
        raise MedassistError(f"{root}: no FracAtlas validation images found")
    scores, errors = score_cases(model_loader(), [image_case(r.path, spec) for r in records],
                                 batch_size=batch_size)
    records, scores = _drop_unscored(records, scores, errors, notes)
    return EvalSet(
        name="FracAtlas validation split",
        description=(
            f"FracAtlas (Abedeen et al., Sci Data 2023; CC BY 4.0) validation split: {len(records)} radiographs "
            f"whose image-id block (id // {split['block_size']}) % {split['n_folds']} == {split['val_fold']}. "
            "The training run used this split to choose the score head and the decision threshold."
        ),
        ids=[r.image_id for r in records],
        labels=np.array([r.fractured for r in records]),
        scores=scores,
        factors={
            "body_region": [r.region for r in records],
            "view": [r.view for r in records],
            "hardware": ["present" if r.hardware else "absent" for r in records],
        },
        source=str(root),
        used_for_tuning=True,
        notes=[
            "Not an independent test set: the shipped threshold was tuned on these images (Youden index), "
            "so the metrics at that threshold are optimistic. An independent hold-out set is not available here.",
            "The split is by contiguous blocks of image ids, a proxy for patients: FracAtlas has no patient "
            "identifiers, so images of one patient may still fall on both sides of a block boundary.",
            *notes,
        ],
    )


# --- brain-tumour validation split (the tumour model's default) -----------------------------------

BRAIN_TUMOR_SPLIT_DEFAULTS = splits.BRAIN_TUMOR_SPLIT
BRAIN_TUMOR_SOURCES = {"glioma": "figshare", "meningioma": "figshare", "pituitary": "figshare", "no_tumor": "Br35H"}
MIRROR_CLASS = "mirror_negative"
CONTRAST_OTHER_SOURCE = "tumour vs Br35H (other source)"
CONTRAST_SAME_SOURCE = "tumour vs mirror negatives (same source)"


def brain_tumor_split(spec: ModelSpec) -> dict:
    """The block split of the shipped weights: as recorded by their training run
    (``spec.validation["split"]``), else the training config's, else the defaults."""
    split = dict(BRAIN_TUMOR_SPLIT_DEFAULTS)
    for source in (training_config(spec).get("data", {}), (spec.validation or {}).get("split", {})):
        split.update({k: int(v) for k, v in (source or {}).items() if k in BRAIN_TUMOR_SPLIT_DEFAULTS})
    return split


def _is_brain_tumor_root(path: Path) -> bool:
    return all((path / folder).is_dir() for folder in BRAIN_TUMOR_SOURCES)


def find_brain_tumor(spec: ModelSpec | None = None) -> Path | None:
    """The brain-tumour folder (glioma/, meningioma/, pituitary/, no_tumor/): $MEDASSIST_DATA/brain_tumor,
    the training config's data root (relative to the repository), the shared data."""
    candidates = []
    if os.environ.get("MEDASSIST_DATA"):
        candidates.append(Path(os.environ["MEDASSIST_DATA"]) / "brain_tumor")
    if spec is not None:
        root = training_config(spec).get("data", {}).get("root")
        if root:
            candidates.append(Path(root) if Path(root).is_absolute() else REPO_ROOT / root)
    candidates += [Path("/work/shared/data/brain_tumor"), REPO_ROOT.parent / "shared" / "data" / "brain_tumor"]
    return next((c.resolve() for c in candidates if _is_brain_tumor_root(c)), None)


def is_brain_tumor_model(spec: ModelSpec) -> bool:
    """Whether the model was trained on the brain-tumour slices (their validation split is the default)."""
    config = training_config(spec)
    return (spec.finding == "brain_tumor" or config.get("task") == "tumor"
            or "brain_tumor" in str(config.get("data", {})))


def interleave_by_class(records: Sequence) -> list:
    """Records in round-robin order over the class folders (each folder by file number), so that
    any prefix holds every class in about equal numbers."""
    by_folder: dict[str, list] = {}
    for rec in sorted(records, key=lambda r: r.number):
        by_folder.setdefault(rec.folder, []).append(rec)
    queues = [by_folder[f] for f in sorted(by_folder)]
    out = []
    for i in range(max((len(q) for q in queues), default=0)):
        out += [q[i] for q in queues if i < len(q)]
    return out


def slice_outputs(model, inputs, n_types: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Presence probabilities (the spec's score head, as ``LoadedModel.scores``) and type
    probabilities (softmax of logits 1..n_types; None when the network has no type outputs) for
    (N, 1, S, S) network inputs, in one forward pass."""
    import torch

    with torch.no_grad():
        logits, cells = model.network.forward_all(inputs.to(model.device).float())
    presence = score_probability(logits, cells, model.spec.score_head)
    types = None
    if n_types and logits.shape[1] >= 1 + n_types:
        types = torch.softmax(logits[:, 1 : 1 + n_types].float(), dim=1).cpu().numpy()
    return presence.cpu().numpy().astype(float), types


def _as_u8(tensor) -> np.ndarray:
    """A (1, S, S) 0..1 input as the training cache stores it (uint8)."""
    return np.clip(tensor[0].numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)


def eval_from_brain_tumor(spec: ModelSpec, model_loader, root: str | Path, *, batch_size: int = 16,
                          limit: int | None = None, mirror_negatives: bool = True) -> EvalSet:
    """The brain-tumour validation split of the shipped weights, slice by slice, through the model's
    own slice preprocessing (``tumor.prepare_slice``: head mask, crop, letterbox).

    Cases: every validation slice (figshare tumour slices, Br35H slices without tumour) and, with
    ``mirror_negatives``, the same-source negatives the training run validated on: each validation
    tumour slice's network input with the tumour replaced by the mirrored other side of the head
    (``tumor_train.mirror_negative``, where it can be made). Factors: ``class`` and ``source``. Also the
    type probabilities (secondary output), two contrasts (tumour slices against each kind of
    negative) and the study rule on pseudo-volumes made of these slices. ``limit`` takes that many
    slices in class-interleaved order (smoke runs).
    """
    import torch

    from medassist.ingest.images import load_jpeg_grayscale
    from medassist.models import tumor, tumor_train
    from medassist.preprocess import volume as vol

    root = Path(root)
    if not _is_brain_tumor_root(root):
        raise MedassistError(f"{root}: not a brain-tumour data folder (needs {', '.join(BRAIN_TUMOR_SOURCES)}/)")
    split = brain_tumor_split(spec)
    records = [r for r in tumor.read_records(root) if tumor.split_of(r.number, **split) == "val"]
    if not records:
        raise MedassistError(f"{root}: no brain-tumour validation slices found")
    notes: list[str] = []
    if limit is not None and limit < len(records):
        notes.append(f"Limited to {limit} of {len(records)} validation slices, taken in turn from each class "
                     "(a smoke run): not representative of the split.")
        records = sorted(interleave_by_class(records)[:limit], key=lambda r: r.number)
    model = model_loader()
    type_labels = tuple(tumor.inference_settings(spec)["type_labels"])
    ids, labels, scores, classes, numbers, type_true, type_probs, errors = [], [], [], [], [], [], [], []
    mirrors: list[tuple] = []  # (record, uint8 input)
    for start in range(0, len(records), batch_size):
        tensors, kept = [], []
        for rec in records[start : start + batch_size]:
            try:
                gray = load_jpeg_grayscale(rec.path).astype(np.float32) / 255.0
                tensor, frame = tumor.prepare_slice(gray, spec.preprocess)
            except (MedassistError, ValueError) as exc:
                errors.append(str(exc))
                continue
            tensors.append(tensor)
            kept.append(rec)
            if mirror_negatives and rec.box is not None:
                negative = tumor_train.mirror_negative(_as_u8(tensor), tumor.box_mask(rec.box, gray.shape, frame))
                if negative is not None:
                    mirrors.append((rec, negative))
        if not kept:
            continue
        presence, types = slice_outputs(model, torch.stack(tensors), len(type_labels))
        for k, rec in enumerate(kept):
            ids.append(f"{rec.folder}/{rec.number}")
            labels.append(rec.tumour)
            scores.append(float(presence[k]))
            classes.append(rec.folder)
            numbers.append(rec.number)
            type_true.append(rec.type_index)
            type_probs.append(types[k] if types is not None else None)
        log.info("audit: scored %d/%d brain MRI slices", min(start + batch_size, len(records)), len(records))
    if errors:
        notes.append(f"{len(errors)} slice(s) could not be read and are left out (first: {errors[0]})")
    if not ids:
        raise MedassistError(f"{root}: no validation slice could be scored ({errors[0] if errors else 'none found'})")
    n_real = len(ids)
    for start in range(0, len(mirrors), batch_size):
        chunk = mirrors[start : start + batch_size]
        x = torch.from_numpy(np.stack([m for _, m in chunk])).float().div_(255.0)[:, None]
        presence, types = slice_outputs(model, x, len(type_labels))
        for k, (rec, _) in enumerate(chunk):
            ids.append(f"{MIRROR_CLASS}/{rec.folder}/{rec.number}")
            labels.append(0)
            scores.append(float(presence[k]))
            classes.append(MIRROR_CLASS)
            numbers.append(rec.number)
            type_true.append(-1)
            type_probs.append(types[k] if types is not None else None)

    labels_a, scores_a, classes_a = np.array(labels), np.array(scores), np.array(classes)
    sources = [BRAIN_TUMOR_SOURCES.get(c, "figshare") for c in classes]  # mirror negatives: figshare slices
    n_tumour, n_br35h, n_mirror = int(labels_a.sum()), int((classes_a == "no_tumor").sum()), len(ids) - n_real
    contrasts: dict[str, tuple[str, np.ndarray]] = {}
    if n_tumour and n_br35h:
        contrasts[CONTRAST_OTHER_SOURCE] = (
            "real slices only: figshare tumour slices against Br35H slices without tumour. Here the source "
            "determines the label, so this separation can come from source cues (sequence, slice level, "
            "framing, compression) as much as from the tumour", classes_a != MIRROR_CLASS)
    if n_tumour and n_mirror:
        contrasts[CONTRAST_SAME_SOURCE] = (
            "figshare tumour slices against their own mirror negatives (same patients, sequence and level, "
            "tumour erased; synthetic): the comparison the source cannot explain",
            np.array([s == "figshare" for s in sources]))
    has_types = all(p is not None for p in type_probs)

    extras: dict = {}
    settings = tumor.inference_settings(spec)
    if n_tumour and (labels_a == 0).any():
        null = settings.get("null_logit")
        extras["pseudo_volumes"] = tumor_train.pseudo_volume_calibration(
            scores_a, labels_a, np.array(numbers), classes_a, float(spec.threshold),
            float(settings["aggregation"]["extent_mm"]),
            vol.NullModel(null["mean"], null["std"]) if null else None, seed=0)
        extras["pseudo_volumes"]["rule"] = settings["aggregation"].get("rule")

    description = (
        f"Brain-tumour validation split ({root.name}): {n_real} slices whose file-number block "
        f"(number // {split['block_size']}) % {split['n_folds']} == {split['val_fold']}: {n_tumour} figshare "
        f"T1 contrast-enhanced tumour slices ({', '.join(f'{(classes_a == t).sum()} {t}' for t in tumor.TYPE_LABELS)}) "
        f"and {n_br35h} Br35H slices without tumour"
        + (f"; plus {n_mirror} mirror negatives made from the validation tumour slices (the tumour replaced by "
           "the mirrored other side of the head in the network input, as the training run validates; synthetic, "
           "figshare source)" if n_mirror else "")
        + ". Scored slice by slice through the model's own preprocessing (tumor.prepare_slice)."
    )
    return EvalSet(
        name="brain-tumour validation split (slices)",
        description=description,
        ids=ids, labels=labels_a, scores=scores_a,
        factors={"class": list(classes), "source": sources},
        source=str(root),
        used_for_tuning=True,
        unit="slice",
        label_factors=("class",),
        contrasts=contrasts,
        type_labels=type_labels if has_types else (),
        type_true=np.array(type_true) if has_types else None,
        type_probs=np.array(type_probs) if has_types else None,
        extras=extras,
        notes=[
            "Slice level: one case is one 2D slice. The model is used on studies (a study score aggregated over "
            "the in-brain slices), so these numbers do not say how often a study is flagged: see the "
            "volume-level results.",
            "Not an independent test set: the training run chose the score head and the slice threshold "
            "(Youden index) on this split, mirror negatives included, so the metrics at that threshold are optimistic.",
            "Among real slices the label is the source: every figshare slice has a tumour, no Br35H slice has one, "
            "and the sources differ in sequence (T1 contrast-enhanced against mostly T2/FLAIR), slice level, "
            "framing and compression. Tumour-vs-Br35H discrimination is therefore easy and says little; the "
            "same-source contrast (tumour vs mirror negatives) is the informative slice-level number.",
            "Slices of one patient (consecutive file numbers) are correlated and the bootstrap resamples slices, "
            "not patients: the intervals are narrower than patient-level intervals would be. The split is by "
            "blocks of file numbers, so a patient whose slices straddle a block boundary can appear on both sides.",
            *notes,
        ],
    )
