"""A shipped model as a MONAI Bundle: ``medassist export-model NAME --format monai-bundle --out DIR``.

Writes ``DIR/NAME/`` in the MONAI Bundle layout (https://docs.monai.io/en/stable/mb_specification.html):

- ``configs/metadata.json``: the spec's mandatory keys (versions, task, description, authors,
  copyright, ``network_data_format``) and the optional ones (data source and type, classes,
  intended use, licence), plus medassist's own under ``"medassist"`` (threshold, score head, the
  weights' sha256, the preprocessing contract, the whole spec);
- ``configs/inference.json``: a ``monai.bundle`` config. ``network_def`` is the network built by
  ``medassist.models.networks.build_network`` (so the bundle needs medassist installed), the
  weights load into it with their own keys; ``scorer`` wraps it with the score head
  (``networks.ScoredNetwork``: input -> probability); ``preprocessing`` is medassist's chain as
  MONAI transforms (``ScaleIntensityRangePercentiles`` 0..1 clipped, ``Resize(size_mode="longest",
  mode="area")``, ``SpatialPad``: the numbers ``medassist.preprocess.transforms`` reproduces), fed
  the spec's source array (the windowed display image) as ``.npy`` files; ``run`` writes the
  probabilities and flags as JSON;
- ``models/model.pt``: the shipped state dict, byte for byte (its sha256 is the spec's);
- ``docs/README.md`` (what it is, how to run it, the threshold, the model card's limits),
  ``LICENSE`` and ``docs/license.txt``.

The metadata are checked against ``METADATA_SCHEMA`` here (offline, no jsonschema needed), and the
bundle is kept only if ``monai.bundle.ConfigParser`` running its own config reproduces medassist's
probabilities on probe inputs within ``AGREEMENT_TOLERANCE``; else nothing is written.

Only radiograph models (``input_kind`` image2d, no histogram equalisation) are exported: a volume
model's slice preparation (canonical reorientation, head mask and crop, slice selection) and its
study score (``medassist.models.tumor``) are not a MONAI transform chain.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from medassist.atomic import atomic_folder
from medassist.errors import MedassistError
from medassist.models.registry import WEIGHTS_DIR, LoadedModel, load_model, read_weights
from medassist.models.spec import InputKind, ModelSpec

BUNDLE_FORMAT_VERSION = "1"
AGREEMENT_TOLERANCE = 1e-4
# the schema URL MONAI's model zoo bundles name; nothing here downloads it (see README: offline check)
MONAI_SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
AUTHORS = "the medassist contributors"
COPYRIGHT = "Copyright the medassist contributors"
INPUT_KEY = "image"
OUTPUT_KEY = "pred"

_TENSOR_KEYS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
                "is_patch_data", "channel_def")
_TENSOR = {
    "type": "object",
    "required": list(_TENSOR_KEYS),
    "properties": {
        "type": {"type": "string"},
        "format": {"type": "string"},
        "modality": {"type": "string"},
        "num_channels": {"type": "integer", "minimum": 1},
        "spatial_shape": {"type": "array", "items": {"type": ["integer", "string"]}},
        "dtype": {"type": "string"},
        "value_range": {"type": "array", "items": {"type": "number"}, "maxItems": 2},
        "is_patch_data": {"type": "boolean"},
        "channel_def": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
# The bundle specification's metadata.json keys as a JSON Schema (draft-07), written here from the
# specification's text: MONAI's own schema file is downloaded from GitHub by verify_metadata, which
# this machine cannot reach. Passed to monai.bundle.verify_metadata as a local file it does not fetch.
METADATA_SCHEMA: dict = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "MONAI bundle metadata.json (the specification's mandatory keys; medassist's local copy)",
    "type": "object",
    # the specification's "optional_packages_version" is "required_packages_version" in current MONAI
    # (monai.bundle renames the old key with a deprecation warning)
    "required": ["schema", "version", "monai_version", "pytorch_version", "numpy_version",
                 "required_packages_version", "task", "description", "authors", "copyright",
                 "network_data_format"],
    "properties": {
        "schema": {"type": "string"},
        "version": {"type": "string"},
        "changelog": {"type": "object", "additionalProperties": {"type": "string"}},
        "monai_version": {"type": "string"},
        "pytorch_version": {"type": "string"},
        "numpy_version": {"type": "string"},
        "name": {"type": "string"},
        "required_packages_version": {"type": "object", "additionalProperties": {"type": "string"}},
        "task": {"type": "string"},
        "description": {"type": "string"},
        "authors": {"type": ["string", "array"]},
        "copyright": {"type": "string"},
        "data_source": {"type": "string"},
        "data_type": {"type": "string"},
        "image_classes": {"type": "string"},
        "label_classes": {"type": "string"},
        "pred_classes": {"type": "string"},
        "intended_use": {"type": "string"},
        "references": {"type": "array", "items": {"type": "string"}},
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {
                "inputs": {"type": "object", "minProperties": 1, "additionalProperties": _TENSOR},
                "outputs": {"type": "object", "minProperties": 1, "additionalProperties": _TENSOR},
            },
        },
    },
}
EXTRA_METADATA_KEYS = ("data_source", "data_type", "image_classes", "label_classes", "pred_classes",
                       "intended_use", "licence")


def bundle_dir(spec: ModelSpec, folder: str | Path) -> Path:
    """Where the bundle of ``spec`` lives in ``folder``: ``NAME/``."""
    return Path(folder) / spec.name


def unsupported_reason(spec: ModelSpec) -> str | None:
    """Why ``spec`` cannot be a MONAI bundle here (None: it can)."""
    if spec.input_kind != InputKind.IMAGE2D:
        return (f"model {spec.name} scores volumes: its slice preparation (reorientation, head "
                "crop, slice selection) and study score are not a MONAI transform chain; only radiograph models "
                "are exported as MONAI bundles")
    if spec.preprocess.equalize:
        return (f"model {spec.name} histogram-equalises its inputs (medassist's equalize_nonzero), which no MONAI "
                "transform reproduces")
    return None


def bundle_metadata(spec: ModelSpec) -> dict:
    """The bundle's ``configs/metadata.json``."""
    import monai

    import medassist

    pre = spec.preprocess
    negative, positive = spec.labels
    val = (spec.validation or {}).get("validation") or {}
    modality = "/".join(spec.modalities)
    scope = f"{modality} radiographs" + (f", not of {', '.join(spec.excluded_body_parts)}"
                                         if spec.excluded_body_parts else "")
    performance = (f" On its validation split (n={val['n']}, {val['n_positive']} positive) AUROC {val['auroc']:.3f}, "
                   f"sensitivity {val['sensitivity']:.3f}, specificity {val['specificity']:.3f} at the threshold."
                   if {"n", "n_positive", "auroc", "sensitivity", "specificity"} <= set(val) else "")
    return {
        "schema": MONAI_SCHEMA_URL,
        "version": spec.version,
        "changelog": {spec.version: f"medassist {spec.name} {spec.version}, exported by medassist export-model"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "name": spec.name,
        "required_packages_version": {"medassist": medassist_version(medassist)},
        "task": f"{spec.finding} on {scope}: one probability per image",
        "description": (f"medassist {spec.name} {spec.version}: a MONAI ResNet backbone ({spec.network}) with an image head "
                        f"and a cell head; the score is the '{spec.score_head}' head, flagged at >= {spec.threshold}. "
                        f"Decision support for a qualified reader, not a medical device.{performance}"),
        "authors": AUTHORS,
        "copyright": COPYRIGHT,
        "data_source": spec.training_data,
        "data_type": "dicom",
        "image_classes": (f"single channel, the windowed display image ({pre.source}: 0..1), scaled per image to its "
                          f"{pre.percentiles[0]:g}th..{pre.percentiles[1]:g}th percentiles (0..1, clipped), longest side "
                          f"resized to {pre.input_size} (area) and zero-padded to {pre.input_size}x{pre.input_size}"),
        "label_classes": f"one label per image: 0 {negative}, 1 {positive}",
        "pred_classes": f"one channel: the probability of {positive} ({spec.score_head} head)",
        "intended_use": ("Research and worklist triage under a qualified reader who decides every finding; "
                         "not a medical device, not for ruling out a finding."),
        "licence": spec.licence,
        "references": [],
        "network_data_format": {
            "inputs": {INPUT_KEY: {
                "type": "image", "format": "magnitude", "modality": modality, "num_channels": 1,
                "spatial_shape": [pre.input_size, pre.input_size], "dtype": "float32", "value_range": [0, 1],
                "is_patch_data": False, "channel_def": {"0": "image"},
            }},
            "outputs": {OUTPUT_KEY: {
                "type": "probabilities", "format": "classes", "modality": "n/a",
                "num_channels": int(spec.network_args.get("num_outputs", 1)), "spatial_shape": [], "dtype": "float32",
                "value_range": [], "is_patch_data": False,
                "channel_def": output_channels(spec),
            }},
        },
        "medassist": {
            "bundle_format_version": BUNDLE_FORMAT_VERSION,
            "model": spec.name,
            "threshold": spec.threshold,
            "flagged": "probability >= threshold",
            "score_head": spec.score_head,
            "scorer": ("the config's 'scorer' (network_def with the score head): input (N, 1, S, S) -> the "
                       "probability of the finding (N, 1), float32 in 0..1; network_def outputs logits"),
            "weights": "models/model.pt",
            "weights_sha256": spec.sha256,
            "preprocess": {"source": pre.source, "input_size": pre.input_size,
                           "percentiles": [float(p) for p in pre.percentiles], "equalize": bool(pre.equalize)},
            "modalities": list(spec.modalities),
            "excluded_body_parts": list(spec.excluded_body_parts),
            "spec": json.loads(spec.to_json()),
        },
    }


def output_channels(spec: ModelSpec) -> dict[str, str]:
    """What each output of ``network_def`` (the image head's logits) means."""
    types = (spec.validation.get("inference") or {}).get("type_labels")
    names = {"0": f"logit of {spec.labels[1]} (image head, before the sigmoid; the score is the scorer's)"}
    for i, name in enumerate(types if isinstance(types, list) else [], start=1):
        names[str(i)] = f"type logit: {name}"
    return names


def medassist_version(module) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medassist")
    except PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


def inference_config(spec: ModelSpec) -> dict:
    """The bundle's ``configs/inference.json``."""
    pre = spec.preprocess
    size = pre.input_size
    low, high = (float(p) for p in pre.percentiles)
    keys = INPUT_KEY
    return {
        "imports": ["$import glob", "$import json", "$import pathlib"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "input_dir": "$@bundle_root + '/inputs'",
        "input_files": "$sorted(glob.glob(@input_dir + '/*.npy'))",
        "output_file": "$@bundle_root + '/probabilities.json'",
        "batch_size": 8,
        "threshold": spec.threshold,
        "score_head": spec.score_head,
        "network_def": {"_target_": "medassist.models.networks.build_network", "name": spec.network,
                        "args": json.loads(json.dumps(spec.network_args))},
        "network": "$@network_def.to(@device).eval()",
        "scorer": {"_target_": "medassist.models.networks.ScoredNetwork", "network": "@network",
                   "score_head": "@score_head"},
        "load_weights": ("$@network_def.load_state_dict(torch.load(@bundle_root + '/models/model.pt', "
                         "map_location='cpu', weights_only=True))"),
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": keys, "reader": "NumpyReader", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": keys, "channel_dim": "no_channel"},
            {"_target_": "EnsureTyped", "keys": keys, "dtype": "$torch.float32", "track_meta": False},
            {"_target_": "ScaleIntensityRangePercentilesd", "keys": keys, "lower": low, "upper": high,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "Resized", "keys": keys, "spatial_size": size, "size_mode": "longest", "mode": "area"},
            {"_target_": "SpatialPadd", "keys": keys, "spatial_size": [size, size], "mode": "constant"},
        ]},
        "dataset": {"_target_": "Dataset", "data": f"$[{{'{keys}': f}} for f in @input_files]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": "@batch_size",
                       "shuffle": False, "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "probabilities": (f"$torch.cat([@inferer(batch['{keys}'].to(@device), @scorer)[:, 0].detach().cpu() "
                          f"for batch in @dataloader]) if @input_files else torch.zeros(0)"),
        "results": ("$[{'file': f, 'probability': p, 'flagged': p >= @threshold} "
                    "for f, p in zip(@input_files, @probabilities.tolist())]"),
        "write": ("$pathlib.Path(@output_file).write_text(json.dumps({'model': '" + spec.name + "', 'version': '"
                  + spec.version + "', 'threshold': @threshold, 'results': @results}, indent=2) + '\\n')"),
        "initialize": ["$@load_weights"],
        "run": ["$torch.set_grad_enabled(False)", "$@write"],
    }


def metadata_problems(metadata: dict, schema: dict = METADATA_SCHEMA) -> list[str]:
    """Where ``metadata`` breaks ``schema``'s required keys and types (the subset of JSON Schema it uses)."""
    return _check(metadata, schema, "metadata")


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float), "integer": int}


