"""Choosing the runtime: onnx when asked and checkable, auto only when everything holds, torch otherwise."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch

from medassist.errors import MedassistError
from medassist.models import onnx_runtime
from medassist.models.onnx_runtime import (
    RUNTIMES,
    OnnxLoadedModel,
    OnnxNetwork,
    agreement,
    load_scorer,
    with_runtime,
)
from medassist.models.registry import load_model
from medassist.models.tumor import score_prepared_volume
from medassist.optional import MissingDependency
from onnx_helpers import exported_dir, radiograph_inputs, shipped, volume_inputs

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def fracture():
    return load_model(shipped("fracture_xray"), torch.device("cpu"))


def test_onnx_scores_match_and_saliency_network_stays_torch(fracture):
    model = with_runtime(fracture, "onnx", exported_dir())
    assert isinstance(model, OnnxLoadedModel) and model.runtime == "onnx"
    assert model.network is fracture.network  # Captum runs on the torch network
    inputs = radiograph_inputs(fracture.spec, 4)
    scores, features = model.scores_and_features(inputs)
    assert features is None
    assert torch.allclose(scores, fracture.scores(inputs), atol=1e-4, rtol=0)
    assert agreement(fracture, model.scorer, inputs) <= 1e-4


def test_torch_runtime_is_the_model_itself(fracture):
    assert with_runtime(fracture, "torch", exported_dir()) is fracture
    assert fracture.runtime == "torch" and fracture.scoring_network is fracture.network
    with pytest.raises(MedassistError, match="--runtime 'tensorrt'"):
        with_runtime(fracture, "tensorrt", None)


def test_volume_scoring_runs_unchanged_on_the_exported_graph():
    spec = shipped("tumor_mri")
    torch_model = load_model(spec, torch.device("cpu"))
    model = with_runtime(torch_model, "onnx", exported_dir())
    assert isinstance(model.scoring_network, OnnxNetwork)
    prepared = volume_inputs(spec)
    ours = score_prepared_volume(torch_model.network, spec, prepared)
    theirs = score_prepared_volume(model.scoring_network, spec, prepared)
    assert abs(ours.score - theirs.score) <= 1e-4
    assert ours.slices == theirs.slices and ours.flagged == theirs.flagged
    np.testing.assert_allclose(ours.slice_scores, theirs.slice_scores, atol=1e-4)
    assert ours.type_probabilities.keys() == theirs.type_probabilities.keys()
    np.testing.assert_allclose(list(ours.type_probabilities.values()), list(theirs.type_probabilities.values()),
                               atol=1e-4)


@pytest.mark.parametrize("onnx_dir", ["missing", "none", "stale"])
def test_onnx_refuses_and_auto_falls_back_with_a_log_line(fracture, onnx_dir, tmp_path, caplog):
    if onnx_dir == "stale":
        import dataclasses

        fracture = dataclasses.replace(fracture, spec=dataclasses.replace(fracture.spec, sha256="1" * 64))
    folder = {"missing": tmp_path, "none": None, "stale": exported_dir()}[onnx_dir]
    with pytest.raises(MedassistError) as err:
        with_runtime(fracture, "onnx", folder)
    if folder is not None:
        assert str(folder / "fracture_xray.onnx") in str(err.value)
    with caplog.at_level(logging.WARNING, logger="medassist"):
        assert with_runtime(fracture, "auto", folder) is fracture
    assert "--runtime auto: model fracture_xray scores with torch" in caplog.text


def test_a_disagreeing_export_is_refused_and_auto_keeps_torch(fracture, monkeypatch, caplog):
    monkeypatch.setattr(onnx_runtime, "agreement", lambda model, scorer: 0.02)
    with pytest.raises(MedassistError, match="differ from torch's by up to 0.02"):
        with_runtime(fracture, "onnx", exported_dir())
    with caplog.at_level(logging.WARNING, logger="medassist"):
        assert with_runtime(fracture, "auto", exported_dir()) is fracture


def test_auto_picks_onnx_when_everything_holds(fracture):
    assert with_runtime(fracture, "auto", exported_dir()).runtime == "onnx"


def test_missing_onnxruntime_names_the_extra(fracture, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ModuleNotFoundError
    with pytest.raises(MissingDependency, match=r"needs onnxruntime \(not installed\): pip install 'medassist\[onnx\]'"):
        load_scorer(shipped("fracture_xray"), exported_dir())
    with pytest.raises(MissingDependency, match=r"medassist triage --runtime onnx needs onnxruntime"):
        with_runtime(fracture, "onnx", exported_dir())
    with caplog.at_level(logging.WARNING, logger="medassist"):
        assert with_runtime(fracture, "auto", exported_dir()) is fracture
    assert "pip install 'medassist[onnx]'" in caplog.text


def test_cli_runtime_choices_are_the_runtimes():
    from medassist import cli

    assert cli.RUNTIMES == RUNTIMES


def test_the_default_folder_is_the_environment_s_else_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDASSIST_ONNX_DIR", str(tmp_path / "exports"))
    assert onnx_runtime.default_onnx_dir() == tmp_path / "exports"
    monkeypatch.delenv("MEDASSIST_ONNX_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert onnx_runtime.default_onnx_dir() == tmp_path / "xdg" / "medassist" / "onnx"
    assert onnx_runtime.DEFAULT_RUNTIME == "auto"


def test_an_export_records_its_agreement_and_triage_then_needs_no_torch_network(fracture):
    spec = fracture.spec
    scorer = load_scorer(spec, exported_dir())
    record = onnx_runtime.recorded_agreement(scorer)
    assert record is not None and record.onnx_sha256 == scorer.sha256 and record.weights_sha256 == spec.sha256
    assert record.max_diff <= onnx_runtime.AGREEMENT_TOLERANCE
    model = onnx_runtime.load_for_runtime(spec, torch.device("cpu"), "auto", exported_dir())
    assert isinstance(model, OnnxLoadedModel) and not model.network_loaded
    inputs = radiograph_inputs(spec, 3)
    assert torch.allclose(model.scores(inputs), fracture.scores(inputs), atol=1e-4, rtol=0)
    assert not model.network_loaded
    network = model.network  # saliency asks for it: built then, from the checked weights
    assert model.network_loaded and network is model.network
    assert torch.equal(network.forward_all(inputs)[0], fracture.network.forward_all(inputs)[0])


@pytest.mark.parametrize("change", ["bytes", "environment", "garbage"])
def test_a_record_of_other_bytes_or_another_machine_is_not_trusted(fracture, tmp_path, monkeypatch, change):
    import shutil

    spec = fracture.spec
    source = onnx_runtime.onnx_file(spec, exported_dir())
    shutil.copy(source, tmp_path / source.name)
    record_path = onnx_runtime.agreement_file(tmp_path / source.name)
    shutil.copy(onnx_runtime.agreement_file(source), record_path)
    if change == "bytes":
        record = json.loads(record_path.read_text())
        record_path.write_text(json.dumps(record | {"onnx_sha256": "0" * 64}))
    elif change == "environment":
        monkeypatch.setattr(onnx_runtime, "cpu_model", lambda: "another CPU")
    else:
        record_path.write_text("{not json")
    assert onnx_runtime.recorded_agreement(load_scorer(spec, tmp_path)) is None
    model = onnx_runtime.load_for_runtime(spec, torch.device("cpu"), "onnx", tmp_path)
    assert model.network_loaded  # the check ran again, on the torch network
    assert onnx_runtime.recorded_agreement(load_scorer(spec, tmp_path)) is not None  # and was recorded


def test_load_for_runtime_torch_is_the_registry_s_model(fracture):
    model = onnx_runtime.load_for_runtime(fracture.spec, torch.device("cpu"), "torch", exported_dir())
    assert type(model).__name__ == "LoadedModel" and model.runtime == "torch"
