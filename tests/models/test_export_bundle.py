"""medassist export-model --format monai-bundle: a bundle monai.bundle verifies and runs, scoring as medassist does."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medassist.cli import main
from medassist.errors import MedassistError
from medassist.models.export import EXPORT_FORMATS, export_model
from medassist.models.export_bundle import (
    METADATA_SCHEMA,
    bundle_dir,
    export_monai_bundle,
    metadata_problems,
)
from medassist.models.registry import load_model, models_for
from medassist.preprocess.transforms import prepare_2d
from onnx_helpers import sample_series, shipped

REQUIRED_METADATA = ("version", "monai_version", "pytorch_version", "numpy_version", "task", "description",
                     "authors", "copyright", "data_source", "data_type", "image_classes", "label_classes",
                     "pred_classes", "network_data_format", "intended_use", "licence")
TENSOR_KEYS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
               "is_patch_data", "channel_def")


@functools.lru_cache(maxsize=None)
def exported() -> Path:
    """The fracture model's bundle, written once by the command line."""
    folder = Path(tempfile.mkdtemp(prefix="medassist-bundle-"))
    assert main(["export-model", "fracture_xray", "--format", "monai-bundle", "--out", str(folder)]) == 0
    return folder / "fracture_xray"


@pytest.fixture
def bundle() -> Path:
    return exported()


def sample_displays(spec, n: int = 6) -> list[np.ndarray]:
    """The display images of the first ``n`` sample radiographs the model applies to (medassist's reader)."""
    images = [np.asarray(s.load().display)[0] for s in sample_series() if models_for(s, [spec])][:n]
    assert len(images) == n
    return images


def parser_of(bundle: Path, **override):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    for key, value in override.items():
        parser[key] = value
    return parser


def test_the_bundle_layout_and_weights(bundle):
    spec = shipped("fracture_xray")
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md", "LICENSE"):
        assert (bundle / name).is_file(), name
    data = (bundle / "models" / "model.pt").read_bytes()
    assert hashlib.sha256(data).hexdigest() == spec.sha256
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_metadata_has_the_required_keys_and_medassist_extras(bundle):
    spec = shipped("fracture_xray")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert not [key for key in REQUIRED_METADATA if key not in meta]
    for kind in ("inputs", "outputs"):
        (tensor,) = meta["network_data_format"][kind].values()
        assert not [key for key in TENSOR_KEYS if key not in tensor]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [448, 448]
    assert meta["version"] == spec.version
    extra = meta["medassist"]
    assert extra["threshold"] == spec.threshold and extra["score_head"] == spec.score_head
    assert extra["weights_sha256"] == spec.sha256
    assert metadata_problems(meta) == []
    # nothing points MONAI at a download: no URL but the schema's name
    text = json.dumps({k: v for k, v in meta.items() if k != "schema"})
    assert "http" not in text.replace("http://www.apache.org", "")
    assert "http" not in (bundle / "configs" / "inference.json").read_text()


def test_the_local_check_finds_what_is_missing():
    meta = {"version": "1", "network_data_format": {"inputs": {"image": {"num_channels": 0}}, "outputs": {}}}
    problems = metadata_problems(meta)
    assert "metadata has no 'monai_version'" in problems
    assert "metadata.network_data_format.outputs is empty" in problems
    assert "metadata.network_data_format.inputs.image has no 'dtype'" in problems
    assert "metadata.network_data_format.inputs.image.num_channels is below 1" in problems


def test_monai_verify_metadata_offline_with_the_local_schema(bundle, tmp_path):
    pytest.importorskip("jsonschema")
    from monai.bundle import verify_metadata

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(METADATA_SCHEMA))  # present, so verify_metadata downloads nothing
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema))
    broken = json.loads((bundle / "configs" / "metadata.json").read_text())
    del broken["network_data_format"]["inputs"]["image"]["dtype"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="dtype"):
        verify_metadata(meta_file=str(tmp_path / "broken.json"), filepath=str(schema))


def test_monai_verify_net_in_out(bundle):
    from monai.bundle import verify_net_in_out

    config, meta = str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "metadata.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, device="cpu", bundle_root=str(bundle))


