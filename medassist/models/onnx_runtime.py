"""Scoring with ONNX Runtime on the CPU: ``medassist triage --runtime {torch,onnx,auto}``.

An export (``medassist.models.export``, ``NAME.onnx`` in an ``--onnx-dir``) gives the network's raw
image and cell logits; ``medassist.models.heads`` turns them into the score exactly as for torch.
Before a file is used:

* its metadata must be the contract of the spec in use (``export.contract_problems``): the same
  weights sha256, input size, normalisation, labels, threshold and score head; a stale export (of
  other weights) or one of another model is refused, naming the file;
* ONNX Runtime must reproduce the torch probabilities on seeded probe inputs within
  ``AGREEMENT_TOLERANCE`` (``agreement``), on this machine, with this onnxruntime.

``--runtime onnx`` raises MedassistError when either fails (or the file is missing, or onnxruntime
is not installed: ``pip install 'medassist[onnx]'``); ``auto`` logs why and scores with torch.
Saliency always runs on the torch network (``OnnxLoadedModel.network``): Captum needs gradients.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medassist.errors import MedassistError
from medassist.models.export import INPUT_NAME, OUTPUT_NAMES, contract_problems, onnx_file
from medassist.models.heads import score_probability
from medassist.models.registry import LoadedModel
from medassist.models.spec import ModelSpec
from medassist.optional import require

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx", "auto")
DEFAULT_RUNTIME = "torch"  # README, Faster scoring: ONNX Runtime is not clearly faster on this CPU
AGREEMENT_TOLERANCE = 1e-4  # largest |probability difference| allowed between torch and ONNX Runtime
RUNTIME_FEATURE = "medassist triage --runtime onnx"


def onnxruntime_module(feature: str = RUNTIME_FEATURE):
    """The onnxruntime module, through the optional-dependency gate (MissingDependency otherwise)."""
    return require("onnxruntime", extra="onnx", feature=feature)


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime session options: ``threads`` intra-op threads (default: torch's thread count,
    the one number the rest of the run uses), one inter-op thread, every graph optimisation."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


@dataclass
class OnnxScorer:
    """An ONNX Runtime session on an export whose contract matched its spec."""

    session: Any
    path: Path
    spec: ModelSpec
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_bytes(cls, data: bytes, path: Path, spec: ModelSpec, threads: int | None = None) -> "OnnxScorer":
        """A session on the graph ``data`` (read from, or to be written to, ``path``), its contract checked."""
        ort = onnxruntime_module()
        try:
            session = ort.InferenceSession(data, sess_options=session_options(threads),
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own error types for a corrupt graph
            raise MedassistError(f"{path}: not a usable ONNX model ({type(exc).__name__}: {exc})") from exc
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        problems = contract_problems(metadata, spec)
        if problems:
            raise MedassistError(
                f"{path}: this ONNX export does not fit model {spec.name} {spec.version} ({'; '.join(problems)}); "
                f"it is stale or of another model: run medassist export-model {spec.name} --format onnx "
                f"--out {path.parent}")
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
            raise MedassistError(f"{path}: ONNX graph has inputs {inputs} and outputs {outputs}; "
                                 f"expected [{INPUT_NAME!r}] and {list(OUTPUT_NAMES)}")
        return cls(session=session, path=path, spec=spec, metadata=metadata)

    def logits(self, batch: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw image logits (N, outputs) and cell logits (N, 1, h, w) of a (N, 1, S, S) batch."""
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().float().cpu().numpy()
        x = np.ascontiguousarray(batch, dtype=np.float32)
        image, cells = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return image, cells

    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """The spec's score (N,) of a batch, through ``heads.score_probability`` as for torch."""
        image, cells = self.logits(batch)
        return score_probability(torch.from_numpy(image), torch.from_numpy(cells), self.spec.score_head)


