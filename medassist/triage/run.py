"""Batch triage: every input series through every shipped model that applies, into a worklist.

``run_triage`` discovers the series, then for each (series, applicable model) pair not already in
the output folder's journal decodes and preprocesses the pixels in DataLoader worker processes
while the model scores the previous batch. Each finished pair is journaled (fsynced) at once and
the worklist is rewritten atomically every ``checkpoint_every`` pairs and at the end, so a run
killed at any point resumes where it stopped when run again into the same folder.

Worklist conventions (rows, ordering, not-applicable and error rows) are described in
``medassist.triage.worklist``; the journal format in ``medassist.triage.journal``. The worklist
describes the series found in this run's inputs; rows journaled by earlier runs are reused, never
duplicated. Nothing here logs patient names or IDs (series UIDs only at debug level).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from medassist.datamodel import IngestProblem, RowKind, Series, WorklistRow
from medassist.errors import MedassistError
from medassist.models.registry import (
    LoadedModel,
    choose_device,
    models_for,
    not_applicable_reason,
    shipped_specs,
)
from medassist.families import ModelFamily, family_for
from medassist.models.onnx_runtime import load_for_runtime
from medassist.models.spec import ModelSpec
from medassist.triage.inputs import (
    DEFAULT_SERIES_TIMEOUT,
    VOLUME_FAILURE,
    Batch,
    DecodedVolume,
    Job,
    JobDataset,
    VolumeDataset,
    collate_prepared,
    failure_message,
)
from medassist.triage.journal import (
    JOURNAL_NAME,
    Journal,
    Key,
    not_applicable_key,
    problem_key,
    result_key,
    run_lock,
)
from medassist.triage.manifest import file_entries, write_manifest
from medassist.triage.options import TriageOptions
from medassist.triage.worklist import (
    not_applicable_record,
    problem_record,
    remove_stale_temporaries,
    write_worklist,
)

if TYPE_CHECKING:  # ingest is imported late: it pulls in the decoders
    from medassist.ingest.dicom import Skipped
    from medassist.ingest.discover import Discovery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TriageSummary:
    """Counts for the end-of-run line (no identifiers) and where the worklist is."""

    n_series: int
    n_findings: int
    n_flagged: int
    n_not_applicable: int
    n_errors: int
    n_resumed: int
    worklist_csv: Path
    worklist_json: Path

    def line(self) -> str:
        """``N series, N findings, N flagged, N errors``."""
        return (
            f"{self.n_series} series, {self.n_findings} findings, "
            f"{self.n_flagged} flagged, {self.n_errors} errors"
        )


def run_triage(
    inputs: Sequence[str | Path], out_dir: str | Path, options: TriageOptions = TriageOptions()
) -> TriageSummary:
    """Discover the series under ``inputs``, score them, write ``out_dir``/worklist.{csv,json}.

    ``options``: device, batch size, workers, models folder, modality override, saliency policy,
    series timeout, runtime... (``TriageOptions``, whose fields say what each does).
    A missing input path, a bad output folder or refused model weights raise MedassistError;
    unreadable files, undecodable series and series out of time become error rows instead, and
    are listed in ``out_dir``/quarantine.csv.
    """
    found = discover_all(inputs, options.modality_override)
    return triage_series(found.series, found.problems, out_dir, options, skipped=found.skipped)


def discover(inputs: Sequence[str | Path], modality_override: str | None = None
             ) -> tuple[list[Series], list[IngestProblem]]:
    """The series under ``inputs`` and the files that could not be read (inputs checked first)."""
    found = discover_all(inputs, modality_override)
    return found.series, found.problems


def discover_all(inputs: Sequence[str | Path], modality_override: str | None = None) -> Discovery:
    """``discover``, plus the files skipped as no image series (for files.csv)."""
    paths = check_inputs(inputs)
    from medassist.ingest import discover_files  # imported late: ingest pulls in the decoders

    found = discover_files(paths, modality_override=modality_override)
    log.info("found %d series, %d unreadable and %d skipped files in %d inputs", len(found.series),
             len(found.problems), len(found.skipped), len(paths))
    return found


def check_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The input paths, after checking there is at least one and each exists."""
    if not inputs:
        raise MedassistError("no input given: name at least one file or folder")
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.exists():
            raise MedassistError(f"{path}: no such file or directory")
    return paths


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create the output folder (and parents); a path that is a file raises MedassistError."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MedassistError(f"{out}: output path exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedassistError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    return out


