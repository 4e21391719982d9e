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
is not installed: ``pip install 'medassist[onnx]'``); ``auto`` (the default) logs why and scores
with torch. Saliency always runs on the torch network (``OnnxLoadedModel.network``): Captum needs
gradients.

Where exports live by default (``default_onnx_dir``): ``$MEDASSIST_ONNX_DIR``, else the user's cache
(``$XDG_CACHE_HOME`` or ``~/.cache``, then ``medassist/onnx``); ``make install`` exports every shipped
model there. A passed agreement check is recorded beside the file (``NAME.onnx.agreement.json``:
the file's and the weights' sha256, the tolerance, and the versions and CPU it ran on), so a later
run on the same machine, versions and file scores without building the torch network first; the
torch network (and MONAI, ~3 s to import) is then loaded only when a saliency map needs it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medassist.atomic import write_atomic
from medassist.errors import MedassistError
from medassist.models.export import INPUT_NAME, OUTPUT_NAMES, contract_problems, onnx_file
from medassist.models.heads import score_probability
from medassist.models.integrity import sha256_bytes
from medassist.models.registry import WEIGHTS_DIR, LoadedModel, load_model
from medassist.models.spec import ModelSpec
from medassist.optional import require

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx", "auto")
# README, Faster scoring: ONNX Runtime scores 1.4-1.6x faster than torch on the CPU, to float rounding
DEFAULT_RUNTIME = "auto"
AGREEMENT_TOLERANCE = 1e-4  # largest |probability difference| allowed between torch and ONNX Runtime
RUNTIME_FEATURE = "medassist triage --runtime onnx"
ONNX_DIR_ENV = "MEDASSIST_ONNX_DIR"
AGREEMENT_SUFFIX = ".agreement.json"