def load_scorer(spec: ModelSpec, onnx_dir: str | Path, threads: int | None = None) -> OnnxScorer:
    """The checked session on ``onnx_dir``/NAME.onnx; MedassistError naming the file when it is
    missing, unreadable, not ONNX or stale (``OnnxScorer.from_bytes``)."""
    onnxruntime_module()  # a missing package says so before a missing file does
    path = onnx_file(spec, onnx_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise MedassistError(f"{path}: no ONNX export of model {spec.name}: run medassist export-model "
                             f"{spec.name} --format onnx --out {path.parent}") from exc
    except OSError as exc:
        raise MedassistError(f"{path}: cannot read the ONNX export ({exc.strerror or exc})") from exc
    return OnnxScorer.from_bytes(data, path, spec, threads)


def probe_inputs(spec: ModelSpec, n: int = 2, seed: int = 0) -> torch.Tensor:
    """Seeded inputs in [0, 1] (N, 1, S, S) for the agreement check: smooth blobs plus fine noise,
    zero-padded at the edges like a letterboxed image, so both heads see more than a flat field."""
    size = spec.preprocess.input_size
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, max(size // 32, 2), max(size // 32, 2), generator=generator)
    smooth = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x = (0.8 * smooth + 0.2 * torch.rand(n, 1, size, size, generator=generator)).clamp(0, 1)
    pad = size // 8
    x[..., :pad, :] = 0
    x[..., -pad:, :] = 0
    return x


def raw_probabilities(image_logits: torch.Tensor | np.ndarray, cell_logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """Sigmoid of every image and cell logit, flattened per input (N, outputs + h*w): what the
    agreement check compares, so every head (and the tumour model's type outputs) is covered."""
    parts = [torch.as_tensor(np.asarray(v)).float().flatten(1) for v in (image_logits, cell_logits)]
    return torch.cat(parts, 1).sigmoid().numpy()


def agreement(model: LoadedModel, scorer: OnnxScorer, inputs: torch.Tensor | None = None) -> float:
    """The largest |probability difference| between torch and ONNX Runtime on ``inputs`` (default:
    ``probe_inputs``), over every output of both heads."""
    x = probe_inputs(model.spec) if inputs is None else inputs
    with torch.no_grad():
        image, cells = model.network.forward_all(x.to(model.device).contiguous(memory_format=torch.channels_last))
    ours = raw_probabilities(image.cpu(), cells.cpu())
    theirs = raw_probabilities(*scorer.logits(x))
    return float(np.abs(ours - theirs).max())


class OnnxNetwork(nn.Module):
    """The exported graph behind the network interface scoring code calls (``forward_all``): the
    tumour model's volume scoring (``tumor.slice_probabilities``) runs on it unchanged. Its one
    (empty) parameter says the device is the CPU; it has no weights and no gradients."""

    def __init__(self, scorer: OnnxScorer) -> None:
        super().__init__()
        self.scorer = scorer
        self._device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    @torch.no_grad()
    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, cells = self.scorer.logits(x)
        return torch.from_numpy(image), torch.from_numpy(cells)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[0]


@dataclass
class OnnxLoadedModel(LoadedModel):
    """A loaded model that scores with ONNX Runtime; ``network`` stays the torch one, for saliency."""

    scorer: OnnxScorer | None = None

    runtime = "onnx"

    @property
    def scoring_network(self) -> nn.Module:
        assert self.scorer is not None
        return OnnxNetwork(self.scorer)

    def scores_and_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Scores (N,) from ONNX Runtime; no feature map (saliency runs its own torch pass)."""
        assert self.scorer is not None
        return self.scorer.scores(batch), None


def check_runtime(runtime: str) -> None:
    """``runtime`` is one of RUNTIMES (MedassistError otherwise)."""
    if runtime not in RUNTIMES:
        raise MedassistError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")


def with_runtime(model: LoadedModel, runtime: str, onnx_dir: str | Path | None,
                 threads: int | None = None) -> LoadedModel:
    """``model`` as it should score under ``runtime``: itself for torch; for onnx an
    OnnxLoadedModel (MedassistError when it cannot: not installed, no --onnx-dir, missing, stale,
    disagreeing, or the model is not on the CPU); for auto the ONNX one when all of that holds,
    else ``model`` with a log line saying why."""
    check_runtime(runtime)
    if runtime == "torch":
        return model
    try:
        return onnx_model(model, onnx_dir, threads)
    except MedassistError as exc:  # MissingDependency is one
        if runtime == "onnx":
            raise
        log.warning("--runtime auto: model %s scores with torch (%s)", model.spec.name, exc)
        return model


def onnx_model(model: LoadedModel, onnx_dir: str | Path | None, threads: int | None = None) -> OnnxLoadedModel:
    """The ONNX Runtime twin of ``model``, after its contract and agreement checks."""
    onnxruntime_module()
    if onnx_dir is None:
        raise MedassistError(f"model {model.spec.name}: --runtime onnx needs --onnx-dir DIR, the folder "
                             "medassist export-model wrote")
    if model.device.type != "cpu":
        raise MedassistError(f"model {model.spec.name}: ONNX Runtime scores on the CPU only; the model is on "
                             f"{model.device} (use --device cpu, or --runtime torch)")
    scorer = load_scorer(model.spec, onnx_dir, threads)
    diff = agreement(model, scorer)
    if not diff <= AGREEMENT_TOLERANCE:
        raise MedassistError(f"{scorer.path}: ONNX Runtime's probabilities differ from torch's by up to {diff:.2g} "
                             f"(allowed {AGREEMENT_TOLERANCE:g}) on probe inputs; not used")
    log.info("model %s scores with ONNX Runtime (%s; agreement %.1e on probe inputs)",
             model.spec.name, scorer.path, diff)
    return OnnxLoadedModel(spec=model.spec, network=model.network, device=model.device, scorer=scorer)
