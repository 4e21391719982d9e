"""Volume jobs decoded in DataLoader workers (``num_workers > 0``) give the worklist of in-process
decoding (``num_workers=0``): same rows, messages, order and maps; a broken volume is its own
error row and the volumes after it are still scored; each worker runs at most one volume ahead."""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medassist.datamodel import Image, Series
from medassist.errors import MedassistError
from medassist.ingest import discover_series
from medassist.models.registry import WEIGHTS_DIR
from medassist.triage import TriageOptions, triage_series
from medassist.triage.inputs import Job
from medassist.triage.run import score_volume_jobs

EXPORT = Path(__file__).resolve().parents[2] / "samples" / "export"
TUMOUR_SERIES = EXPORT / "PAT13"
NORMAL_VOLUME = EXPORT / "PAT14" / "brain_normal_colin27_2mm.nii.gz"
needs_tumour_model = pytest.mark.skipif(not (WEIGHTS_DIR / "tumor_mri.pt").is_file(),
                                        reason="tumour weights not shipped")


def mr_series(name: str, loader) -> Series:
    """An in-memory brain MR series named /data/<name> (the tumour model applies to it)."""
    path = f"/data/{name}"
    return Series(study_uid=f"1.2.7.{len(name)}", series_uid=f"1.2.7.{len(name)}.{name}", patient_id="P",
                  accession="A", modality="MR", body_part="BRAIN", source_path=path, paths=(path,), loader=loader)


def _raise(exc: Exception) -> Image:
    raise exc


def _slow() -> Image:
    time.sleep(60)
    raise AssertionError("the time limit should have stopped this")


def _flat() -> Image:
    """Decodes, but to 2D arrays: scoring (in the main process) fails."""
    pixels = np.zeros((64, 64), dtype=np.float32)
    return Image(pixels=pixels, display=pixels)


