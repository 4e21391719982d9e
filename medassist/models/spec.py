"""ModelSpec: everything a shipped model's weights need to travel with (timm-style pretrained config).

One JSON file per shipped model, beside its weights; the training command writes it, the registry
reads it. Input size, intensity normalisation, labels, threshold and training-data licence are all
here, so a weights file is never used with the wrong preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medassist.errors import MedassistError


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

    ``score_head``: which output is the score ("image", "cell_max" or "mean" of the two).
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
    input_kind: str = "image2d"
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
    """Read a model spec JSON; a malformed file raises MedassistError naming it."""
    path = Path(path)
    try:
        return ModelSpec.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise MedassistError(f"{path}: not a valid model spec ({exc})") from exc
