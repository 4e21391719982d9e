"""`medassist triage` over 1,024 broken files (16 mutations of 8 sources, 8 each), good files and the
malformed shared files: the run finishes, every good file is scored, every broken file is one row (an
error naming it with a specific reason, or a scored or not-applicable row if the mutation left it a
readable image) and one line of files.csv with the same outcome, quarantine.csv lists the errors, no
traceback reaches a row or the output, and memory and time stay bounded."""

from __future__ import annotations

import collections
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medassist.datamodel import RowKind, WorklistRow
from medassist.ingest.fuzz import STRUCTURAL_MUTATIONS, default_sources, reason_category, write_fuzz_corpus
from medassist.triage.manifest import read_manifest
from medassist.triage.testing import synthetic_radiograph, write_dicom_image, write_throwaway_model
from medassist.triage.worklist import row_kind

ROOT = Path(__file__).resolve().parents[2]
SHARED_DICOM = ROOT.parent / "shared/data/dicom"
# The files of shared/data/dicom that are broken on purpose (see tests/ingest/test_discover.py).
SHARED_MALFORMED = (
    "pydicom/MR_truncated.dcm",
    "pydicom/no_meta.dcm",
    "pydicom/badVR.dcm",
    "pydicom/UN_sequence.dcm",
    "pydicom/meta_missing_tsyntax.dcm",
    "pydicom/empty_charset_LEI.dcm",
    "pydicom-data/emri_small_jpeg_2k_lossless_too_short.dcm",
    "pydicom/JPEG2000-embedded-sequence-delimiter.dcm",
    "pylibjpeg-data/RG2_JPLY.dcm",
    "pylibjpeg-data/JPEGLossless_1s_1f_i_16_16_bad.dcm",
)
# Peak resident memory allowed to the triage process and, separately, to its decode worker.
MAX_RSS_BYTES = 1536 * 1024**2

# Runs `medassist triage`; reports peak RSS (KiB) and CPU seconds of the process and its reaped
# workers. The process's own peak is VmHWM: ru_maxrss keeps the forking parent's (pytest's) across
# exec. A worker's ru_maxrss includes the pages it shares with the triage process it forked from.
_DRIVER = """
import json, resource, sys
from medassist.cli import main
status = main(sys.argv[1:])
usage = {}
for who in ("RUSAGE_SELF", "RUSAGE_CHILDREN"):
    ru = resource.getrusage(getattr(resource, who))
    usage[who] = {"maxrss_kb": ru.ru_maxrss, "cpu_s": round(ru.ru_utime + ru.ru_stime, 1)}
usage["RUSAGE_SELF"]["maxrss_kb"] = [int(line.split()[1]) for line in open("/proc/self/status")
                                     if line.startswith("VmHWM:")][0]
print("USAGE " + json.dumps(usage), file=sys.stderr)
sys.exit(status)
"""


def kind_of(record: dict) -> RowKind:
    """The kind of a row of worklist.json, as read back."""
    return row_kind(WorklistRow.from_record(record))


@pytest.fixture(scope="module")
def broad_model_dir(tmp_path_factory) -> Path:
    """A throwaway model whose scope covers every modality in the corpus, so every series is decoded."""
    folder = tmp_path_factory.mktemp("broad_model")
    write_throwaway_model(folder, modalities=("DX", "CR", "RG", "MR", "CT", "OT", "US", "NM"), excluded_body_parts=())
    return folder


def test_triage_survives_the_fuzz_corpus(tmp_path, broad_model_dir, capsys):
    if not SHARED_DICOM.is_dir():
        pytest.skip(f"shared DICOM data not found at {SHARED_DICOM}")
    corpus = write_fuzz_corpus(default_sources(ROOT / "samples/export", SHARED_DICOM), tmp_path / "corpus",
                               per_mutation=8)
    assert len(corpus) >= 1000
    good = [write_dicom_image(tmp_path / "good" / f"G{i}.dcm", synthetic_radiograph(96, 80, i), index=i)
            for i in range(4)]
    malformed = [SHARED_DICOM / rel for rel in SHARED_MALFORMED]
    out = tmp_path / "out"

    command = [sys.executable, "-c", _DRIVER, "triage", str(tmp_path / "corpus"), str(tmp_path / "good"),
               *map(str, malformed), "--out", str(out), "--models-dir", str(broad_model_dir), "--device", "cpu",
               "--workers", "1", "--batch-size", "8", "--explain", "none", "--quiet", "--series-timeout", "60"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started

    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    usage = json.loads(done.stderr.rsplit("USAGE ", 1)[1].splitlines()[0])
    main, workers = usage["RUSAGE_SELF"], usage["RUSAGE_CHILDREN"]
    rows = json.loads((out / "worklist.json").read_text())
    with open(out / "quarantine.csv", newline="") as handle:
        quarantine = {(q["path"], q["reason"]) for q in csv.DictReader(handle)}
    by_path = collections.defaultdict(list)
    for row in rows:
        by_path[row["source_path"]].append(row)
    files = read_manifest(out / "files.csv")
    manifest = {entry["path"]: entry for entry in files}
    assert len(manifest) == len(files), "each file once in files.csv"

    for path in good:
        (row,) = by_path[str(path)]
        assert kind_of(row) == "scored", row
    categories: collections.Counter[str] = collections.Counter()
    decodable: collections.Counter[str] = collections.Counter()
    for path, mutation in [(b.path, b.mutation) for b in corpus] + [(p, "shared malformed") for p in malformed]:
        (row,) = by_path[str(path)]  # exactly one row per file: nothing lost, nothing doubled
        entry = manifest[str(path)]
        if kind_of(row) == "scored" or (kind_of(row) == "not_applicable" and mutation not in STRUCTURAL_MUTATIONS):
            decodable[mutation] += 1  # not applicable: a value mutation changed the modality, say
            assert entry["status"] == {"scored": "used"}.get(kind_of(row), "not applicable"), (entry, row)
            continue
        assert kind_of(row) == "error", row
        reason = row["error"].removeprefix(f"{path}: ")
        category = reason_category(reason)
        assert category is not None, (path, row["error"])
        categories[category] += 1
        assert (str(path), reason) in quarantine
        assert entry["status"] in ("error", "unsupported") and entry["reason"] == reason, (entry, row)
    assert len(rows) == len(good) + len(corpus) + len(malformed)
    assert set(manifest) == {str(p) for p in (*good, *malformed, *(b.path for b in corpus))}
    assert decodable["shared malformed"] == 0
    assert all(decodable[m] == 0 for m in ("truncate", "lie_rows_columns", "huge_length"))
    assert len(quarantine) == sum(categories.values())
    assert main["maxrss_kb"] * 1024 < MAX_RSS_BYTES and workers["maxrss_kb"] * 1024 < MAX_RSS_BYTES
    with capsys.disabled():
        print(f"\n{seconds:.0f} s: triage over {len(corpus)} fuzzed + {len(malformed)} malformed + {len(good)} good files: "
              f"{sum(categories.values())} error rows, {sum(decodable.values())} scored broken files "
              f"{dict(decodable)}; max RSS {main['maxrss_kb'] // 1024} MiB (worker {workers['maxrss_kb'] // 1024} "
              f"MiB), CPU {main['cpu_s']} s + {workers['cpu_s']} s\nreasons: {dict(categories.most_common())}")