def _decoder_pid() -> Image:
    raise MedassistError(f"decoded in process {os.getpid()}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    """The same volume jobs (two real, four broken in different ways) triaged with 0, 1 and 2 workers."""
    (tumour, normal), _ = discover_series([TUMOUR_SERIES, NORMAL_VOLUME])
    series = [
        mr_series("undecodable", functools.partial(_raise, MedassistError("/data/undecodable: pixel data lost"))),
        tumour,
        mr_series("crashing", functools.partial(_raise, RuntimeError("decoder bug\nsecond line"))),
        mr_series("slow", _slow),
        mr_series("flat", _flat),
        normal,
    ]
    outs = {}
    for workers in (0, 1, 2):
        outs[workers] = tmp_path_factory.mktemp(f"workers{workers}")
        options = TriageOptions(device="cpu", num_workers=workers, progress=False, explain="flagged",
                                series_timeout=10.0)  # real series decode well within it, even on a loaded machine
        triage_series(series, [], outs[workers], options)
    return outs


@needs_tumour_model
def test_workers_give_the_in_process_worklist(runs):
    expected = (runs[0] / "worklist.json").read_text()
    for workers in (1, 2):
        assert (runs[workers] / "worklist.json").read_text() == expected
        assert (runs[workers] / "worklist.csv").read_text() == (runs[0] / "worklist.csv").read_text()
        assert (runs[workers] / "quarantine.csv").read_text() == (runs[0] / "quarantine.csv").read_text()
        maps = [r["saliency_path"] for r in json.loads(expected) if r["saliency_path"]]
        assert maps, "the flagged tumour series has a map"
        for path in maps:
            np.testing.assert_array_equal(np.load(runs[workers] / path), np.load(runs[0] / path))


@needs_tumour_model
def test_broken_volumes_are_error_rows_and_the_next_volumes_are_scored(runs):
    rows = {Path(r["source_path"]).name: r for r in json.loads((runs[1] / "worklist.json").read_text())}
    assert rows["undecodable"]["error"] == "/data/undecodable: pixel data lost"
    assert rows["crashing"]["error"] == "/data/crashing: could not score volume (RuntimeError: decoder bug)"
    assert rows["slow"]["error"] == "/data/slow: decoding took longer than 10 s (--series-timeout)"
    assert rows["flat"]["error"].startswith("/data/flat: could not score volume (ValueError: ")
    assert all(rows[name]["score"] is None for name in ("undecodable", "crashing", "slow", "flat"))
    assert rows["SER1"]["flagged"] is True and rows["SER1"]["saliency_path"] and rows["SER1"]["error"] == ""
    assert rows[NORMAL_VOLUME.name]["flagged"] is False and rows[NORMAL_VOLUME.name]["error"] == ""


def _recorded_image(log: Path, index: int) -> Image:
    with open(log, "a") as fh:
        fh.write(f"{index}\n")
    pixels = np.full((4, 16, 16), index, dtype=np.float32)
    return Image(pixels=pixels * 10, display=pixels)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_each_worker_decodes_at_most_one_volume_ahead_of_scoring(tmp_path, monkeypatch, workers):
    import medassist.models.tumor as tumor

    log = tmp_path / "decoded.txt"
    log.touch()
    scored: list[tuple[int, int, str]] = []

    def fake_prepare_volume(spec, image: Image) -> SimpleNamespace:  # runs where the volume is decoded
        return SimpleNamespace(inputs=torch.from_numpy(image.display[:, None]), value=int(image.display[0, 0, 0]))

    def fake_score_prepared_volume(network, spec, prepared) -> SimpleNamespace:  # a ScoredVolume's score, slices
        time.sleep(0.3)  # scoring slower than decoding: the workers run ahead as far as allowed
        scored.append((prepared.value, len(log.read_text().split()), type(prepared.inputs).__name__))
        return SimpleNamespace(score=prepared.value / 10, slices=(prepared.value,))

    monkeypatch.setattr(tumor, "prepare_volume", fake_prepare_volume)
    monkeypatch.setattr(tumor, "score_prepared_volume", fake_score_prepared_volume)
    spec = SimpleNamespace(name="fake_volume", input_kind="volume", preprocess=SimpleNamespace(source="display"))
    jobs = [Job(mr_series(f"v{i}", functools.partial(_recorded_image, log, i)), spec) for i in range(6)]  # type: ignore[arg-type]
    model = SimpleNamespace(network=None, scoring_network=None, spec=spec)  # a LoadedModel: what scores, on its runtime
    results = list(score_volume_jobs(model, jobs, None, num_workers=workers))  # type: ignore[arg-type]
    assert [(r.job.series.source_path, r.score, r.slices, r.error) for r in results] == \
           [(f"/data/v{i}", i / 10, (i,), "") for i in range(6)]
    assert [value for value, _, _ in scored] == list(range(6))
    for value, decoded, kind in scored:  # decoded so far: this one, plus at most one per worker
        assert value + 1 <= decoded <= value + 1 + workers and kind == "Tensor"


@needs_tumour_model
def test_volumes_decode_in_a_worker_process(tmp_path):
    (tumour,), _ = discover_series([TUMOUR_SERIES])
    series = [mr_series("pid", _decoder_pid), tumour]
    for workers in (0, 1):
        triage_series(series, [], tmp_path / str(workers),
                      TriageOptions(device="cpu", num_workers=workers, progress=False, explain="none"))
        rows = {Path(r["source_path"]).name: r for r in json.loads((tmp_path / str(workers) / "worklist.json").read_text())}
        pid = int(rows["pid"]["error"].split()[-1])
        assert (pid == os.getpid()) == (workers == 0)
        assert rows["SER1"]["flagged"] is True


@needs_tumour_model
def test_volumes_decode_in_process_when_shared_memory_is_short(tmp_path, monkeypatch):
    import medassist.triage.run as triage_run

    monkeypatch.setattr(triage_run, "shared_memory_free", lambda: 64 * 2**20)  # a container's default /dev/shm
    (tumour,), _ = discover_series([TUMOUR_SERIES])
    triage_series([mr_series("pid", _decoder_pid), tumour], [], tmp_path,
                  TriageOptions(device="cpu", num_workers=2, progress=False, explain="none"))
    rows = {Path(r["source_path"]).name: r for r in json.loads((tmp_path / "worklist.json").read_text())}
    assert int(rows["pid"]["error"].split()[-1]) == os.getpid()
    assert rows["SER1"]["flagged"] is True


def test_failure_message_names_the_path_once():
    from medassist.triage.inputs import VOLUME_FAILURE, failure_message

    named = MedassistError("/data/v: pixel data lost")
    assert failure_message("/data/v", named, None, VOLUME_FAILURE) == "/data/v: pixel data lost"
    bare = MedassistError("no brain found in this volume: it is empty or constant")
    assert failure_message("/data/v", bare, None, VOLUME_FAILURE) == \
           "/data/v: no brain found in this volume: it is empty or constant"