def _check(value, schema: dict, where: str) -> list[str]:
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        fits = any(isinstance(value, _TYPES[k]) and not (k in ("number", "integer") and isinstance(value, bool))
                   for k in kinds)
        if not fits:
            return [f"{where} is not {' or '.join(kinds)}"]
    problems = []
    if isinstance(value, dict):
        problems += [f"{where} has no {key!r}" for key in schema.get("required", ()) if key not in value]
        if len(value) < schema.get("minProperties", 0):
            problems.append(f"{where} is empty")
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                problems += _check(item, sub, f"{where}.{key}")
    elif isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            problems.append(f"{where} has more than {schema['maxItems']} items")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                problems += _check(item, schema["items"], f"{where}[{i}]")
    elif "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{where} is below {schema['minimum']}")
    return problems


def bundle_readme(spec: ModelSpec, metadata: dict) -> str:
    """The bundle's ``docs/README.md``."""
    pre = spec.preprocess
    limits = "\n".join(f"\n{title}:\n\n" + "\n".join(f"- {line}" for line in lines)
                       for title, lines in card_limits(spec).items())
    return f"""# {spec.name} {spec.version}: a medassist model as a MONAI Bundle

{metadata['description']}

**Not a medical device.** Every finding is for a qualified reader to accept, reject or correct.

## What it holds

- `configs/metadata.json`: the MONAI bundle metadata, with medassist's own under `"medassist"`
  (threshold, score head, weights sha256 `{spec.sha256}`, the whole model spec).
- `configs/inference.json`: the network, medassist's preprocessing as MONAI transforms, and a `run`
  that writes `probabilities.json`.
- `models/model.pt`: the state dict of `network_def` (load with `torch.load(..., weights_only=True)`),
  byte for byte the shipped `{spec.weights}` (sha256 above).
- `LICENSE` (and `docs/license.txt`): {spec.licence}.

## What it needs

**medassist installed** (`pip install medassist`, with MONAI and torch): the network is
`medassist.models.networks.build_network("{spec.network}", ...)` (a MONAI ResNet backbone with medassist's
image and cell heads) and the probability comes from `medassist.models.networks.ScoredNetwork`
(the `{spec.score_head}` score head), which MONAI instantiates from the config by `_target_`.
Nothing is downloaded: the weights are in `models/`.

## Input

One `.npy` file per image in `input_dir`: a 2-D float array (rows, cols), the **windowed display
image** medassist decodes (`{pre.source}`: Modality LUT, VOI LUT / window, MONOCHROME1 inverted, 0..1).
The config's `LoadImaged` reads these arrays, not DICOM: MONAI's DICOM readers do not apply the VOI
window, so the numbers would differ. To make them with medassist:

```python
import numpy as np
from medassist.ingest import discover_series
series, _ = discover_series(["STUDY_FOLDER"])
for s in series:
    np.save(f"inputs/{{s.series_uid}}.npy", np.asarray(s.load().{pre.source})[0])
```

Preprocessing (as medassist's): per-image {pre.percentiles[0]:g}th..{pre.percentiles[1]:g}th percentile
scaling to 0..1 (clipped), longest side resized to {pre.input_size} px (area), centred zero pad to
{pre.input_size}x{pre.input_size}.

## How to run

```bash
python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
    --bundle_root . --input_dir /path/to/npy --output_file probabilities.json
```

MONAI's command line needs `fire` (`pip install fire`); without it, the same from Python:
`from monai.bundle import run; run(config_file=..., meta_file=..., bundle_root=..., input_dir=..., output_file=...)`.
MONAI warns that a config instantiates `_target_`s and evaluates `$` expressions: use a bundle from
a source you trust, and check the sha256 of `models/model.pt` against the one above.

`probabilities.json` lists each file's probability and `flagged` (probability >= the threshold
**{spec.threshold}**). In Python: `ConfigParser` on `configs/inference.json`, evaluate
`load_weights`, then `scorer` (input (N, 1, {pre.input_size}, {pre.input_size}) -> probability (N, 1))
and `preprocessing`.

## Scope and limits

- Modalities: {', '.join(spec.modalities)}; not for body parts {', '.join(spec.excluded_body_parts) or '(none excluded)'}.
  medassist's triage routes series by DICOM modality and body part; this bundle does not check either.
- The threshold was chosen on the validation split, so its figures are optimistic.
{limits}

Exported with `medassist export-model {spec.name} --format monai-bundle`; checked when written:
MONAI running this config reproduced medassist's probabilities within {AGREEMENT_TOLERANCE:g} on probe inputs.
"""