def test_bundle_probabilities_equal_medassist_on_the_sample_radiographs(bundle, tmp_path):
    spec = shipped("fracture_xray")
    images = sample_displays(spec)
    model = load_model(spec, torch.device("cpu"))
    ours = model.scores(torch.stack([prepare_2d(image, spec.preprocess)[0] for image in images])).numpy()

    # the bundle's own chain: LoadImaged of .npy files, MONAI transforms, the scorer
    for i, image in enumerate(images):
        np.save(tmp_path / f"img{i:02d}.npy", image)
    parser = parser_of(bundle, input_dir=str(tmp_path))
    parser.get_parsed_content("initialize")
    with torch.no_grad():
        theirs = parser.get_parsed_content("probabilities").numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)

    # the pieces one by one: preprocessing equals medassist's input, the scorer its score
    preprocessing, scorer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("scorer")
    item = preprocessing({"image": str(tmp_path / "img00.npy")})["image"]
    np.testing.assert_allclose(np.asarray(item), prepare_2d(images[0], spec.preprocess)[0].numpy(), atol=1e-5)
    with torch.no_grad():
        assert scorer(torch.as_tensor(item)[None]).shape == (1, 1)


def test_monai_bundle_run_writes_the_probabilities(bundle, tmp_path):
    spec = shipped("fracture_xray")
    images = sample_displays(spec, 2)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, image in enumerate(images):
        np.save(inputs / f"img{i}.npy", image)
    out = tmp_path / "probabilities.json"
    # monai.bundle.run, what `python -m monai.bundle run` calls (that command line needs `fire`, not installed
    # here), in a fresh interpreter as a user would start it
    args = dict(config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
                bundle_root=str(bundle), input_dir=str(inputs), output_file=str(out), device="$torch.device('cpu')")
    run = subprocess.run([sys.executable, "-c", f"from monai.bundle import run; run(**{args!r})"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    written = json.loads(out.read_text())
    model = load_model(spec, torch.device("cpu"))
    ours = model.scores(torch.stack([prepare_2d(image, spec.preprocess)[0] for image in images])).numpy()
    assert [Path(r["file"]).name for r in written["results"]] == ["img0.npy", "img1.npy"]
    np.testing.assert_allclose([r["probability"] for r in written["results"]], ours, atol=1e-4, rtol=0)
    assert [r["flagged"] for r in written["results"]] == [bool(p >= spec.threshold) for p in ours]
    assert written["threshold"] == spec.threshold


def test_the_volume_model_is_refused_with_the_reason(tmp_path):
    with pytest.raises(MedassistError, match="tumor_mri scores volumes"):
        export_model(shipped("tumor_mri"), "monai-bundle", tmp_path)
    assert not list(tmp_path.iterdir())
    assert main(["export-model", "tumor_mri", "--format", "monai-bundle", "--out", str(tmp_path / "x")]) == 2


def test_a_disagreeing_bundle_is_not_written(tmp_path, monkeypatch):
    from medassist.models import export_bundle

    monkeypatch.setattr(export_bundle, "bundle_probabilities", lambda bundle, images: np.full(len(images), 2.0))
    with pytest.raises(MedassistError, match="not written"):
        export_monai_bundle(shipped("fracture_xray"), tmp_path)
    assert not list(tmp_path.iterdir())


def test_an_existing_folder_that_is_not_a_bundle_is_not_overwritten(tmp_path):
    spec = shipped("fracture_xray")
    (bundle_dir(spec, tmp_path)).mkdir()
    (bundle_dir(spec, tmp_path) / "mine.txt").write_text("keep")
    with pytest.raises(MedassistError, match="not overwritten"):
        export_monai_bundle(spec, tmp_path)
    assert (bundle_dir(spec, tmp_path) / "mine.txt").read_text() == "keep"


def test_an_unknown_format_is_refused_clearly(tmp_path, capsys):
    with pytest.raises(MedassistError, match="--format 'tflite': choose one of monai-bundle, onnx"):
        export_model(shipped("fracture_xray"), "tflite", tmp_path)
    assert main(["export-model", "fracture_xray", "--format", "tflite", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'tflite'" in err and "monai-bundle" in err
    assert not list(tmp_path.iterdir())
    assert "monai-bundle" in EXPORT_FORMATS


def teardown_module():
    if exported.cache_info().currsize:
        shutil.rmtree(exported().parent, ignore_errors=True)
