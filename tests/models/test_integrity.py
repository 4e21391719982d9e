"""Models are what was released: pins of the shipped models, spec validation, signed --models-dir.

Each test removes nothing from the repository: the shipped folder is copied to tmp_path and that
copy is made "the shipped folder" (integrity.SHIPPED_DIR) where a test edits shipped files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from medassist.cli import main
from medassist.errors import MedassistError
from medassist.models import integrity
from medassist.models.integrity import (
    PINS_MODULE,
    pins_from_folder,
    released,
    render_pins,
    sign_models_dir,
    signature_path,
)
from medassist.models.registry import WEIGHTS_DIR, load_model, shipped_specs, spec_by_name
from medassist.models.spec import read_spec
from medassist.triage.testing import write_throwaway_model

CPU = torch.device("cpu")


def edit_spec(path: Path, **changes) -> None:
    """Rewrite a spec JSON with top-level ``changes`` (NaN written as JSON's NaN)."""
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw, indent=2))


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped models folder that the integrity rules treat as the shipped one."""
    folder = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, folder)
    monkeypatch.setattr(integrity, "SHIPPED_DIR", folder.resolve())
    return folder


@pytest.fixture
def unsigned(tmp_path) -> Path:
    folder = tmp_path / "unsigned"
    write_throwaway_model(folder, sign=False)
    return folder


@pytest.fixture
def signed(tmp_path) -> Path:
    folder = tmp_path / "signed"
    write_throwaway_model(folder, sign=False)
    sign_models_dir(folder)
    return folder


# --------------------------------------------------------------------------- pins


def test_pins_are_the_shipped_files():
    """A re-trained or replaced shipped model that was not re-pinned fails here (and in every command)."""
    on_disk = pins_from_folder(WEIGHTS_DIR)
    assert released() == on_disk, "shipped models changed: run python scripts/pin_models.py"
    assert PINS_MODULE.read_text() == render_pins(on_disk), "released.py is not what scripts/pin_models.py writes"
    assert {s.name for s in shipped_specs()} == set(on_disk)


@pytest.mark.parametrize("threshold", [0.99, math.nan], ids=["0.99", "nan"])
def test_an_edited_shipped_threshold_is_refused(shipped_copy, threshold):
    edit_spec(shipped_copy / "fracture_xray.json", threshold=threshold)
    with pytest.raises(MedassistError, match="fracture_xray.json") as err:
        shipped_specs(shipped_copy)
    assert "refused" in str(err.value) or "will not be used" in str(err.value)


def test_an_edited_threshold_of_0_99_is_refused_by_the_pin(shipped_copy):
    edit_spec(shipped_copy / "fracture_xray.json", threshold=0.99)
    pin = released()["fracture_xray"]
    with pytest.raises(MedassistError, match=rf"fracture_xray.json: sha256 [0-9a-f]{{16}}\.\.\. is not the released "
                                             rf"fracture_xray 1.1.1 \({pin.spec_sha256[:16]}\.\.\.\)"):
        spec_by_name("fracture_xray", shipped_copy)


def test_weights_replaced_with_their_sha256_in_the_spec_are_refused(shipped_copy):
    """The attack the spec's own sha256 could not stop: new weights, and the spec updated to match."""
    write_throwaway_model(shipped_copy / "other", sign=False, widen_factor=0.5, seed=3)
    shutil.copy(shipped_copy / "other" / "fracture_xray.pt", shipped_copy / "fracture_xray.pt")
    new_sha = read_spec(shipped_copy / "other" / "fracture_xray.json").sha256
    edit_spec(shipped_copy / "fracture_xray.json", sha256=new_sha)
    with pytest.raises(MedassistError, match="fracture_xray.json: sha256 .* is not the released fracture_xray"):
        shipped_specs(shipped_copy)


def test_shipped_weights_that_are_not_the_released_ones_are_refused(shipped_copy):
    spec = spec_by_name("fracture_xray", shipped_copy)
    (shipped_copy / "fracture_xray.pt").write_bytes(b"\0" * 64)
    with pytest.raises(MedassistError, match=r"fracture_xray.pt: sha256 .* does not match the released "
                                             r"fracture_xray 1.1.1 d121e3115de7e289"):
        load_model(spec, CPU, shipped_copy)