def card_limits(spec: ModelSpec) -> dict[str, list[str]]:
    """The out-of-scope uses and caveats of the model card of ``spec`` (from a checkout's
    ``model_cards/NAME.json`` of the same version), or a pointer to the card."""
    path = Path(__file__).resolve().parents[2] / "model_cards" / f"{spec.name}.json"
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        card = {}
    if (card.get("model_details") or {}).get("version") != spec.version:
        return {"Model card": [f"See the model card of {spec.name} {spec.version} (medassist audit) for its validation, "
                               "subgroups and caveats."]}
    sections = {"Out of scope (from the model card)": (card.get("intended_use") or {}).get("out_of_scope") or [],
                "Caveats (from the model card)": card.get("caveats_and_recommendations") or []}
    return {title: [str(line) for line in lines] for title, lines in sections.items() if lines}


LICENSE_TEXT = """medassist model {name} {version}

{licence}.

The model weights (models/model.pt), the configs and the documentation of this bundle are
{copyright}, licensed under the Apache License, Version 2.0 (the "License"); you may not use
these files except in compliance with the License. You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the License
is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or
implied. See the License for the specific language governing permissions and limitations under the
License.

Training data: {training_data}
Not a medical device.
"""


def probe_images(spec: ModelSpec, n: int = 3) -> list[np.ndarray]:
    """Seeded display-like images of different shapes (portrait, landscape, already square)."""
    gen = np.random.default_rng(19)
    size = spec.preprocess.input_size
    shapes = [(int(size * 1.3) + 1, int(size * 0.9)), (int(size * 0.7), size + 37), (size, size)][:n]
    images = []
    for rows, cols in shapes:
        yy, xx = np.mgrid[0:rows, 0:cols]
        smooth = 0.5 + 0.3 * np.sin(yy / 17.0) * np.cos(xx / 23.0)
        images.append(np.clip(smooth + gen.normal(0, 0.1, (rows, cols)), 0, 1).astype(np.float32))
    return images


