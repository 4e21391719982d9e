"""Installable in parts: the core runs without any extra, and each command that needs one says which.

The subprocess tests run Python with ``tests/no_extras`` first on PYTHONPATH: its ``sitecustomize``
refuses the packages of every extra (streamlit, argon2, pynetdicom, dicomweb_client, highdicom,
requests, ray, pylibjpeg, libjpeg, openjpeg, rle, gdcm, jpeg_ls, onnx, onnxruntime) as an interpreter without them
would, in that process and in the decode workers it starts.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medassist.errors import MedassistError
from medassist.optional import (
    DISTRIBUTIONS,
    EXTRAS,
    MissingDependency,
    distribution,
    install_command,
    is_installed,
    missing,
    require,
    require_extra,
)

ROOT = Path(__file__).resolve().parents[1]
BLOCKER = ROOT / "tests" / "no_extras"
SAMPLES = ROOT / "samples" / "export"


def without_extras(args: list[str], *, timeout: float = 120, cwd: Path | None = None, **kwargs):
    """Run ``python ARGS`` as if only the core were installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BLOCKER), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MEDASSIST_BLOCKED_MODULES", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd or ROOT, **kwargs)


def medassist_without_extras(argv: list[str], **kwargs):
    return without_extras(["-m", "medassist.cli", *argv], **kwargs)


# -- (a) the core imports and triages without any extra -------------------------------------------------


def test_the_blocker_really_hides_every_extra():
    """Guards the tests below against a blocker that blocks nothing."""
    code = ("import importlib, json\n"
            "from medassist.optional import EXTRAS, missing\n"
            "failed = []\n"
            "for name in ['streamlit', 'argon2', 'pynetdicom', 'dicomweb_client', 'highdicom', 'requests', 'ray',\n"
            "             'pylibjpeg', 'libjpeg', 'openjpeg', 'rle', 'gdcm', 'jpeg_ls', 'onnx', 'onnxruntime']:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ModuleNotFoundError:\n"
            "        failed.append(name)\n"
            "print(json.dumps({'failed': failed, 'missing': {e: missing(e) for e in EXTRAS}}))\n")
    proc = without_extras(["-c", code])
    assert proc.returncode == 0, proc.stderr
    import json

    result = json.loads(proc.stdout)
    assert len(result["failed"]) == 15
    assert result["missing"] == {extra: list(modules) for extra, modules in EXTRAS.items()}


