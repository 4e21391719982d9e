"""The per-series time limit: a series that decodes too slowly becomes an error row, the run goes on."""

from __future__ import annotations

import csv
import functools
import json
import signal
import threading
import time

import numpy as np
import pytest

from medassist.cli import build_parser, main
from medassist.datamodel import Image, Series
from medassist.triage import TriageOptions, triage_series
from medassist.triage.inputs import DEFAULT_SERIES_TIMEOUT, DecodeTimeout, time_limit
from medassist.triage.worklist import QUARANTINE_NAME


def _slow_image(seconds: float) -> Image:
    time.sleep(seconds)
    pixels = np.zeros((1, 40, 40), dtype=np.float32)
    return Image(pixels=pixels, display=pixels)


def slow_series(index: int, seconds: float) -> Series:
    """A series whose loader takes ``seconds`` (a decoder stuck on a pathological file)."""
    path = f"/data/slow{index:03d}.dcm"
    return Series(
        study_uid=f"1.2.9.{index}", series_uid=f"1.2.9.{index}.1", patient_id="P", accession="A", modality="DX",
        body_part="HAND", source_path=path, paths=(path,), loader=functools.partial(_slow_image, seconds),
    )


@pytest.mark.parametrize("workers", [0, 1])
def test_a_series_over_the_time_limit_becomes_an_error_row_and_the_run_goes_on(
    tmp_path, model_dir, series_factory, workers
):
    series = [series_factory(1), slow_series(2, seconds=60.0), series_factory(3)]
    started = time.monotonic()
    options = TriageOptions(device="cpu", batch_size=1, num_workers=workers, weights_dir=model_dir, progress=False,
                            series_timeout=0.5)
    summary = triage_series(series, [], tmp_path, options)
    elapsed = time.monotonic() - started

    rows = json.loads((tmp_path / "worklist.json").read_text())
    assert (summary.n_findings, summary.n_errors) == (2, 1)
    assert rows[-1]["source_path"] == "/data/slow002.dcm" and rows[-1]["score"] is None
    assert rows[-1]["error"] == "/data/slow002.dcm: decoding took longer than 0.5 s (--series-timeout)"
    assert elapsed < 30, "the slow loader was interrupted, not waited for"
    with open(tmp_path / QUARANTINE_NAME, newline="") as fh:
        assert list(csv.reader(fh))[1:] == [["/data/slow002.dcm", "decoding took longer than 0.5 s (--series-timeout)"]]


def test_time_limit_interrupts_through_a_catch_all_and_restores_the_alarm():
    previous = signal.getsignal(signal.SIGALRM)
    with pytest.raises(DecodeTimeout):
        with time_limit(0.2):
            try:
                time.sleep(5)
            except Exception:  # a decoder's catch-all must not turn the timeout into another error
                pytest.fail("DecodeTimeout was caught as an Exception")
    assert signal.getsignal(signal.SIGALRM) is previous
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_time_limit_is_off_outside_the_main_thread_and_for_zero():
    outcome = []

    def work() -> None:
        with time_limit(0.05):
            time.sleep(0.3)
        outcome.append("finished")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    with time_limit(0):
        time.sleep(0.1)
    assert outcome == ["finished"]


def test_cli_series_timeout_option(capsys):
    parser = build_parser()
    base = ["triage", "in", "--out", "out"]
    assert parser.parse_args(base).series_timeout is None  # run_triage's default applies
    assert parser.parse_args(base + ["--series-timeout", "2.5"]).series_timeout == 2.5
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--series-timeout", "-1"])
    assert main(["triage", "--help"]) == 0
    assert f"no limit (default: {DEFAULT_SERIES_TIMEOUT:g})" in " ".join(capsys.readouterr().out.split())