def medassist_probabilities(model: LoadedModel, images: list[np.ndarray]) -> np.ndarray:
    """medassist's own scores of display images (prepare_2d + the loaded model)."""
    from medassist.preprocess.transforms import prepare_2d

    batch = torch.stack([prepare_2d(image, model.spec.preprocess)[0] for image in images])
    return model.scores(batch).numpy()


def bundle_probabilities(bundle: Path, images: list[np.ndarray], *, device: str = "cpu") -> np.ndarray:
    """The bundle's probabilities of display images, by ``monai.bundle.ConfigParser`` running its own
    ``configs/inference.json`` (the images written as .npy, as a user would)."""
    from monai.bundle import ConfigParser

    with tempfile.TemporaryDirectory(prefix="medassist-bundle-probe-") as tmp:
        for i, image in enumerate(images):
            np.save(Path(tmp) / f"probe{i:02d}.npy", image)
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        parser.read_meta(str(bundle / "configs" / "metadata.json"))
        parser["bundle_root"] = str(bundle)
        parser["input_dir"] = tmp
        parser["device"] = f"$torch.device('{device}')"
        parser.get_parsed_content("initialize")
        with torch.no_grad():
            return parser.get_parsed_content("probabilities").numpy()


def export_monai_bundle(spec: ModelSpec, out_dir: str | Path, weights_dir: str | Path = WEIGHTS_DIR) -> Path:
    """Write the MONAI bundle of ``spec`` to ``out_dir``/NAME/ from its checked weights; its path.

    The bundle is assembled in a temporary folder beside it and moved into place only after its
    metadata pass ``METADATA_SCHEMA`` and MONAI running its config agrees with medassist's scores
    (a failed check raises MedassistError and writes nothing). An existing ``NAME/`` is replaced
    only when it is a medassist bundle.
    """
    reason = unsupported_reason(spec)
    if reason:
        raise MedassistError(f"--format monai-bundle: {reason}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedassistError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    target = bundle_dir(spec, out)
    if target.exists() and not _is_medassist_bundle(target):
        raise MedassistError(f"{target}: exists and is not a medassist MONAI bundle; not overwritten")
    _path, weights = read_weights(spec, Path(weights_dir))  # sha256 checked against the spec
    model = load_model(spec, torch.device("cpu"), Path(weights_dir))
    metadata = bundle_metadata(spec)
    problems = metadata_problems(metadata)
    if problems:  # a bug here, not the user's: still refuse rather than write a bundle MONAI rejects
        raise MedassistError(f"{target}: bundle metadata break the MONAI bundle specification: {'; '.join(problems)}")
    with atomic_folder(target) as tmp:
        for sub in ("configs", "models", "docs"):
            (tmp / sub).mkdir(parents=True)
        _write_json(tmp / "configs" / "metadata.json", metadata)
        _write_json(tmp / "configs" / "inference.json", inference_config(spec))
        (tmp / "models" / "model.pt").write_bytes(weights)
        (tmp / "docs" / "README.md").write_text(bundle_readme(spec, metadata))
        licence = LICENSE_TEXT.format(name=spec.name, version=spec.version, licence=spec.licence.rstrip("."),
                                      copyright=COPYRIGHT, training_data=spec.training_data)
        (tmp / "LICENSE").write_text(licence)
        (tmp / "docs" / "license.txt").write_text(licence)
        images = probe_images(spec)
        diff = float(np.max(np.abs(bundle_probabilities(tmp, images) - medassist_probabilities(model, images))))
        if not diff <= AGREEMENT_TOLERANCE:
            raise MedassistError(f"{target}: MONAI running the bundle gives probabilities up to {diff:.2g} away from "
                                 f"medassist's (allowed {AGREEMENT_TOLERANCE:g}) for model {spec.name}; not written")
        if target.exists():
            shutil.rmtree(target)  # a medassist bundle (checked above): replaced by the new one
    return target


def _is_medassist_bundle(path: Path) -> bool:
    try:
        return "medassist" in json.loads((path / "configs" / "metadata.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