def test_core_packages_import_without_extras():
    code = ("import sys\n"
            "import medassist.triage, medassist.audit, medassist.ingest, medassist.cli\n"
            "import medassist.explain, medassist.preprocess, medassist.dicom_out, medassist.pacs, medassist.review\n"
            "import medassist.review.server, medassist.triage.ray_backend, medassist.audit.run, medassist.audit.agreement\n"
            "blocked = {'streamlit', 'argon2', 'pynetdicom', 'dicomweb_client', 'highdicom', 'requests', 'ray', 'pylibjpeg', 'gdcm'}\n"
            "print(sorted(m for m in sys.modules if m.partition('.')[0] in blocked))\n")
    proc = without_extras(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _jpeg_ls_radiograph(path: Path) -> Path:
    """A DX hand radiograph stored as JPEG-LS lossless: no decoder of the core reads it."""
    import pydicom
    from pydicom.uid import JPEGLSLossless

    from medassist.triage.testing import synthetic_radiograph, write_dicom_image

    write_dicom_image(path, synthetic_radiograph(160, 120, 7), body_part="HAND", patient_id="JLS-1")
    ds = pydicom.dcmread(path)
    try:
        ds.compress(JPEGLSLossless)  # pyjpegls (or gdcm), here in the test environment
    except Exception as exc:  # pragma: no cover - an environment without any JPEG-LS encoder
        pytest.skip(f"cannot write a JPEG-LS file here: {exc}")
    ds.save_as(path, enforce_file_format=True)
    return path


def test_triage_of_the_sample_export_without_extras(tmp_path):
    """The headless batch job on the core alone: exit 0, a worklist; a file only the codecs extra decodes
    is an error row naming the file and the extra, and every other series is still scored."""
    inputs = tmp_path / "export"
    shutil.copytree(SAMPLES, inputs)
    jpeg_ls = _jpeg_ls_radiograph(inputs / "JLS" / "IM0001.dcm")
    out = tmp_path / "out"
    proc = medassist_without_extras(["triage", str(inputs), "--out", str(out), "--quiet"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (out / "worklist.json").is_file()
    rows = list(csv.DictReader((out / "worklist.csv").open(newline="")))

    by_patient = {m.group(1): r for r in rows if (m := re.search(r"/(PAT\d\d)/", r["source_path"]))}
    jls = next(r for r in rows if r["source_path"].endswith("JLS/IM0001.dcm"))
    assert f"{jpeg_ls.parent.name}/{jpeg_ls.name}:" in jls["error"]  # the message starts with the file
    assert "no decoder for JPEG-LS" in jls["error"] and "pip install 'medassist[codecs]'" in jls["error"]
    assert jls["score"] == ""

    # 12-bit JPEG: Pillow (core) is tried and fails; the error says the codecs extra may decode it
    pat09 = by_patient["PAT09"]
    assert "PAT09" in pat09["error"] and "medassist[codecs]" in pat09["error"] and pat09["score"] == ""

    scored = [r for r in rows if r["score"]]
    assert len(scored) >= 10  # the uncompressed DX/MR series, the NIfTI volume, the JPEG 2000 CR (Pillow)
    assert by_patient["PAT10"]["score"] and not by_patient["PAT10"]["error"]  # JPEG 2000: Pillow decodes it
    quarantine = (out / "quarantine.csv").read_text()
    assert "JLS/IM0001.dcm" in quarantine and "medassist[codecs]" in quarantine


# -- (b) commands that need an extra refuse clearly, exit 2 --------------------------------------------


def _refused(proc, extra: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert f"pip install 'medassist[{extra}]'" in proc.stderr
    assert proc.stderr.startswith("medassist: error: ")
    return proc.stderr


def test_review_without_the_review_extra_says_how_to_install_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    err = _refused(medassist_without_extras(["review", str(out)]), "review")
    assert "streamlit" in err and "argon2-cffi" in err
    assert not (out / "decisions.sqlite").exists()  # refused before the decision log is opened


def test_listen_without_the_pacs_extra_says_how_to_install_it(tmp_path):
    err = _refused(medassist_without_extras(["listen", "--allow-any-ae", "--out", str(tmp_path / "l"),
                                             "--port", "11999"]), "pacs")
    assert "medassist listen" in err and "pynetdicom" in err
    assert not (tmp_path / "l").exists()


def test_users_add_without_argon2_refuses_before_asking_for_a_password(tmp_path):
    users = tmp_path / "users.json"
    proc = medassist_without_extras(["users", "add", "alice", "--password-stdin", "--users-file", str(users)],
                                    input="a long password\n")
    err = _refused(proc, "review")
    assert "argon2-cffi" in err and not users.exists()


@pytest.mark.parametrize(("options", "extra"), [
    (["--send", "dicom://PACS@127.0.0.1:4242"], "pacs"),
    (["--backend", "ray"], "ray"),
    (["--runtime", "onnx", "--onnx-dir", "."], "onnx"),
])
def test_triage_options_needing_an_extra_refuse_before_triaging(tmp_path, options, extra):
    out = tmp_path / "out"
    _refused(medassist_without_extras(["triage", str(SAMPLES / "PAT01"), "--out", str(out), *options]), extra)
    assert not out.exists()  # nothing scored first


def test_export_model_without_the_onnx_extra_says_how_to_install_it(tmp_path):
    out = tmp_path / "onnx"
    err = _refused(medassist_without_extras(["export-model", "fracture_xray", "--format", "onnx", "--out", str(out)]),
                   "onnx")
    assert "medassist export-model --format onnx needs onnx, onnxruntime (not installed)" in err
    assert not out.exists()


def test_triage_from_a_pacs_without_the_pacs_extra(tmp_path):
    out = tmp_path / "out"
    err = _refused(medassist_without_extras(["triage", "--pacs", "http://127.0.0.1:9/dicom-web", "--out", str(out)]),
                   "pacs")
    assert "dicomweb-client" in err and not out.exists()


# -- (c) the gate itself ----------------------------------------------------------------------------------


def test_require_returns_the_module():
    import json

    assert require("json", extra="pacs", feature="x") is json
    assert require("os.path", extra="review", feature="x") is os.path


def test_require_of_a_missing_module_names_package_feature_and_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ModuleNotFoundError
    with pytest.raises(MissingDependency) as info:
        require("highdicom", extra="pacs", feature="DICOM results")
    error = info.value
    assert isinstance(error, MedassistError)  # the CLI prints it and exits 2
    assert str(error) == "DICOM results needs highdicom (not installed): pip install 'medassist[pacs]'"
    assert (error.modules, error.extra, error.feature) == (("highdicom",), "pacs", "DICOM results")


def test_require_of_a_submodule_names_the_distribution(monkeypatch):
    # both entries: an earlier test in the same process may have imported the submodule already
    monkeypatch.setitem(sys.modules, "argon2", None)
    monkeypatch.setitem(sys.modules, "argon2.exceptions", None)
    with pytest.raises(MissingDependency, match=re.escape("needs argon2-cffi (not installed): "
                                                          "pip install 'medassist[review]'")):
        require("argon2.exceptions", extra="review", feature="accounts")


def test_an_installed_package_that_does_not_import_is_reported_with_its_cause(tmp_path, monkeypatch):
    package = tmp_path / "medassist_test_broken_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("import medassist_test_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingDependency) as info:
        require("medassist_test_broken_pkg", extra="codecs", feature="decoding")
    message = str(info.value)
    assert "it does not import" in message and "medassist_test_absent_dependency" in message
    assert message.endswith("pip install 'medassist[codecs]'")
    sys.modules.pop("medassist_test_broken_pkg", None)


def test_unknown_extra_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown extra"):
        require("json", extra="viewer", feature="x")
    with pytest.raises(ValueError, match="unknown extra"):
        install_command("gpu")


def test_require_extra_lists_every_missing_module(monkeypatch):
    monkeypatch.setattr("medassist.optional.is_installed", lambda name: name not in {"pynetdicom", "highdicom"})
    assert missing("pacs") == ["pynetdicom", "highdicom"]
    assert missing("review") == []
    with pytest.raises(MissingDependency) as info:
        require_extra("pacs", feature="medassist listen")
    assert str(info.value) == ("medassist listen needs pynetdicom, highdicom (not installed): "
                               "pip install 'medassist[pacs]'")
    require_extra("review", feature="medassist review")  # complete: no error


def test_is_installed_finds_without_importing(monkeypatch):
    assert is_installed("json") and is_installed("os.path")
    assert not is_installed("medassist_test_no_such_module")
    monkeypatch.setitem(sys.modules, "ray", None)
    assert not is_installed("ray")


def test_distribution_names():
    assert distribution("argon2.exceptions") == "argon2-cffi"
    assert distribution("dicomweb_client.api") == "dicomweb-client"
    assert distribution("gdcm") == "python-gdcm"
    assert distribution("something_else") == "something_else"


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\s]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_gate_and_pyproject_agree_on_every_extra():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert _names(extras[extra]) == {distribution(m).lower() for m in modules}, extra
    optional = {d.lower() for d in DISTRIBUTIONS.values()} | {"ray", "pyjpegls"}
    core = _names(project["dependencies"])
    assert not core & optional, core & optional
    assert {"torch==2.13.0"} <= set(project["dependencies"])
    (everything,) = extras["all"]
    assert everything.startswith("medassist[") and set(everything[10:-1].split(",")) == set(EXTRAS)
    assert "medassist[all]" in extras["test"]
    assert "-e '.[all,test]'" in (ROOT / "Makefile").read_text()


# -- the gate where the code uses it (in-process) ---------------------------------------------------------


def test_accounts_need_argon2_only_to_hash(tmp_path, monkeypatch):
    from medassist.review import accounts

    monkeypatch.setattr(accounts, "_hasher_instance", None)
    monkeypatch.setitem(sys.modules, "argon2", None)
    users = tmp_path / "users.json"
    assert accounts.list_accounts(users) == []  # listing needs no argon2
    with pytest.raises(MissingDependency, match=re.escape("pip install 'medassist[review]'")):
        accounts.add_user("alice", "a long password", users)
    assert not users.exists()


def test_dicom_results_need_highdicom(tmp_path, monkeypatch):
    from medassist.dicom_out.results import write_dicom_results

    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(MissingDependency, match=re.escape("needs highdicom (not installed): "
                                                          "pip install 'medassist[pacs]'")):
        write_dicom_results(tmp_path)


def test_missing_ray_names_the_ray_extra(monkeypatch):
    from medassist.triage.ray_backend import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependency, match=re.escape("--backend ray needs ray[data] (not installed): "
                                                          "pip install 'medassist[ray]'")):
        import_ray()
