"""Triage on Ray Data (``medassist triage --backend ray``): the local backend's worklist, cluster-wide.

One Ray Data dataset per run, in three stages plus the driver:

1. driver: discover the series, take the run lock, open the journal and ``plan`` the jobs exactly
   as the local backend does (unreadable files, not-applicable series and rows finished by an
   earlier run are decided here, never sent to the cluster);
2. decode stage, CPU tasks (``decode_row``): the series is rebuilt from plain data (``series_ref``)
   and decoded and preprocessed by the local backend's own ``JobDataset``; a volume series
   (a family scored a study at a time, ``input_kind="volume"``) is decoded and cut into slice inputs by its ``VolumeDataset`` and
   scored by the model stage;
3. model stage, a pool of actors (``ModelStage``; one GPU each when the cluster has GPUs): each
   model is loaded once per actor, batches are scored with ``run.score_batch`` (radiographs)
   or ``score_decoded_volume`` (volumes), and the saliency maps the ``explain`` policy asks for are
   written with ``explain_job``;
4. writer stage, on the driver: each result is journaled (fsynced) as it arrives and the worklist
   rewritten atomically every ``checkpoint_every`` results and at the end (``Rows``), so a run
   killed at any point resumes like a local one, and the worklist is the one the local backend
   writes (same rows, messages and order; scores equal to float rounding).

What travels to the cluster is plain data: a series' identifiers and file paths, and its loader
pickled when it pickles (the DICOM and NIfTI loaders do); a loader that does not (a closure) is
replaced on the worker by finding the series again in its files. Workers read the input files and
the weights and write saliency maps into the output folder by path: on a multi-node cluster these
must be on storage every node mounts at the same path (relative paths are taken from the driver's
working directory).

Ray is an optional dependency (``pip install 'medassist[ray]'``), imported only here, by
``import_ray`` (through ``medassist.optional.require``). Without ``ray_address`` a single-node cluster is started on this machine, bound to
127.0.0.1, and shut down at the end; with one (or ``"auto"``) an existing cluster is joined; when
Ray is already initialised in this process (tests, notebooks) that session is used and left running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from medassist.datamodel import Image, IngestProblem, Series
from medassist.errors import MedassistError
from medassist.models.registry import LoadedModel, choose_device, load_model
from medassist.families import family_for
from medassist.models.spec import ModelSpec
from medassist.optional import require
from medassist.triage.inputs import (
    Job,
    JobDataset,
    Prepared,
    VolumeDataset,
    collate_prepared,
)
from medassist.triage.options import TriageOptions
from medassist.triage.run import (
    Finished,
    ScoredJob,
    TriageSummary,
    discover_all,
    explain_job,
    prepare_run,
    record_run,
    score_batch,
    score_decoded_volume,
    wants_saliency,
)

if TYPE_CHECKING:
    from medassist.ingest.dicom import Skipped

log = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
# Memory a decode task reserves: it may hold one decoded series (a 512 x 512 x 150 MR volume, with its
# display copy and its pickled payload, peaked at 1.0 GiB in benchmarks/bench_pipeline.py). At most
# a quarter of the cluster's memory, so a task always fits. A request the model actors do not share,
# it also keeps decoding a stage of its own: Ray Data fuses a task stage into the actor stage after
# it when their requests are equal.
DECODE_MEMORY = 3 << 29  # 1.5 GiB
RAY_FEATURE = "medassist triage --backend ray"


def import_ray() -> ModuleType:
    """The ``ray`` module (with ``ray.data``), or a MedassistError (``optional.MissingDependency``)
    saying how to install it: pip install 'medassist[ray]'."""
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    ray = require("ray", extra="ray", feature=RAY_FEATURE)
    require("ray.data", extra="ray", feature=RAY_FEATURE)
    return ray


def start_local_cluster(
    *, num_cpus: int | None = None, num_gpus: int | None = None, object_store_memory: int | None = None,
    attempts: int = 3,
) -> ModuleType:
    """Start a single-node Ray cluster on this machine (127.0.0.1, no dashboard); the ray module.

    On a heavily loaded machine Ray's node start can time out (its raylet gives its agents 15 s to
    report their ports): the start is tried ``attempts`` times before giving up with a
    MedassistError, and the processes a failed start leaves behind are ended.
    """
    ray = import_ray()
    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                address="local", num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store_memory,
                include_dashboard=False, _node_ip_address=LOCAL_HOST, configure_logging=False,
            )
            return ray
        except Exception as exc:  # Ray raises plain Exception for a node that did not come up
            with contextlib.suppress(Exception):
                ray.shutdown()
            end_child_processes_under(os.path.dirname(ray.__file__))
            if attempt == attempts:
                raise MedassistError(f"could not start a local Ray cluster: {exc}") from exc
            log.warning("Ray did not start (%s); trying again", exc)
    raise AssertionError("unreachable")


def end_child_processes_under(package_dir: str) -> None:
    """Terminate this process's children running code from ``package_dir`` (Linux /proc; elsewhere
    nothing): the GCS, monitor and log processes of a Ray node that failed to start, which
    ``ray.shutdown`` does not know about."""
    ended = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and package_dir in command:
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGTERM)
                ended.append(int(entry.name))
    deadline = time.monotonic() + 5.0
    for pid in ended:  # reap them: a failed start never waits for its processes
        while True:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:  # reaped already
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                break
            time.sleep(0.1)


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[ModuleType]:
    """Ray for one run: the session already open in this process, else ``address``, else a new
    local cluster; what this function started it also shuts down."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        try:
            ray.init(address=address, configure_logging=False)
        except Exception as exc:  # ConnectionError and friends: the user named a cluster we cannot reach
            raise MedassistError(f"cannot connect to the Ray cluster at {address}: {exc}") from exc
    else:
        start_local_cluster()
    try:
        yield ray
    finally:
        ray.shutdown()


