"""The Ray backend (``--backend ray``) writes the worklist the local backend writes.

The cluster tests start one small local Ray cluster for the session (2 CPUs, 200 MB object store,
bound to 127.0.0.1) and run both backends over the sample export (radiographs, the MR series and
the NIfTI volume, a US series, a truncated file) plus a series whose file disappears after discovery
and one whose loader does not pickle.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medassist.cli import main
from medassist.errors import MedassistError
from medassist.ingest import discover_series
from medassist.models.registry import WEIGHTS_DIR
from medassist.triage import TriageOptions, triage_series
from medassist.triage.ray_backend import (
    end_child_processes_under,
    import_ray,
    plan_actors,
    series_from_ref,
    series_ref,
    triage_series_ray,
)
from medassist.triage.testing import synthetic_radiograph, write_dicom_image, write_throwaway_model

EXPORT = Path(__file__).resolve().parents[2] / "samples" / "export"


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster for the session (the backend uses it and leaves it running)."""
    pytest.importorskip("ray", reason="Ray not installed (pip install 'medassist[ray]')")
    from medassist.triage.ray_backend import start_local_cluster

    ray = start_local_cluster(num_cpus=2, object_store_memory=200 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """The tiny random fracture model and, when shipped, the real tumour model (a volume model)."""
    folder = tmp_path_factory.mktemp("ray_models")
    write_throwaway_model(folder)
    for name in ("tumor_mri.json", "tumor_mri.pt"):
        if (WEIGHTS_DIR / name).is_file():
            shutil.copy(WEIGHTS_DIR / name, folder / name)
    return folder


def _dx_folder(root: Path, n: int) -> Path:
    for i in range(n):
        write_dicom_image(root / f"P{i}" / "IM1.dcm", synthetic_radiograph(96, 80 + 8 * i, 40 + i),
                          body_part="HAND", patient_id=f"RAY-{i}", index=40 + i)
    return root


def _worklist(out: Path) -> list[dict]:
    return json.loads((out / "worklist.json").read_text())


def test_ray_backend_writes_the_local_worklist(ray_cluster, models, tmp_path):
    extra = _dx_folder(tmp_path / "extra", 3)
    series, problems = discover_series([EXPORT, extra])
    # a file gone after discovery: an error row from the decode stage
    gone = next(s for s in series if s.source_path.startswith(str(extra / "P2")))
    Path(gone.paths[0]).unlink()
    # a loader that does not pickle (a closure): the Ray workers find the series again in its files
    index = next(i for i, s in enumerate(series) if s.source_path.startswith(str(extra / "P0")))
    original = series[index].loader
    series[index] = dataclasses.replace(series[index], loader=lambda: original())

    options = dict(device="cpu", batch_size=4, weights_dir=models, progress=False, explain="flagged")
    local = triage_series(series, problems, tmp_path / "local", TriageOptions(num_workers=1, **options))
    remote = triage_series_ray(series, problems, tmp_path / "ray", TriageOptions(**options))

    rows_local, rows_ray = _worklist(tmp_path / "local"), _worklist(tmp_path / "ray")
    assert [(r["series_uid"], r["model"], r["source_path"]) for r in rows_ray] == \
           [(r["series_uid"], r["model"], r["source_path"]) for r in rows_local], "same rows, same order"
    for mine, theirs in zip(rows_ray, rows_local):
        if theirs["score"] is None:
            assert mine["score"] is None
        else:
            assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
        assert {k: v for k, v in mine.items() if k != "score"} == {k: v for k, v in theirs.items() if k != "score"}
        if mine["saliency_path"]:
            assert (tmp_path / "ray" / mine["saliency_path"]).is_file()

    quarantine = tmp_path / "local" / "quarantine.csv"
    if quarantine.exists():  # the files behind error rows
        assert (tmp_path / "ray" / "quarantine.csv").read_text() == quarantine.read_text()
    assert (remote.n_series, remote.n_findings, remote.n_flagged, remote.n_not_applicable, remote.n_errors) == \
           (local.n_series, local.n_findings, local.n_flagged, local.n_not_applicable, local.n_errors)
    errors = {r["source_path"]: r["error"] for r in rows_ray if r["error"] and r["finding"] != "not applicable"}
    assert any(path.endswith("PAT12/STUDY1/SER1/IM0001.dcm") for path in errors), "truncated file: ingest error"
    assert any(path.startswith(str(extra / "P2")) for path in errors), "vanished file: decode error"
    assert any(r["model"] == "fracture_xray" and r["score"] is not None and r["source_path"].startswith(str(extra / "P0"))
               for r in rows_ray), "series with an unpicklable loader scored"
    if (models / "tumor_mri.json").is_file():
        mr = [r for r in rows_ray if r["model"] == "tumor_mri"]
        assert len(mr) == 2 and any(r["flagged"] and r["saliency_path"] for r in mr), "volume path, with maps"


def test_cli_backend_ray_and_resume(ray_cluster, tmp_path, capsys):
    export = _dx_folder(tmp_path / "in", 3)
    models = tmp_path / "models"
    write_throwaway_model(models)
    argv = ["triage", str(export), "--out", str(tmp_path / "out"), "--backend", "ray", "--device", "cpu",
            "--models-dir", str(models), "--quiet", "--explain", "all"]
    assert main(argv) == 0
    assert "3 series, 3 findings" in capsys.readouterr().out
    rows = _worklist(tmp_path / "out")
    assert len(rows) == 3 and all(r["score"] is not None and r["saliency_path"] for r in rows)
    assert main(argv) == 0, "a rerun resumes from the journal (nothing left for the cluster)"
    assert _worklist(tmp_path / "out") == rows


def test_series_ref_round_trip_finds_a_closure_loader_again(tmp_path):
    (series,), _ = discover_series([_dx_folder(tmp_path, 1)])
    plain = series_from_ref(series_ref(series))
    assert plain == series and (plain.load().pixels == series.load().pixels).all()
    closure = dataclasses.replace(series, loader=lambda: series.load())
    again = series_from_ref(series_ref(closure))
    assert again == series and (again.load().pixels == series.load().pixels).all()
    Path(series.paths[0]).unlink()
    with pytest.raises(MedassistError, match="not found again"):
        series_from_ref(series_ref(closure)).load()


def test_actor_plan_follows_the_cluster():
    assert plan_actors({"CPU": 2.0}, "auto", None) == (False, 1)
    assert plan_actors({"CPU": 8.0, "GPU": 2.0}, "auto", None) == (True, 2)
    assert plan_actors({"CPU": 8.0, "GPU": 2.0}, "cpu", 3) == (False, 3)
    with pytest.raises(MedassistError, match="no GPU"):
        plan_actors({"CPU": 4.0}, "cuda", None)
    with pytest.raises(MedassistError, match="decoding needs at least one more"):
        plan_actors({"CPU": 1.0}, "cpu", None)


def test_missing_ray_is_a_clear_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MedassistError, match=r"medassist\[ray\]"):
        import_ray()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_processes_of_a_failed_start_are_ended(tmp_path):
    marker = str(tmp_path / "ray_package")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        end_child_processes_under(marker)
        assert child.poll() is not None, "a child running from the package is ended"
        assert other.poll() is None, "other children are left alone"
    finally:
        other.kill()
        other.wait()


def test_the_ray_backend_refuses_a_runtime_other_than_torch(tmp_path):
    with pytest.raises(MedassistError, match="--runtime onnx is not available with --backend ray"):
        triage_series_ray([], [], tmp_path / "out", TriageOptions(runtime="onnx"))
    assert not (tmp_path / "out").exists()