def triage_series(
    series: Sequence[Series],
    problems: Sequence[IngestProblem],
    out_dir: str | Path,
    options: TriageOptions = TriageOptions(),
    *,
    skipped: Sequence[Skipped] = (),
) -> TriageSummary:
    """Score already-discovered series (see ``run_triage``) and write the worklist; ``skipped``:
    the files discovery skipped, listed in files.csv with the series' and problems' files.
    ``options.modality_override`` is not used here (it applies where series are discovered)."""
    out, specs = prepare_run(out_dir, options.weights_dir)
    device = options.device
    torch_device = choose_device(device) if isinstance(device, str) else device

    def produce(pending: list[tuple[ModelSpec, list[Job]]]) -> Iterator[Finished]:
        for spec, jobs in pending:
            model = load_for_runtime(spec, torch_device, options.runtime, options.onnx_dir, Path(options.weights_dir))
            if family_for(spec).batches_across_studies:
                results = score_jobs(model, jobs, options.batch_size, options.num_workers, options.series_timeout)
            else:
                results = score_volume_jobs(model, jobs, options.series_timeout, options.num_workers)
            for scored in results:
                saliency = ""
                if wants_saliency(options.explain, model.spec, scored.score):
                    saliency = explain_job(model, scored.job, scored.inputs, scored.slices, out,
                                           options.explain_method, features=scored.features)
                yield scored.finished(saliency)

    return record_run(series, problems, out, specs, produce, progress=options.progress,
                      checkpoint_every=options.checkpoint_every, skipped=skipped)


def prepare_run(out_dir: str | Path, weights_dir: str | Path) -> tuple[Path, list[ModelSpec]]:
    """Create the output folder, read the shipped specs (warning when none)."""
    out = prepare_out_dir(out_dir)
    specs = shipped_specs(Path(weights_dir))
    if not specs:
        log.warning("no shipped models in %s: every series will be 'not applicable'", weights_dir)
    return out, specs


@dataclass(frozen=True)
class Finished:
    """One job as the writer (``record_run``) records it, from either backend: its score (None
    when it failed), the slices its score reports, the error row's text ("" when scored) and its
    saliency map's path relative to the output folder ("" when none)."""

    job: Job
    score: float | None
    slices: tuple[int, ...]
    error: str
    saliency: str = ""