def run_triage_ray(
    inputs: Sequence[str | Path], out_dir: str | Path, options: TriageOptions = TriageOptions()
) -> TriageSummary:
    """``run_triage`` on Ray: discover the series under ``inputs`` here, score them on the cluster
    (``triage_series_ray``)."""
    found = discover_all(inputs, options.modality_override)
    return triage_series_ray(found.series, found.problems, out_dir, options, skipped=found.skipped)


def triage_series_ray(
    series: Sequence[Series],
    problems: Sequence[IngestProblem],
    out_dir: str | Path,
    options: TriageOptions = TriageOptions(),
    *,
    skipped: Sequence[Skipped] = (),
) -> TriageSummary:
    """``triage_series`` with decoding and scoring on a Ray cluster; same options, plus
    ``options.ray_address`` and ``options.actors`` (see ``TriageOptions``).

    ``num_workers`` is not used: decode tasks run on every cluster CPU the model actors leave free.
    ``series_timeout`` holds each decode task as it holds the local backend's decoding. Scoring is
    torch's: ``runtime`` "onnx" raises MedassistError, "auto" (the default) means torch here
    (``onnx_dir`` is not used).
    """
    if options.runtime == "onnx":
        raise MedassistError(f"--runtime {options.runtime} is not available with --backend ray (it scores with torch)")
    device = str(options.device)  # "auto", "cpu", "cuda" or a torch.device
    out, specs = prepare_run(out_dir, options.weights_dir)
    stage = StageOptions.of(options, out)

    def produce(pending: list[tuple[ModelSpec, list[Job]]]) -> Iterator[Finished]:
        jobs = [job for _, group in pending for job in group]
        if not jobs:  # everything decided already: no cluster to start
            return
        with ray_session(options.ray_address) as ray:
            yield from run_pipeline(ray, jobs, stage, device, options.actors, options.progress)

    return record_run(series, problems, out, specs, produce, progress=options.progress,
                      checkpoint_every=options.checkpoint_every, desc="triage (ray)", skipped=skipped)


@dataclasses.dataclass(frozen=True)
class StageOptions:
    """What the cluster stages need of the run's ``TriageOptions`` besides the jobs (plain values:
    they travel to the workers), with the paths made absolute."""

    weights_dir: str  # absolute
    batch_size: int
    out_dir: str  # absolute
    explain: str
    explain_method: str | None  # None: each model's own
    series_timeout: float | None
    cwd: str  # the driver's working directory, against which relative input paths resolve

    @classmethod
    def of(cls, options: TriageOptions, out_dir: Path) -> StageOptions:
        """The stages' part of ``options``, for a run writing into ``out_dir``."""
        return cls(
            weights_dir=str(Path(options.weights_dir).resolve()), batch_size=options.batch_size,
            out_dir=str(out_dir.resolve()), explain=options.explain, explain_method=options.explain_method,
            series_timeout=options.series_timeout, cwd=os.getcwd(),
        )


