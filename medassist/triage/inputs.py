"""Turning (series, model) jobs into network inputs, in DataLoader worker processes.

A model's *family* (``medassist.families.family_for(spec)``, by ``spec.input_kind``) says how it
reads a series: how many network inputs one series gives and how their scores become the series'
score. Radiograph models take one input per series - the first slice - and its score is the
series' score; their inputs are batched across series (``JobDataset``). A brain MR volume gives one
input per in-brain slice and is scored whole, the contributing slice indices reported in the
worklist's ``slices`` column (``VolumeDataset``).

Decoding happens in ``JobDataset.__getitem__`` (radiographs: network inputs) and
``VolumeDataset.__getitem__`` (volumes: the whole series, reduced to the array the model scores),
so with ``num_workers > 0`` it runs in worker processes and overlaps inference. A job that fails
to decode comes back as an error string (``failure_message``), and ``collate_prepared`` keeps those
apart from the tensors. A series whose decoding takes longer than the series time limit
(``time_limit``) comes back as an error too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from medassist.datamodel import Image, Series
from medassist.errors import MedassistError
from medassist.families import ModelFamily
from medassist.models.spec import ModelSpec
from medassist.timelimit import DecodeTimeout, time_limit, timeout_if_fired  # noqa: F401  (time_limit: re-exported)

if TYPE_CHECKING:
    from medassist.models.tumor import PreparedVolume


# Seconds one series may spend in decoding and preprocessing before it becomes an error row.
DEFAULT_SERIES_TIMEOUT = 120.0


def timeout_message(source_path: str, seconds: float) -> str:
    """The error row's text for a series that ran out of time."""
    return f"{source_path}: decoding took longer than {seconds:g} s (--series-timeout)"


def failure_message(source_path: str, exc: BaseException, series_timeout: float | None, action: str) -> str:
    """The error row's text for what decoding or scoring a series raised: the timeout message for
    DecodeTimeout, a MedassistError's own text (with "<path>: " in front when it does not name the
    path, as the model's "no brain found" does), else "<path>: could not <action> (<Type>: <reason>)"."""
    if isinstance(exc, DecodeTimeout):
        return timeout_message(source_path, series_timeout or 0)
    if isinstance(exc, MedassistError):
        return str(exc) if source_path in str(exc) else f"{source_path}: {exc}"
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return f"{source_path}: could not {action} ({reason})"


@dataclass(frozen=True)
class Job:
    """One model to run on one series."""

    series: Series
    spec: ModelSpec


@dataclass
class Prepared:
    """A job's network inputs (k, 1, S, S) with the slice index of each, or an error message."""

    index: int
    inputs: torch.Tensor | None
    slices: tuple[int, ...] = ()
    error: str = ""


@dataclass
class Batch:
    """Collated jobs: inputs of all good jobs concatenated, ``owners`` slicing them back per job."""

    inputs: torch.Tensor | None
    owners: list[tuple[int, int, tuple[int, ...]]]  # (job index, number of inputs, slices)
    errors: list[tuple[int, str]]  # (job index, message)

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True) for fast host-to-GPU copies."""
        inputs = self.inputs.pin_memory() if self.inputs is not None else None
        return Batch(inputs, self.owners, self.errors)


class JobDataset(Dataset):
    """Decode and preprocess the series of a list of jobs for one model (one family, one spec)."""

    def __init__(self, jobs: list[Job], family: ModelFamily, series_timeout: float | None = None) -> None:
        self.jobs = jobs
        self.family = family
        self.series_timeout = series_timeout

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> Prepared:
        job = self.jobs[index]
        limit = None
        try:
            with time_limit(self.series_timeout) as limit:
                image = job.series.load()
                prepared = self.family.prepare(image, job.spec)
        except (Exception, DecodeTimeout) as exc:  # one undecodable series must not stop the run
            exc = timeout_if_fired(exc, limit)
            message = failure_message(job.series.source_path, exc, self.series_timeout, "prepare image")
            return Prepared(index, None, error=message)
        return Prepared(index, prepared.inputs.float(), prepared.slices)


def collate_prepared(items: list[Prepared]) -> Batch:
    """Concatenate the good jobs' inputs; keep the failed jobs' messages apart."""
    good = [item for item in items if item.inputs is not None]
    errors = [(item.index, item.error) for item in items if item.inputs is None]
    inputs = torch.cat([item.inputs for item in good]) if good else None  # type: ignore[misc]
    owners = [(item.index, int(item.inputs.shape[0]), item.slices) for item in good]  # type: ignore[union-attr]
    return Batch(inputs, owners, errors)


VOLUME_FAILURE = "score volume"  # a volume job's error rows say "could not score volume (...)"


@dataclass
class DecodedVolume:
    """A volume job decoded and cut into network inputs where it was decoded (``PreparedVolume``:
    the inputs travel as a tensor, which DataLoader moves through shared memory), or the error
    row's text."""

    index: int
    prepared: PreparedVolume | None = None
    error: str = ""

    @classmethod
    def of(cls, index: int, image: Image, spec: ModelSpec) -> DecodedVolume:
        """Prepare ``image`` for ``spec`` by its family (brain MR: reorientation, plane, foreground,
        slice inputs)."""
        from medassist.families import family_for

        return cls(index, family_for(spec).prepare(image, spec))


class VolumeDataset(Dataset):
    """Decode and prepare the series of volume jobs (held, together, to the series time limit)."""

    def __init__(self, jobs: list[Job], series_timeout: float | None = None) -> None:
        self.jobs = jobs
        self.series_timeout = series_timeout

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> DecodedVolume:
        job = self.jobs[index]
        limit = None
        try:
            with time_limit(self.series_timeout) as limit:
                return DecodedVolume.of(index, job.series.load(), job.spec)
        except (Exception, DecodeTimeout) as exc:  # one undecodable volume must not stop the run
            exc = timeout_if_fired(exc, limit)
            message = failure_message(job.series.source_path, exc, self.series_timeout, VOLUME_FAILURE)
            return DecodedVolume(index, error=message)
