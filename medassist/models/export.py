"""Exporting a shipped model to another runtime's format: ``medassist export-model NAME --format F``.

One function per format in ``EXPORT_FORMATS``, each taking the checked spec and weights and writing
into a folder: ``onnx`` (here) one file, ``monai-bundle`` one bundle folder (``export_bundle.py``).

ONNX (``export_onnx``): the network's two raw outputs, ``image_logits`` (N, outputs) and
``cell_logits`` (N, 1, h, w), from an ``input`` of (N, 1, S, S) float32, with a dynamic batch axis,
so ``medassist.models.heads`` turns them into the score exactly as it does for torch. The file
carries its preprocessing contract as ONNX ``metadata_props`` (``onnx_contract``: input size,
source and intensity normalisation, labels, threshold, score head, network and the sha256 of the
torch weights it was traced from, plus the whole spec as JSON); ``medassist.models.onnx_runtime``
refuses a file whose contract differs from the spec it is used with (a stale export, or one of
another model). The export is checked before it is kept: ONNX Runtime must reproduce the torch
probabilities on probe inputs (``onnx_runtime.agreement``), else nothing is written.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from medassist.atomic import write_atomic
from medassist.errors import MedassistError
from medassist.models.export_bundle import export_monai_bundle
from medassist.models.registry import WEIGHTS_DIR, load_model
from medassist.models.spec import ModelSpec
from medassist.optional import require, require_extra

ONNX_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAMES = ("image_logits", "cell_logits")
CONTRACT_VERSION = "1"
PREFIX = "medassist."
# the keys whose values must equal the spec's for the file to be used (all but the full spec JSON)
CONTRACT_KEYS = (
    "contract_version", "model", "version", "weights_sha256", "network", "network_args", "input_kind",
    "input_size", "source", "percentiles", "equalize", "labels", "type_labels", "threshold", "score_head",
    "input", "outputs",
)
ONNX_FEATURE = "medassist export-model --format onnx"


def onnx_file(spec: ModelSpec, folder: str | Path) -> Path:
    """Where the ONNX export of ``spec`` lives in ``folder``: ``NAME.onnx``."""
    return Path(folder) / f"{spec.name}.onnx"


def onnx_contract(spec: ModelSpec) -> dict[str, str]:
    """The metadata an ONNX export of ``spec`` carries (``medassist.<key>`` -> string value)."""
    pre = spec.preprocess
    types = (spec.validation.get("inference") or {}).get("type_labels")
    contract = {
        "contract_version": CONTRACT_VERSION,
        "model": spec.name,
        "version": spec.version,
        "weights_sha256": spec.sha256,
        "network": spec.network,
        "network_args": json.dumps(spec.network_args, sort_keys=True),
        "input_kind": spec.input_kind,
        "input_size": str(pre.input_size),
        "source": pre.source,
        "percentiles": json.dumps([float(p) for p in pre.percentiles]),
        "equalize": json.dumps(bool(pre.equalize)),
        "labels": json.dumps(list(spec.labels)),
        "type_labels": json.dumps(types if isinstance(types, list) else None),
        "threshold": repr(float(spec.threshold)),
        "score_head": spec.score_head,
        "input": f"{INPUT_NAME}: float32 (batch, 1, {pre.input_size}, {pre.input_size})",
        "outputs": ",".join(OUTPUT_NAMES),
    }
    assert tuple(contract) == CONTRACT_KEYS
    return {PREFIX + key: value for key, value in contract.items()} | {PREFIX + "spec": spec.to_json()}


def contract_problems(stored: dict[str, str], spec: ModelSpec) -> list[str]:
    """How the metadata ``stored`` in an export differs from what ``spec`` needs (empty: it fits)."""
    expected = onnx_contract(spec)
    problems = []
    for key in CONTRACT_KEYS:
        name = PREFIX + key
        have, want = stored.get(name), expected[name]
        if have is None:
            problems.append(f"no {name}")
        elif have != want:
            if key == "weights_sha256":
                problems.append(f"exported from weights sha256 {have[:16]}..., the spec's are {want[:16]}...")
            else:
                problems.append(f"{key} {have!r}, the spec's is {want!r}")
    return problems


class _RawOutputs(nn.Module):
    """The network as the exported graph sees it: input -> (image logits, cell logits)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.network.forward_all(x)


def export_onnx(spec: ModelSpec, out_dir: str | Path, weights_dir: str | Path = WEIGHTS_DIR,
                *, opset: int = ONNX_OPSET) -> Path:
    """Write ``out_dir``/NAME.onnx from the checked weights of ``spec``; its path.

    The file is written atomically, and only after ONNX Runtime has reproduced the torch
    probabilities on probe inputs (``onnx_runtime.agreement``); a failed check raises MedassistError.
    The passed check is recorded beside the file (``onnx_runtime.record_agreement``).
    """
    require_extra("onnx", feature=ONNX_FEATURE)  # onnx writes the graph, onnxruntime checks it
    onnx = require("onnx", extra="onnx", feature=ONNX_FEATURE)
    from medassist.models.onnx_runtime import AGREEMENT_TOLERANCE, OnnxScorer, agreement, record_agreement

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedassistError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    model = load_model(spec, torch.device("cpu"), Path(weights_dir))
    network = model.network.to(memory_format=torch.contiguous_format).eval()
    size = spec.preprocess.input_size
    example = torch.zeros(2, 1, size, size)
    buffer = io.BytesIO()
    batch_axis = {0: "batch"}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice: it needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _RawOutputs(network).eval(), (example,), buffer, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: batch_axis for name in (INPUT_NAME, *OUTPUT_NAMES)}, opset_version=opset,
            do_constant_folding=True, dynamo=False,
        )
    graph = onnx.load_from_string(buffer.getvalue())
    del graph.metadata_props[:]
    for key, value in onnx_contract(spec).items():
        graph.metadata_props.add(key=key, value=value)
    graph.doc_string = f"medassist {spec.name} {spec.version}: raw logits; the score head is {spec.score_head}"
    onnx.checker.check_model(graph)
    data = graph.SerializeToString()
    target = onnx_file(spec, out)
    scorer = OnnxScorer.from_bytes(data, target, spec)
    diff = agreement(model, scorer)
    if not diff <= AGREEMENT_TOLERANCE:
        raise MedassistError(f"{target}: ONNX Runtime gives probabilities up to {diff:.2g} away from torch's "
                             f"(allowed {AGREEMENT_TOLERANCE:g}) for model {spec.name}; not written")
    write_atomic(target, data)
    record_agreement(scorer, diff)  # triage on this machine need not check (nor build the torch network) again
    return target


# format -> exporter(spec, out_dir, weights_dir) -> written path (a file, or the bundle's folder)
EXPORT_FORMATS: dict[str, Callable[[ModelSpec, Path, Path], Path]] = {
    "onnx": export_onnx, "monai-bundle": export_monai_bundle,
}


def export_model(spec: ModelSpec, fmt: str, out_dir: str | Path, weights_dir: str | Path = WEIGHTS_DIR) -> Path:
    """Export ``spec`` in format ``fmt`` into ``out_dir``; the written path."""
    if fmt not in EXPORT_FORMATS:
        raise MedassistError(f"--format {fmt!r}: choose one of {', '.join(sorted(EXPORT_FORMATS))}")
    return EXPORT_FORMATS[fmt](spec, Path(out_dir), Path(weights_dir))
