"""medassist export-model --format onnx: the graph gives torch's logits, and carries its spec's contract."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from medassist.cli import main
from medassist.errors import MedassistError
from medassist.models.export import CONTRACT_KEYS, EXPORT_FORMATS, PREFIX, export_model, onnx_contract, onnx_file
from medassist.models.heads import SCORE_HEADS, head_probabilities
from medassist.models.onnx_runtime import load_scorer
from medassist.models.registry import load_model
from onnx_helpers import MODELS, exported_dir, radiograph_inputs, shipped, volume_inputs

onnx = pytest.importorskip("onnx")


def torch_and_onnx_heads(name: str, inputs: torch.Tensor):
    spec = shipped(name)
    model = load_model(spec, torch.device("cpu"))
    with torch.no_grad():
        ours = head_probabilities(*model.network.forward_all(inputs.contiguous(memory_format=torch.channels_last)))
    image, cells = load_scorer(spec, exported_dir()).logits(inputs)
    theirs = head_probabilities(torch.from_numpy(image), torch.from_numpy(cells))
    return spec, ours, theirs, image


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_scores_match_torch_on_sample_inputs(name):
    spec = shipped(name)
    inputs = volume_inputs(spec).inputs[:6] if spec.input_kind == "volume" else radiograph_inputs(spec, 4)
    spec, ours, theirs, image = torch_and_onnx_heads(name, inputs)
    for head in SCORE_HEADS:
        assert torch.allclose(ours.of(head), theirs.of(head), atol=1e-4, rtol=0), head
    outputs = 4 if name == "tumor_mri" else 1  # the tumour model's type logits travel too
    assert image.shape == (len(inputs), outputs)


def test_batch_axis_is_dynamic():
    path = onnx_file(shipped("fracture_xray"), exported_dir())
    graph = onnx.load(str(path), load_external_data=False).graph
    for value in (*graph.input, *graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    inputs = radiograph_inputs(shipped("fracture_xray"), 3)
    scorer = load_scorer(shipped("fracture_xray"), exported_dir())
    one = scorer.scores(inputs[:1])
    three = scorer.scores(inputs)
    assert three.shape == (3,) and torch.allclose(one, three[:1], atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_metadata_carries_the_preprocessing_contract(name):
    spec = shipped(name)
    stored = {p.key: p.value for p in onnx.load(str(onnx_file(spec, exported_dir()))).metadata_props}
    for key in CONTRACT_KEYS:
        assert PREFIX + key in stored
    assert stored == onnx_contract(spec)
    assert stored["medassist.weights_sha256"] == spec.sha256
    assert int(stored["medassist.input_size"]) == spec.preprocess.input_size
    assert json.loads(stored["medassist.percentiles"]) == list(spec.preprocess.percentiles)
    assert json.loads(stored["medassist.labels"]) == list(spec.labels)
    assert float(stored["medassist.threshold"]) == spec.threshold
    assert stored["medassist.score_head"] == spec.score_head
    assert json.loads(stored["medassist.spec"])["name"] == name


def test_a_spec_with_other_weights_is_refused_naming_the_file():
    spec = dataclasses.replace(shipped("fracture_xray"), sha256="0" * 64)
    path = onnx_file(spec, exported_dir())
    with pytest.raises(MedassistError, match="stale") as err:
        load_scorer(spec, exported_dir())
    assert str(path) in str(err.value)
    assert "exported from weights sha256 " + shipped("fracture_xray").sha256[:16] in str(err.value)
    assert "medassist export-model fracture_xray --format onnx" in str(err.value)


@pytest.mark.parametrize("change", [{"threshold": 0.9}, {"score_head": "image"}, {"labels": ("a", "b")},
                                    {"name": "tumor_mri"}])
def test_any_other_contract_difference_is_refused(change, tmp_path):
    spec = dataclasses.replace(shipped("fracture_xray"), **change)
    (tmp_path / f"{spec.name}.onnx").write_bytes(onnx_file(shipped("fracture_xray"), exported_dir()).read_bytes())
    with pytest.raises(MedassistError, match="does not fit model"):
        load_scorer(spec, tmp_path)


def test_a_missing_export_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(MedassistError, match="no ONNX export of model fracture_xray") as err:
        load_scorer(shipped("fracture_xray"), tmp_path)
    assert str(tmp_path / "fracture_xray.onnx") in str(err.value)


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    (tmp_path / "fracture_xray.onnx").write_bytes(b"not a graph")
    with pytest.raises(MedassistError, match="not a usable ONNX model"):
        load_scorer(shipped("fracture_xray"), tmp_path)


def test_export_model_command_errors(tmp_path, capsys):
    assert main(["export-model", "no_such_model", "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    assert main(["export-model", "fracture_xray", "--format", "tflite", "--out", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())
    with pytest.raises(MedassistError, match="choose one of monai-bundle, onnx"):
        export_model(shipped("fracture_xray"), "tflite", tmp_path)


def test_cli_format_choices_are_the_exporters():
    from medassist import cli

    assert cli.MODEL_FORMATS == tuple(EXPORT_FORMATS)


def test_export_without_out_writes_where_triage_looks(tmp_path, monkeypatch, capsys):
    from medassist.models.onnx_runtime import agreement_file

    monkeypatch.setenv("MEDASSIST_ONNX_DIR", str(tmp_path / "cache"))
    assert main(["export-model", "fracture_xray", "--format", "onnx"]) == 0
    written = tmp_path / "cache" / "fracture_xray.onnx"
    assert written.is_file() and agreement_file(written).is_file()
    assert str(written) in capsys.readouterr().out
    assert main(["export-model", "fracture_xray", "--format", "monai-bundle"]) == 2
    assert "export-model --format monai-bundle needs --out DIR" in capsys.readouterr().err