def default_onnx_dir() -> Path:
    """Where exports are looked for (and written by ``export-model`` without ``--out``):
    ``$MEDASSIST_ONNX_DIR``, else ``$XDG_CACHE_HOME/medassist/onnx`` (``~/.cache/medassist/onnx``)."""
    if os.environ.get(ONNX_DIR_ENV):
        return Path(os.environ[ONNX_DIR_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "medassist" / "onnx"


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
    sha256: str = ""  # of the graph's bytes: what a recorded agreement check is tied to

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
        return cls(session=session, path=path, spec=spec, metadata=metadata, sha256=sha256_bytes(data))

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


def runtime_environment() -> str:
    """The versions and CPU an agreement check depends on: onnxruntime, torch, numpy, the machine."""
    ort = onnxruntime_module()
    return (f"onnxruntime {ort.__version__}; torch {torch.__version__}; numpy {np.__version__}; "
            f"{platform.machine()} {cpu_model()}")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@dataclass(frozen=True)
class AgreementRecord:
    """A passed agreement check of one export, as kept beside it (``NAME.onnx.agreement.json``)."""

    onnx_sha256: str
    weights_sha256: str
    environment: str
    tolerance: float
    max_diff: float

    def holds_for(self, scorer: OnnxScorer) -> bool:
        """Whether this check covers ``scorer``: the same graph bytes, weights, tolerance and environment."""
        return (self.onnx_sha256 == scorer.sha256 and self.weights_sha256 == scorer.spec.sha256
                and self.tolerance == AGREEMENT_TOLERANCE and self.environment == runtime_environment()
                and self.max_diff <= AGREEMENT_TOLERANCE)


def agreement_file(onnx_path: Path) -> Path:
    """Where the agreement record of ``onnx_path`` lives: beside it, ``NAME.onnx.agreement.json``."""
    return onnx_path.with_name(onnx_path.name + AGREEMENT_SUFFIX)


def record_agreement(scorer: OnnxScorer, max_diff: float) -> Path:
    """Keep a passed check of ``scorer`` beside its file; the record's path."""
    target = agreement_file(scorer.path)
    record = AgreementRecord(onnx_sha256=scorer.sha256, weights_sha256=scorer.spec.sha256,
                             environment=runtime_environment(), tolerance=AGREEMENT_TOLERANCE, max_diff=max_diff)
    write_atomic(target, json.dumps(asdict(record), indent=2) + "\n")
    return target


def recorded_agreement(scorer: OnnxScorer) -> AgreementRecord | None:
    """The recorded check of ``scorer``'s file when it covers this graph here and now, else None
    (no record, unreadable, or of other bytes, weights, versions or CPU)."""
    try:
        record = AgreementRecord(**json.loads(agreement_file(scorer.path).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return record if record.holds_for(scorer) else None


class OnnxLoadedModel(LoadedModel):
    """A loaded model that scores with ONNX Runtime. ``network`` is the torch one, for saliency: built
    on first use (``load_network``) when the agreement check did not need it."""

    runtime = "onnx"

    def __init__(self, *, spec: ModelSpec, device: torch.device, scorer: OnnxScorer,
                 load_network: Callable[[], nn.Module], network: nn.Module | None = None) -> None:
        self.spec, self.device, self.scorer = spec, device, scorer
        self._load_network = load_network
        self._network = network

    @property
    def network(self) -> nn.Module:  # type: ignore[override]  # a lazily built field of LoadedModel
        if self._network is None:
            log.info("model %s: torch network built (saliency runs on it)", self.spec.name)
            self._network = self._load_network()
        return self._network

    @property
    def network_loaded(self) -> bool:
        """Whether the torch network has been built (for tests and logs)."""
        return self._network is not None

    def __repr__(self) -> str:
        return f"OnnxLoadedModel({self.spec.name} {self.spec.version}, {self.scorer.path})"

    @property
    def scoring_network(self) -> nn.Module:
        return OnnxNetwork(self.scorer)

    def scores_and_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Scores (N,) from ONNX Runtime; no feature map (saliency runs its own torch pass)."""
        return self.scorer.scores(batch), None


def check_runtime(runtime: str) -> None:
    """``runtime`` is one of RUNTIMES (MedassistError otherwise)."""
    if runtime not in RUNTIMES:
        raise MedassistError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")


def load_for_runtime(spec: ModelSpec, device: torch.device, runtime: str, onnx_dir: str | Path | None = None,
                     weights_dir: str | Path = WEIGHTS_DIR, threads: int | None = None) -> LoadedModel:
    """The model ``spec`` as it should score under ``runtime`` (triage's way in): the torch model
    (``registry.load_model``) for torch; for onnx and auto as ``with_runtime`` says, without building
    the torch network when the export's agreement is on record for this machine."""
    check_runtime(runtime)
    torch_model = functools.cache(lambda: load_model(spec, device, Path(weights_dir)))  # built at most once
    if runtime == "torch":
        return torch_model()
    return _choose(spec, device, torch_model, runtime, onnx_dir, threads)


def with_runtime(model: LoadedModel, runtime: str, onnx_dir: str | Path | None,
                 threads: int | None = None) -> LoadedModel:
    """``model`` as it should score under ``runtime``: itself for torch; for onnx an
    OnnxLoadedModel (MedassistError when it cannot: not installed, missing, stale, disagreeing, or
    the model is not on the CPU); for auto the ONNX one when all of that holds, else ``model`` with
    a log line saying why. ``onnx_dir`` None: ``default_onnx_dir()``."""
    check_runtime(runtime)
    if runtime == "torch":
        return model
    # the torch network is in memory already: the agreement check runs now, whatever is on record
    return _choose(model.spec, model.device, lambda: model, runtime, onnx_dir, threads, check_now=True)


def _choose(spec: ModelSpec, device: torch.device, torch_model: Callable[[], LoadedModel], runtime: str,
            onnx_dir: str | Path | None, threads: int | None, check_now: bool = False) -> LoadedModel:
    """The ONNX model when it can be had (MedassistError for onnx), else torch's with a log line (auto)."""
    try:
        return onnx_model(spec, device, torch_model, onnx_dir, threads, check_now=check_now)
    except MedassistError as exc:  # MissingDependency is one
        if runtime == "onnx":
            raise
        log.warning("--runtime auto: model %s scores with torch (%s)", spec.name, exc)
        return torch_model()


def onnx_model(spec: ModelSpec, device: torch.device, torch_model: Callable[[], LoadedModel],
               onnx_dir: str | Path | None, threads: int | None = None, *,
               check_now: bool = False) -> OnnxLoadedModel:
    """The ONNX Runtime twin of ``spec``'s model, after its contract and agreement checks: the check
    on record (``recorded_agreement``) when it covers this file here (unless ``check_now``), else
    run now against ``torch_model()`` and recorded when it passes (where the folder is writable)."""
    onnxruntime_module()
    if device.type != "cpu":
        raise MedassistError(f"model {spec.name}: ONNX Runtime scores on the CPU only; the model is on "
                             f"{device} (use --device cpu, or --runtime torch)")
    folder = default_onnx_dir() if onnx_dir is None else Path(onnx_dir)
    scorer = load_scorer(spec, folder, threads)
    record = None if check_now else recorded_agreement(scorer)
    network = None  # built now only when the check needs it
    if record is not None:
        diff, how = record.max_diff, "on record"
    else:
        loaded = torch_model()
        network = loaded.network
        diff, how = agreement(loaded, scorer), "checked now"
        if not diff <= AGREEMENT_TOLERANCE:
            raise MedassistError(f"{scorer.path}: ONNX Runtime's probabilities differ from torch's by up to "
                                 f"{diff:.2g} (allowed {AGREEMENT_TOLERANCE:g}) on probe inputs; not used")
        try:
            record_agreement(scorer, diff)
        except OSError as exc:  # a read-only folder: the check runs again next time
            log.info("%s: agreement not recorded (%s)", scorer.path, exc.strerror or exc)
    log.info("model %s scores with ONNX Runtime (%s; agreement %.1e on probe inputs, %s)",
             spec.name, scorer.path, diff, how)
    return OnnxLoadedModel(spec=spec, device=device, scorer=scorer,
                           load_network=lambda: torch_model().network, network=network)
