"""Labelled evaluation sets for the audit: cases with a label, the model's score and their factors.

Four sources, one result type (``EvalSet``):

- image files + a labels CSV (``image`` or ``path`` column, ``label``, any factor columns);
- a DICOM folder + a labels CSV keyed by ``series_uid``: sex, age band and manufacturer come from
  the headers, any other CSV columns are factors too;
- the FracAtlas validation split (the default for the fracture model);
- a CSV of scores already computed (``label``, ``score``, factor columns), e.g. a triage worklist
  joined with labels.

Scoring follows the inference path: image files go through ``prepare_2d(image, spec.preprocess)``
and ``LoadedModel.scores``; DICOM series through triage's input kind for the model (the same
``prepare``/``aggregate`` the worklist scores come from).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medassist.errors import MedassistError
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

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels).astype(int)
        self.scores = np.asarray(self.scores, dtype=float)
        if not (len(self.ids) == len(self.labels) == len(self.scores)):
            raise ValueError("ids, labels and scores differ in length")
        for name, values in self.factors.items():
            if len(values) != len(self.labels):
                raise ValueError(f"factor {name!r} has {len(values)} values for {len(self.labels)} cases")

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
    """A DICOM age string ('034Y', '006M', '012W', '003D') or a number of years -> an age band."""
    if age is None:
        return "unknown"
    text = str(age).strip().upper()
    if not text:
        return "unknown"
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([DWMY]?)", text)
    if not match:
        return "unknown"
    years = float(match.group(1)) / {"": 1, "Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[match.group(2)]
    if years < 18:
        return "0-17"
    if years < 40:
        return "18-39"
    if years < 65:
        return "40-64"
    return "65+"


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


Prepared = tuple  # (inputs (k, 1, S, S) tensor, aggregate(scores (k,)) -> float)


def score_cases(model, preparers: Sequence[Callable[[], Prepared]], *, batch_size: int = 16
                ) -> tuple[np.ndarray, list[str]]:
    """One score per case: each preparer gives its network inputs and how to combine their scores.

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
                inputs, aggregate = preparers[i]()
                prepared.append((i, inputs, aggregate))
            except (MedassistError, ValueError) as exc:
                errors.append(str(exc))
        if prepared:
            out = torch.cat([model.scores(chunk) for chunk in torch.cat([p[1] for p in prepared]).split(batch_size)])
            offset = 0
            for i, inputs, aggregate in prepared:
                scores[i] = float(aggregate(out[offset : offset + len(inputs)]))
                offset += len(inputs)
        log.info("audit: scored %d/%d", min(start + batch_size, len(preparers)), len(preparers))
    return scores, errors


def _image_file_case(path: Path, spec: ModelSpec) -> Callable[[], Prepared]:
    """An image file (JPEG/PNG) as inference reads it: grey 0..1 -> prepare_2d -> one input."""

    def prepare() -> Prepared:
        from medassist.ingest.images import load_jpeg_grayscale
        from medassist.preprocess.transforms import prepare_2d

        image = load_jpeg_grayscale(path).astype(np.float32) / 255.0
        return prepare_2d(image, spec.preprocess)[0][None], lambda s: s[0]

    return prepare


def _series_case(series, spec: ModelSpec) -> Callable[[], Prepared]:
    """A DICOM series prepared exactly as triage prepares it for this model (its input kind)."""

    def prepare() -> Prepared:
        from medassist.triage.inputs import kind_of

        kind = kind_of(spec)
        inputs, slices = kind.prepare(series.load(), spec)
        return inputs, lambda s: kind.aggregate(s, slices)[0]

    return prepare


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
    scores, errors = score_cases(model_loader(), [_image_file_case(p, spec) for p in paths], batch_size=batch_size)
    rows, scores = _drop_unscored(rows, scores, errors, notes)
    return EvalSet(
        name=f"images in {images_dir.name}",
        description=f"{len(rows)} labelled image files from {images_dir} (labels: {Path(labels_csv).name})",
        ids=[r[column] for r in rows], labels=np.array(labels), scores=scores,
        factors=_csv_factors(rows, header), source=str(images_dir), notes=notes,
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
        loaders.append(_series_case(s, spec))
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

FRACATLAS_SPLIT_DEFAULTS = {"block_size": 100, "n_folds": 5, "val_fold": 4}


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
    scores, errors = score_cases(model_loader(), [_image_file_case(r.path, spec) for r in records],
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
