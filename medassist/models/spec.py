"""ModelSpec: everything a shipped model's weights need to travel with (timm-style pretrained config).

One JSON file per shipped model, beside its weights; the training command writes it, the registry
reads it. Input size, intensity normalisation, labels, threshold and training-data licence are all
here, so a weights file is never used with the wrong preprocessing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from medassist.errors import MedassistError
from medassist.models.heads import SCORE_HEADS


class InputKind(str, Enum):
    """What one network input is: one radiograph, or one slice of a volume scored slice by slice
    and aggregated per study. Stored in the spec JSON as its value; compares equal to it."""

    IMAGE2D = "image2d"
    VOLUME = "volume"


INPUT_KINDS = tuple(kind.value for kind in InputKind)


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a network input.

    ``source``: which Image array feeds the model ("display": windowed 0..1; "pixels": physical values).
    ``input_size``: the square side in pixels after an aspect-preserving resize of the longest side
    and a centred zero pad.
    ``percentiles``: per-image intensity scaling, these percentiles of the image map to 0 and 1 (clipped).
    ``equalize``: after the letterbox, histogram-equalise the non-zero pixels of the input (zeros,
    the padding and clipped background, stay 0), so the grey-level distribution a source habitually
    produces no longer reaches the network (``medassist.preprocess.transforms.equalize_nonzero``).
    """

    input_size: int
    source: str = "display"
    percentiles: tuple[float, float] = (0.5, 99.5)
    equalize: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """A shipped model: identity, network, preprocessing, decision rule, scope and provenance.

    ``score_head``: which output is the score ("image", "cell_max" or "mean" of the two; see
    ``medassist.models.heads``).
    ``saliency_method``: the map triage writes for a finding unless told otherwise (one of
    ``medassist.explain.saliency.METHODS``: "gradcam", "cell_probability", ...), chosen per model
    by where its peak lands on the validation masks.
    ``input_kind``: "image2d" (one input per radiograph) or "volume" (scored slice by slice and
    aggregated to one study score, see ``medassist.models.tumor.score_volume``).
    """

    name: str
    version: str
    finding: str
    labels: tuple[str, ...]
    threshold: float
    weights: str
    sha256: str
    network: str
    network_args: dict
    preprocess: PreprocessSpec
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...] = ()
    excluded_body_parts: tuple[str, ...] = ()
    score_head: str = "image"
    saliency_method: str = "gradcam"
    input_kind: str = InputKind.IMAGE2D.value
    training_data: str = ""
    licence: str = ""
    training_command: str = ""
    validation: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise to the JSON stored beside the weights."""
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelSpec":
        """Build from a parsed JSON dict (tuples restored)."""
        data = dict(raw)
        pre = dict(data.pop("preprocess"))
        pre["percentiles"] = tuple(pre.get("percentiles", (0.5, 99.5)))
        for key in ("labels", "modalities", "body_parts", "excluded_body_parts"):
            data[key] = tuple(data.get(key, ()))
        return cls(preprocess=PreprocessSpec(**pre), **data)


def read_spec(path: str | Path) -> ModelSpec:
    """Read and validate a model spec JSON; a malformed or invalid file raises MedassistError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MedassistError(f"{path}: not a valid model spec ({exc.strerror or exc})") from exc
    return parse_spec(data, path)


def parse_spec(data: bytes, path: str | Path) -> ModelSpec:
    """A validated ModelSpec from the bytes of the spec file ``path`` (named in every error)."""
    try:
        spec = ModelSpec.from_dict(json.loads(data))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise MedassistError(f"{path}: not a valid model spec ({exc})") from exc
    problems = spec_problems(spec)
    if problems:
        raise MedassistError(f"{path}: invalid model spec, refused: {'; '.join(problems)}")
    return spec


INPUT_SIZE_RANGE = (16, 2048)  # pixels, the square side of a network input
SOURCES = ("display", "pixels")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def spec_problems(spec: ModelSpec) -> list[str]:
    """What is wrong with a spec's values (empty when nothing): every value a decision depends on
    is checked, so an edited spec cannot silently stop findings being flagged."""
    pre = spec.preprocess
    low, high = INPUT_SIZE_RANGE
    checks = [
        (is_name(spec.name), f"name {spec.name!r} is not a plain name (letters, digits, _ . -)"),
        (isinstance(spec.version, str) and bool(spec.version), "version is empty"),
        (is_fraction(spec.threshold), f"threshold {spec.threshold!r} is not a finite number in (0, 1)"),
        (labels_ok(spec.labels), f"labels {list(spec.labels)!r} are not two distinct names (negative, positive)"),
        (is_name(spec.weights), f"weights {spec.weights!r} is not a plain file name beside the spec"),
        (isinstance(spec.sha256, str) and bool(SHA256_PATTERN.fullmatch(spec.sha256)),
         "sha256 is not 64 lowercase hex digits"),
        (isinstance(spec.network, str) and bool(spec.network), "network is empty"),
        (isinstance(spec.network_args, dict), "network_args is not an object"),
        (isinstance(pre.input_size, int) and not isinstance(pre.input_size, bool) and low <= pre.input_size <= high,
         f"preprocess.input_size {pre.input_size!r} is not an integer in {low}..{high}"),
        (pre.source in SOURCES, f"preprocess.source {pre.source!r} is not one of {', '.join(SOURCES)}"),
        (percentiles_ok(pre.percentiles),
         f"preprocess.percentiles {list(pre.percentiles)!r} are not two finite numbers 0 <= low < high <= 100"),
        (isinstance(pre.equalize, bool), "preprocess.equalize is not true or false"),
        (bool(spec.modalities) and all(isinstance(m, str) and m for m in spec.modalities), "modalities are empty"),
        (spec.score_head in SCORE_HEADS, f"score_head {spec.score_head!r} is not one of {', '.join(SCORE_HEADS)}"),
        (is_name(spec.saliency_method), f"saliency_method {spec.saliency_method!r} is not a method name"),
        (spec.input_kind in INPUT_KINDS, f"input_kind {spec.input_kind!r} is not one of {', '.join(INPUT_KINDS)}"),
        (isinstance(spec.validation, dict), "validation is not an object"),
    ]
    problems = [message for ok, message in checks if not ok]
    inference = spec.validation.get("inference", {}) if isinstance(spec.validation, dict) else {}
    if not all_finite(inference):
        problems.append("validation.inference holds a number that is not finite (NaN or infinity)")
    return problems


def is_name(value: object) -> bool:
    """A plain name: letters, digits, '_', '.', '-', not starting with a dot (no path)."""
    return isinstance(value, str) and bool(NAME_PATTERN.fullmatch(value))


def is_number(value: object) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_fraction(value: object) -> bool:
    """A finite number strictly between 0 and 1."""
    return is_number(value) and 0 < value < 1


def labels_ok(labels: tuple) -> bool:
    """Two distinct non-empty names: the negative class, then the finding (the score's class)."""
    return len(labels) == 2 and all(isinstance(x, str) and x for x in labels) and labels[0] != labels[1]


def percentiles_ok(percentiles: tuple) -> bool:
    """Two finite numbers, 0 <= low < high <= 100."""
    return (len(percentiles) == 2 and all(is_number(p) for p in percentiles)
            and 0 <= percentiles[0] < percentiles[1] <= 100)


def all_finite(value: object) -> bool:
    """No NaN or infinity anywhere in a parsed JSON value."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(all_finite(v) for v in value)
    return True