def record_run(
    series: Sequence[Series],
    problems: Sequence[IngestProblem],
    out: Path,
    specs: list[ModelSpec],
    produce: Callable[[list[tuple[ModelSpec, list[Job]]]], Iterable[Finished]],
    *,
    progress: bool,
    checkpoint_every: int,
    desc: str = "triage",
    skipped: Sequence[Skipped] = (),
) -> TriageSummary:
    """The writer every backend shares: lock ``out``, plan the jobs left (``plan``), journal each
    job ``produce(pending)`` finishes, rewrite the worklist atomically every ``checkpoint_every``
    jobs (or every tenth of the rows so far, if more: each rewrite renders every row, and a fixed
    interval would make a 10,000-series run spend seconds per minute rewriting) and at the end,
    and count the rows. files.csv (``manifest``) is rewritten with the worklist: every file of
    ``series``, ``problems`` and ``skipped``, with what became of it."""
    with run_lock(out), Journal(out / JOURNAL_NAME) as journal:
        remove_stale_temporaries(out)
        rows = Rows(journal, out, Inputs(series, problems, skipped))
        pending = plan(series, problems, specs, rows)
        rows.checkpoint()
        bar = tqdm(total=sum(len(jobs) for _, jobs in pending), desc=desc, unit="series", file=sys.stderr,
                   disable=not (progress and sys.stderr.isatty()), leave=False)
        try:
            for finished in produce(pending):
                rows.finish(finished)
                bar.update(1)
                if rows.since_checkpoint >= max(checkpoint_every, len(rows.records) // 10):
                    rows.checkpoint()
        finally:
            bar.close()
            csv_path, json_path = rows.checkpoint()
    return summarise(rows.records.values(), len(series), rows.resumed, csv_path, json_path)


@dataclass(frozen=True)
class Inputs:
    """What discovery found: the series, the files it could not use and the files it skipped."""

    series: Sequence[Series] = ()
    problems: Sequence[IngestProblem] = ()
    skipped: Sequence[Skipped] = ()


class Rows:
    """The worklist being built: rows by journal key, journaled (``as_record``) as they are decided;
    a row taken from the journal is read back with ``WorklistRow.from_record``."""

    def __init__(self, journal: Journal, out_dir: Path, inputs: Inputs = Inputs()) -> None:
        self.journal = journal
        self.out_dir = out_dir
        self.inputs = inputs
        self.records: dict[Key, WorklistRow] = {}
        self.resumed = 0
        self.since_checkpoint = 0

    def add(self, key: Key, row: WorklistRow, status: str = "done") -> None:
        """Journal a row and put it in the worklist."""
        self.journal.record(key, row.as_record(), status)
        self.records[key] = row

    def reuse(self, key: Key) -> bool:
        """Take a finished row from the journal; False if the work has to be done."""
        record = self.journal.finished(key)
        if record is None:
            return False
        if key not in self.records:
            self.resumed += 1
        where = f"{self.journal.path}: {list(key)}"
        self.records[key] = WorklistRow.from_record(record, where=where, as_written=True)
        return True

    def finish(self, finished: Finished) -> None:
        """Record one scored (or failed) job."""
        spec, series = finished.job.spec, finished.job.series
        score, error = finished.score, finished.error
        key = result_key(series.series_uid, spec.name, spec.version)
        if error:
            row = WorklistRow.for_series(series, model=spec.name, model_version=spec.version,
                                         finding=spec.finding, error=error)
            log.debug("series %s, model %s: %s", series.series_uid, spec.name, error)
            self.add(key, row, status="error")
        else:
            assert score is not None
            row = WorklistRow.for_series(
                series, model=spec.name, model_version=spec.version, finding=spec.finding,
                score=score, threshold=spec.threshold, flagged=score >= spec.threshold, slices=finished.slices,
                saliency_path=finished.saliency,
            )
            self.add(key, row)
        self.since_checkpoint += 1

    def checkpoint(self) -> tuple[Path, Path]:
        """Atomically rewrite the worklist with the rows decided so far (journal synced first), and
        files.csv with every input file's status."""
        self.journal.sync()
        self.since_checkpoint = 0
        paths = write_worklist(self.out_dir, self.records.values())
        inputs = self.inputs
        write_manifest(self.out_dir, file_entries(inputs.series, inputs.problems, inputs.skipped, self.records.values()))
        return paths


def plan(
    series: Sequence[Series], problems: Sequence[IngestProblem], specs: list[ModelSpec], rows: Rows
) -> list[tuple[ModelSpec, list[Job]]]:
    """Add problem, not-applicable and already-journaled rows; return the jobs left, per model."""
    for problem in problems:
        rows.add(problem_key(problem.path), problem_record(problem))
    pending: dict[str, list[Job]] = {spec.name: [] for spec in specs}
    queued: set[Key] = set()
    for item in series:
        applicable = models_for(item, specs)
        if not applicable:
            rows.add(not_applicable_key(item.series_uid), not_applicable_record(item, not_applicable_reason(item, specs)))
            continue
        for spec in applicable:
            key = result_key(item.series_uid, spec.name, spec.version)
            if key in queued or rows.reuse(key):
                continue
            queued.add(key)
            pending[spec.name].append(Job(item, spec))
    return [(spec, pending[spec.name]) for spec in specs if pending[spec.name]]


@dataclass(frozen=True)
class ScoredJob:
    """One job as a model scored it (both backends' scoring yields these): score (None when it
    failed), reported slices, error text ("" when scored), and, for a scored radiograph, the job's
    network inputs and last feature map (None otherwise), which its saliency map reuses (GradCAM
    then skips a second backbone pass)."""

    job: Job
    score: float | None
    slices: tuple[int, ...] = ()
    error: str = ""
    inputs: torch.Tensor | None = None
    features: torch.Tensor | None = None

    @classmethod
    def failed(cls, job: Job, error: str) -> ScoredJob:
        """A job that could not be decoded or scored: an error row's text, nothing else."""
        return cls(job, None, (), error)

    def finished(self, saliency: str = "") -> Finished:
        """What the writer records of it (the tensors stay behind)."""
        return Finished(self.job, self.score, self.slices, self.error, saliency)


def score_jobs(
    model: LoadedModel, jobs: list[Job], batch_size: int, num_workers: int,
    series_timeout: float | None = DEFAULT_SERIES_TIMEOUT,
) -> Iterator[ScoredJob]:
    """A ``ScoredJob`` per job (with its inputs and last feature map), decoding in workers while
    the model scores."""
    family = family_for(model.spec)
    for batch in make_loader(jobs, family, batch_size, num_workers, model.device, series_timeout):
        for index, message in batch.errors:
            yield ScoredJob.failed(jobs[index], message)
        if batch.inputs is not None:
            yield from score_batch(model, family, jobs, batch, batch_size)


def score_batch(model: LoadedModel, family: ModelFamily, jobs: list[Job], batch: Batch, batch_size: int
                ) -> Iterator[ScoredJob]:
    """``score_jobs``' results for a batch's decoded jobs. If scoring the batch raises, its jobs are
    scored one by one, so only a job whose own scoring fails becomes an error row."""
    assert batch.inputs is not None
    try:
        scores, features = score_inputs_with_features(model, batch.inputs, batch_size)
    except Exception as exc:  # one series' inputs must not stop the run
        if len(batch.owners) == 1:
            index = batch.owners[0][0]
            message = failure_message(jobs[index].series.source_path, exc, None, "score image")
            yield ScoredJob.failed(jobs[index], message)
            return
        offset = 0
        for index, count, slices in batch.owners:
            alone = Batch(batch.inputs[offset : offset + count], [(index, count, slices)], [])
            offset += count
            yield from score_batch(model, family, jobs, alone, batch_size)
        return
    offset = 0
    for index, count, slices in batch.owners:
        study = family.aggregate(scores[offset : offset + count], slices)
        score, report = study.score, study.slices
        job_inputs = batch.inputs[offset : offset + count]
        job_features = None if features is None else features[offset : offset + count]
        offset += count
        score = round(float(score), 6)
        if math.isfinite(score) and 0.0 <= score <= 1.0:
            yield ScoredJob(jobs[index], score, report, "", job_inputs, job_features)
        else:
            message = f"{jobs[index].series.source_path}: model {model.spec.name} gave no valid score"
            yield ScoredJob.failed(jobs[index], message)


# A volume prepared in a worker reaches this process through shared memory (/dev/shm): its network
# inputs, 256 KiB per slice at 256 px (39 MB for 150 slices, 160 MB for 600 thin ones). Containers
# often mount 64 MB there, where a worker's copy fails with a bus error and stops the whole run:
# volumes are prepared in process unless there is room for one per worker plus the one being scored.
SHARED_MEMORY_DIR = "/dev/shm"
VOLUME_SHARED_MEMORY = 512 * 2**20


def shared_memory_free() -> int:
    """Free bytes in ``SHARED_MEMORY_DIR`` (0 when it cannot be read)."""
    try:
        return shutil.disk_usage(SHARED_MEMORY_DIR).free
    except OSError:
        return 0


def score_volume_jobs(
    model: LoadedModel, jobs: list[Job], series_timeout: float | None = DEFAULT_SERIES_TIMEOUT, num_workers: int = 0,
) -> Iterator[ScoredJob]:
    """A ``ScoredJob`` per volume job, in order: study score, flagged slice indices or error (no tensors).

    Each series is decoded and cut into network inputs (``tumor.prepare_volume``, held to
    ``series_timeout``) in ``num_workers`` processes (0: in this process) while this process scores
    the previous one; each worker holds at most one prepared volume beyond the one being scored.
    A lone volume, with nothing to overlap, is prepared here (no worker to start, no copy to make),
    and so is every volume when shared memory is short (``shared_memory_free``).
    """
    workers = num_workers if len(jobs) > 1 else 0
    if workers and shared_memory_free() < (workers + 1) * VOLUME_SHARED_MEMORY:
        log.info("preparing volumes in this process: %s has under %d MiB free for worker copies",
                 SHARED_MEMORY_DIR, (workers + 1) * VOLUME_SHARED_MEMORY // 2**20)
        workers = 0
    loader = ordered_loader(VolumeDataset(jobs, series_timeout), workers, prefetch_factor=1, batch_size=None)
    for decoded in loader:
        scored = score_decoded_volume(model, jobs[decoded.index], decoded)
        del decoded  # the volume is freed before the caller's work on the result (e.g. a saliency map)
        yield scored


def score_decoded_volume(model: LoadedModel, job: Job, decoded: DecodedVolume) -> ScoredJob:
    """``score_volume_jobs``'s result for one prepared volume (or its decoding error): scored whole
    by the model's family (``ModelFamily.score_study``)."""
    if decoded.error or decoded.prepared is None:
        return ScoredJob.failed(job, decoded.error)
    try:
        result = family_for(model.spec).score_study(model.scoring_network, model.spec, decoded.prepared)
    except Exception as exc:  # one unscorable volume must not stop the run
        return ScoredJob.failed(job, failure_message(job.series.source_path, exc, None, VOLUME_FAILURE))
    return ScoredJob(job, round(float(result.score), 6), tuple(result.slices))


SALIENCY_DIR = "saliency"


def wants_saliency(explain: str, spec: ModelSpec, score: float | None) -> bool:
    """Whether this finding gets a saliency map under the --explain policy."""
    if score is None or explain == "none":
        return False
    return explain == "all" or score >= spec.threshold


def explain_job(
    model: LoadedModel, job: Job, inputs: torch.Tensor | None, slices: tuple[int, ...], out_dir: Path,
    method: str | None, *, features: torch.Tensor | None = None,
) -> str:
    """Write the saliency map of a job's (first reported) slice; its path relative to ``out_dir``.
    ``method`` None: the model's own (``explain.saliency.method_for``).

    ``features``: the job's last feature map from the scoring pass; GradCAM then needs no second
    pass through the backbone.

    The source image is decoded again here (flagged findings only) to draw the overlay in the
    source geometry. A failure is logged and leaves the finding without a map: the score stands.
    """
    from medassist.explain import explain_and_write, saliency_stem
    from medassist.explain.saliency import method_for

    method = method_for(model.spec, method)
    family = family_for(model.spec)
    if family.volumetric:
        return explain_volume_job(model, job, slices, out_dir, method)
    if inputs is None or len(inputs) == 0:
        return ""
    try:
        found = family.saliency_inputs(job.series.load(), model.spec, slices, inputs)
        stem = saliency_stem(job.series.series_uid, model.spec.name, found.slices[0])
        job_features = None if features is None else features[:1]
        npy, _png = explain_and_write(model, found.inputs, list(found.frames), list(found.displays),
                                      out_dir / SALIENCY_DIR, [stem], method=method, features=job_features)[0]
    except Exception as exc:  # a map is an aid; its failure must not lose the finding
        log.warning("%s: no saliency map (%s: %s)", job.series.source_path, type(exc).__name__, exc)
        return ""
    return str(npy.relative_to(out_dir))


def explain_volume_job(model: LoadedModel, job: Job, slices: tuple[int, ...], out_dir: Path, method: str) -> str:
    """Maps of a volume finding's reported slices (``explain.volume``); the overlay PNG shows the
    first reported slice. Its .npy path relative to ``out_dir``, or "" (logged) when none."""
    from medassist.explain.output import saliency_stem, write_volume_saliency
    from medassist.explain.volume import volume_slice_saliency

    if not slices:
        return ""
    try:
        image = job.series.load()
        planes, maps = volume_slice_saliency(model, image, slices, method=method)
        stem = saliency_stem(job.series.series_uid, model.spec.name, slices[0])
        npy, _png = write_volume_saliency(maps, planes.index(slices[0]), image.display[slices[0]],
                                          out_dir / SALIENCY_DIR, stem)
    except Exception as exc:  # a map is an aid; its failure must not lose the finding
        log.warning("%s: no saliency map (%s: %s)", job.series.source_path, type(exc).__name__, exc)
        return ""
    return str(npy.relative_to(out_dir))


def score_inputs(model: LoadedModel, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Scores of (N, 1, S, S) inputs, ``batch_size`` at a time."""
    return torch.cat([model.scores(chunk) for chunk in inputs.split(batch_size)])


def score_inputs_with_features(model: LoadedModel, inputs: torch.Tensor, batch_size: int
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores (N,) and last feature maps (N, C, h, w) of (N, 1, S, S) inputs, ``batch_size`` at a
    time; no feature maps (None) from a runtime that gives none (ONNX: saliency runs its own pass)."""
    parts = [model.scores_and_features(chunk) for chunk in inputs.split(batch_size)]
    features = [f for _, f in parts]
    return torch.cat([s for s, _ in parts]), (None if any(f is None for f in features) else torch.cat(features))


def make_loader(
    jobs: list[Job], family: ModelFamily, batch_size: int, num_workers: int, device: torch.device,
    series_timeout: float | None = DEFAULT_SERIES_TIMEOUT,
) -> DataLoader:
    """A DataLoader decoding ``jobs`` in ``num_workers`` processes (0: in this process), in order."""
    return ordered_loader(
        JobDataset(jobs, family, series_timeout), num_workers, prefetch_factor=2,
        batch_size=family.jobs_per_batch(batch_size), collate_fn=collate_prepared, pin_memory=device.type == "cuda",
    )


def ordered_loader(dataset: Dataset, num_workers: int, *, prefetch_factor: int, **options: Any) -> DataLoader:
    """A DataLoader over ``dataset`` in order, its items made in ``num_workers`` processes (0: in
    this one; never more than there are items), each worker at most ``prefetch_factor`` batches ahead."""
    workers = min(num_workers, len(dataset))  # type: ignore[arg-type]
    extra: dict = {}
    if workers > 0:
        methods = multiprocessing.get_all_start_methods()
        # fork: workers inherit the series' loaders (closures need not be picklable)
        extra = {"prefetch_factor": prefetch_factor, "multiprocessing_context": "fork" if "fork" in methods else None}
    return DataLoader(dataset, shuffle=False, num_workers=workers, **options, **extra)


def summarise(
    rows: Iterable[WorklistRow], n_series: int, n_resumed: int, csv_path: Path, json_path: Path
) -> TriageSummary:
    """Count the worklist's rows by kind."""
    kinds = [(r.kind, r) for r in rows]
    return TriageSummary(
        n_series=n_series,
        n_findings=sum(1 for k, _ in kinds if k == RowKind.SCORED),
        n_flagged=sum(1 for k, r in kinds if k == RowKind.SCORED and r.flagged),
        n_not_applicable=sum(1 for k, _ in kinds if k == RowKind.NOT_APPLICABLE),
        n_errors=sum(1 for k, _ in kinds if k == RowKind.ERROR),
        n_resumed=n_resumed,
        worklist_csv=csv_path,
        worklist_json=json_path,
    )