def run_pipeline(
    ray: ModuleType, jobs: list[Job], stage: StageOptions, device: str, actors: int | None, progress: bool
) -> Iterator[Finished]:
    """Run the decode and model stages over ``jobs``; yield each job's result as it comes back."""
    resources = ray.cluster_resources()
    use_gpu, n_actors = plan_actors(resources, device, actors)
    memory = int(min(DECODE_MEMORY, resources.get("memory", 0) / 4))
    specs = {job.spec.name: job.spec for job in jobs}
    items = [{"job": i, "spec": job.spec.name, "ref": series_ref(job.series)} for i, job in enumerate(jobs)]
    configure_ray_data(ray, progress)
    dataset = (
        ray.data.from_items(items, override_num_blocks=len(items))
        .map(decode_row, fn_kwargs={"specs": specs, "stage": stage}, num_cpus=1,
             **({"memory": memory} if memory > 0 else {}))
        .map_batches(
            ModelStage, fn_constructor_kwargs={"specs": specs, "stage": stage, "use_gpu": use_gpu},
            batch_size=stage.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=1, num_gpus=1 if use_gpu else 0,
        )
    )
    log.info("ray: %d jobs, %d model actor(s)%s", len(jobs), n_actors, " with a GPU each" if use_gpu else "")
    try:
        for row in dataset.iter_rows():
            score = float(row["score"])
            slices = tuple(int(s) for s in str(row["slices"]).split())
            yield Finished(jobs[int(row["job"])], None if math.isnan(score) else score, slices, str(row["error"]),
                           str(row["saliency"]))
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MedassistError(f"the Ray pipeline failed ({first}); finished series are kept: "
                             "run the same command again to resume") from exc


def configure_ray_data(ray: ModuleType, progress: bool) -> None:
    """Ray Data's progress bars only where ours would show; its per-run INFO lines only with -v."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = bool(progress and sys.stderr.isatty())
    verbose = log.isEnabledFor(logging.INFO)
    context.print_on_execution_start = verbose
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler":  # its console handler (the file log keeps all)
            handler.setLevel(logging.INFO if verbose else logging.WARNING)


def plan_actors(resources: dict, device: str, actors: int | None) -> tuple[bool, int]:
    """(one GPU per model actor?, number of actors) for a cluster's resources and ``device``."""
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    if device.startswith("cuda") and not gpus:
        raise MedassistError(f"--device {device}: the Ray cluster has no GPU")
    use_gpu = device != "cpu" and gpus > 0
    n_actors = actors or (gpus if use_gpu else 1)
    if use_gpu and n_actors > gpus:
        raise MedassistError(f"{n_actors} model actors need a GPU each; the Ray cluster has {gpus}")
    if cpus < n_actors + 1:  # each actor holds a CPU; decoding needs at least one more
        raise MedassistError(f"the Ray cluster has {cpus:g} CPU(s): {n_actors} model actor(s) hold one each "
                             "and decoding needs at least one more")
    return use_gpu, n_actors


# --- plain data for a series --------------------------------------------------------------------


def series_ref(series: Series) -> bytes:
    """A series as plain data: its fields, and its loader pickled when it pickles (else b"")."""
    fields = {f.name: getattr(series, f.name) for f in dataclasses.fields(series) if f.name != "loader"}
    try:
        loader = pickle.dumps(series.loader)
    except (pickle.PicklingError, AttributeError, TypeError):  # a closure, a lambda, an open handle
        loader = b""
    return pickle.dumps({"fields": fields, "loader": loader})


def series_from_ref(data: bytes) -> Series:
    """The series ``series_ref`` described, with a working loader (found again from its files if
    its own did not pickle)."""
    ref = pickle.loads(data)
    fields = ref["fields"]
    loader = pickle.loads(ref["loader"]) if ref["loader"] else find_loader_again(fields)
    return Series(**fields, loader=loader)


def find_loader_again(fields: dict) -> Callable[[], Image]:
    """The loader of the series with these UIDs and files, read again from the files; if it is not
    there any more, a loader that raises MedassistError (an error row, like any undecodable series)."""
    from medassist.ingest import discover_series

    found, _ = discover_series(list(fields["paths"]), modality_override=fields["modality"] or None)
    for candidate in found:
        if candidate.series_uid == fields["series_uid"] and tuple(candidate.paths) == tuple(fields["paths"]):
            return candidate.loader
    message = f"{fields['source_path']}: series not found again in its files"

    def missing() -> Image:
        raise MedassistError(message)

    return missing