def test_a_spec_edited_in_memory_is_not_loaded_from_the_shipped_folder(shipped_copy):
    spec = spec_by_name("fracture_xray", shipped_copy)
    edited = type(spec)(**{**spec.__dict__, "threshold": 0.99})
    with pytest.raises(MedassistError, match="not the released one"):
        load_model(edited, CPU, shipped_copy)


def test_an_unpinned_spec_in_the_shipped_folder_is_refused(shipped_copy):
    write_throwaway_model(shipped_copy, name="extra", sign=False)
    with pytest.raises(MedassistError, match="extra.json: not a released model"):
        shipped_specs(shipped_copy)


def test_a_copy_of_a_released_model_needs_no_signature(tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("fracture_xray.json", "fracture_xray.pt"):
        shutil.copy(WEIGHTS_DIR / name, folder / name)
    assert [s.version for s in shipped_specs(folder)] == ["1.1.1"]


def test_pin_models_check_reports_stale_pins(shipped_copy, monkeypatch, capsys):
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts" / "pin_models.py"
    module_spec = importlib.util.spec_from_file_location("pin_models", script)
    pin_models = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(pin_models)
    pins_file = shipped_copy / "released.py"
    pins_file.write_text(PINS_MODULE.read_text())
    monkeypatch.setattr(pin_models, "SHIPPED_DIR", shipped_copy)
    monkeypatch.setattr(pin_models, "PINS_MODULE", pins_file)
    assert pin_models.main(["--check"]) == 0
    edit_spec(shipped_copy / "tumor_mri.json", version="2.0.0")
    assert pin_models.main(["--check"]) == 1
    assert pin_models.main([]) == 0 and pin_models.main(["--check"]) == 0
    assert '"tumor_mri": ("2.0.0", ' in pins_file.read_text()
    assert "pinned tumor_mri 2.0.0" in capsys.readouterr().out


# --------------------------------------------------------------------------- spec values


@pytest.mark.parametrize("changes, problem", [
    ({"threshold": math.nan}, "threshold nan"),
    ({"threshold": 0.0}, "threshold 0.0"),
    ({"threshold": 1.0}, "threshold 1.0"),
    ({"threshold": "0.5"}, "threshold '0.5'"),
    ({"threshold": math.inf}, "threshold inf"),
    ({"labels": []}, "labels []"),
    ({"labels": ["fracture", "fracture"]}, "labels"),
    ({"weights": "../../etc/passwd"}, "weights '../../etc/passwd'"),
    ({"sha256": "abc"}, "sha256"),
    ({"score_head": "max"}, "score_head 'max'"),
    ({"modalities": []}, "modalities"),
    ({"preprocess": {"input_size": 0}}, "input_size 0"),
    ({"preprocess": {"input_size": 100000}}, "input_size 100000"),
    ({"preprocess": {"input_size": 64.5}}, "input_size 64.5"),
    ({"preprocess": {"input_size": 64, "percentiles": [99.5, 0.5]}}, "percentiles"),
    ({"preprocess": {"input_size": 64, "percentiles": [0.5, 150]}}, "percentiles"),
    ({"preprocess": {"input_size": 64, "percentiles": [math.nan, 99]}}, "percentiles"),
    ({"validation": {"inference": {"slice_threshold": math.nan}}}, "not finite"),
])
def test_invalid_spec_values_are_refused_naming_the_file(unsigned, changes, problem):
    path = unsigned / "fracture_xray.json"
    edit_spec(path, **changes)
    with pytest.raises(MedassistError, match="invalid model spec") as err:
        read_spec(path)
    assert str(err.value).startswith(f"{path}: ") and problem in str(err.value)


def test_the_shipped_specs_are_valid():
    for path in sorted(WEIGHTS_DIR.glob("*.json")):
        assert read_spec(path).name == path.stem


def test_labels_that_do_not_fit_the_network_outputs_are_refused(signed):
    path = signed / "fracture_xray.json"
    edit_spec(path, validation={"inference": {"type_labels": ["glioma", "meningioma"]}})  # the network has 1 output
    sign_models_dir(signed)
    with pytest.raises(MedassistError, match="has 1 output"):
        load_model(read_spec(path), CPU, signed)


# --------------------------------------------------------------------------- signatures


def test_an_unsigned_models_dir_is_refused(unsigned):
    with pytest.raises(MedassistError, match="fracture_xray.json: model fracture_xray is not signed") as err:
        shipped_specs(unsigned)
    assert f"medassist models sign --models-dir {unsigned}" in str(err.value)


def test_a_signed_models_dir_is_accepted(signed):
    [spec] = shipped_specs(signed)
    assert load_model(spec, CPU, signed).spec.version == "0.0.1-test"
    assert json.loads(signature_path(signed / "fracture_xray.json").read_text())["algorithm"] == "HMAC-SHA256"


def test_a_spec_edited_after_signing_is_refused(signed):
    edit_spec(signed / "fracture_xray.json", threshold=0.9)
    with pytest.raises(MedassistError, match="fracture_xray.sig: the signature does not match fracture_xray.json"):
        shipped_specs(signed)


def test_a_forged_mac_is_refused(signed):
    sig = signature_path(signed / "fracture_xray.json")
    raw = json.loads(sig.read_text())
    raw["mac"] = "0" * 64
    sig.write_text(json.dumps(raw))
    with pytest.raises(MedassistError, match="the signature does not match"):
        shipped_specs(signed)


def test_weights_and_spec_replaced_and_signature_copied_are_refused(signed, tmp_path):
    """New weights with their sha256 in the spec, beside the old (valid-looking) signature file."""
    write_throwaway_model(tmp_path / "other", sign=False, seed=5)
    shutil.copy(tmp_path / "other" / "fracture_xray.pt", signed / "fracture_xray.pt")
    shutil.copy(tmp_path / "other" / "fracture_xray.json", signed / "fracture_xray.json")
    with pytest.raises(MedassistError, match="the signature does not match"):
        shipped_specs(signed)


def test_a_signature_by_another_key_is_refused(unsigned, tmp_path):
    sign_models_dir(unsigned, key_file=tmp_path / "other.key")
    with pytest.raises(MedassistError, match="fracture_xray.sig: signed with another key"):
        shipped_specs(unsigned)


def test_signing_refuses_weights_that_do_not_match_the_spec(unsigned):
    (unsigned / "fracture_xray.pt").write_bytes(b"changed")
    with pytest.raises(MedassistError, match="not signed"):
        sign_models_dir(unsigned)
    assert not signature_path(unsigned / "fracture_xray.json").exists()


def test_the_shipped_folder_is_pinned_not_signed():
    with pytest.raises(MedassistError, match="pinned, not signed"):
        sign_models_dir(WEIGHTS_DIR)


def test_models_sign_creates_the_site_key_0600_and_signs(unsigned, tmp_path, monkeypatch, capsys):
    key = tmp_path / "config" / "site.key"
    monkeypatch.setenv("MEDASSIST_KEY_FILE", str(key))
    assert main(["models", "--models-dir", str(unsigned)]) == 2
    assert "is not signed" in capsys.readouterr().err
    assert main(["models", "sign", "--models-dir", str(unsigned)]) == 0
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "signed fracture_xray 0.0.1-test" in capsys.readouterr().out
    assert main(["models", "--models-dir", str(unsigned)]) == 0
    assert "fracture_xray" in capsys.readouterr().out


def test_allow_unsigned_models_warns_on_every_run_and_only_then(unsigned, capsys, caplog):
    caplog.set_level(logging.WARNING, logger="medassist")
    for _ in range(2):
        assert main(["models", "--models-dir", str(unsigned), "--allow-unsigned-models"]) == 0
    warnings = [r for r in caplog.records if "is NOT signed" in r.getMessage()]
    assert len(warnings) == 2 and "fracture_xray" in warnings[0].getMessage()
    with pytest.raises(MedassistError, match="not signed"):  # the allowance ended with the command
        shipped_specs(unsigned)


def test_allow_unsigned_models_does_not_excuse_a_bad_signature(signed, capsys):
    edit_spec(signed / "fracture_xray.json", threshold=0.9)
    assert main(["models", "--models-dir", str(signed), "--allow-unsigned-models"]) == 2
    assert "the signature does not match" in capsys.readouterr().err


def test_allow_unsigned_models_needs_a_models_dir(capsys):
    assert main(["models", "--allow-unsigned-models"]) == 2
    assert "applies to --models-dir" in capsys.readouterr().err


def test_train_says_to_re_pin_a_model_it_wrote_into_the_shipped_folder(shipped_copy, capsys):
    from medassist.cli import warn_if_unpinned

    path = shipped_copy / "tumor_mri.json"
    warn_if_unpinned(read_spec(path))
    assert capsys.readouterr().err == ""
    edit_spec(path, version="2.0.0")
    warn_if_unpinned(read_spec(path))
    assert "python scripts/pin_models.py" in capsys.readouterr().err