def enter_driver_cwd(cwd: str) -> None:
    """Resolve relative paths as the driver does (a worker of another machine's cluster may start elsewhere)."""
    if os.getcwd() != cwd and os.path.isdir(cwd):
        os.chdir(cwd)


# --- decode stage (Ray tasks) -------------------------------------------------------------------


def decode_row(row: dict, *, specs: dict[str, ModelSpec], stage: StageOptions) -> dict:
    """One job decoded by the local backend's own datasets: the row with a ``payload`` (pickled)
    for the model stage. Radiographs: the ``Prepared`` network inputs (or error) from ``JobDataset``.
    Volumes: the ``DecodedVolume`` (its network inputs, ``tumor.PreparedVolume``, or the error
    row's text) from ``VolumeDataset``, which ``score_decoded_volume`` scores on the model stage.
    """
    enter_driver_cwd(stage.cwd)
    spec = specs[row["spec"]]
    jobs = [Job(series_from_ref(row["ref"]), spec)]
    family = family_for(spec)
    if family.batches_across_studies:
        payload: tuple = ("prepared", JobDataset(jobs, family, stage.series_timeout)[0])
    else:
        payload = ("volume", VolumeDataset(jobs, stage.series_timeout)[0])
    return {"job": row["job"], "spec": row["spec"], "ref": row["ref"], "payload": pickle.dumps(payload, protocol=5)}


# --- model stage (Ray actors) -------------------------------------------------------------------


class ModelStage:
    """A Ray Data actor: loads each model once, scores batches of decoded jobs, writes their maps."""

    def __init__(self, specs: dict[str, ModelSpec], stage: StageOptions, use_gpu: bool) -> None:
        enter_driver_cwd(stage.cwd)
        self.specs = specs
        self.stage = stage
        self.device = choose_device("cuda" if use_gpu else "cpu")
        self.models: dict[str, LoadedModel] = {}

    def model(self, name: str) -> LoadedModel:
        """The model of this name, loaded (weights verified) on first use."""
        if name not in self.models:
            self.models[name] = load_model(self.specs[name], self.device, Path(self.stage.weights_dir))
        return self.models[name]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score a batch (jobs of one or more models); one result row per job, in batch order."""
        entries = [
            (int(job), str(name), bytes(ref), pickle.loads(payload))
            for job, name, ref, payload in zip(batch["job"], batch["spec"], batch["ref"], batch["payload"])
        ]
        results: dict[int, Finished] = {}
        for name in dict.fromkeys(entry[1] for entry in entries):
            group = [entry for entry in entries if entry[1] == name]
            model = self.model(name)
            jobs = [Job(series_from_ref(ref), model.spec) for _, _, ref, _ in group]
            decoded = [payload[1] for _, _, _, payload in group]
            if family_for(model.spec).batches_across_studies:
                scored = score_prepared(model, jobs, decoded, self.stage.batch_size)
            else:  # a map decodes the series again, as the local backend's does
                scored = (score_decoded_volume(model, job, volume) for job, volume in zip(jobs, decoded))
            position = {id(job): entry[0] for job, entry in zip(jobs, group)}
            for result in scored:
                saliency = ""
                if wants_saliency(self.stage.explain, model.spec, result.score):
                    saliency = explain_job(model, result.job, result.inputs, result.slices, Path(self.stage.out_dir),
                                           self.stage.explain_method, features=result.features)
                results[position[id(result.job)]] = result.finished(saliency)
        done = [results[entry[0]] for entry in entries]
        return {  # plain columns: what Ray Data carries back to the driver (``run_pipeline``)
            "job": np.array([entry[0] for entry in entries], dtype=np.int64),
            "score": np.array([math.nan if r.score is None else float(r.score) for r in done], dtype=np.float64),
            "slices": np.array([" ".join(map(str, r.slices)) for r in done], dtype=object),
            "error": np.array([r.error for r in done], dtype=object),
            "saliency": np.array([r.saliency for r in done], dtype=object),
        }


def score_prepared(
    model: LoadedModel, jobs: list[Job], prepared: list[Prepared], batch_size: int
) -> Iterator[ScoredJob]:
    """``score_jobs`` for inputs the decode stage already prepared: the same results and messages."""
    family = family_for(model.spec)
    for position, item in enumerate(prepared):
        item.index = position
    batch = collate_prepared(prepared)
    for index, message in batch.errors:
        yield ScoredJob.failed(jobs[index], message)
    if batch.inputs is not None:
        yield from score_batch(model, family, jobs, batch, batch_size)  # the local path's scoring and retry
