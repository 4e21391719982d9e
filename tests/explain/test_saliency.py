"""medassist.explain.saliency: shapes, non-negativity, where GradCAM points, the letterbox inverse, cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medassist.explain import METHODS, saliency_map, saliency_maps_source, to_source_geometry
from medassist.explain.saliency import FindingLogit, frozen
from medassist.models.spec import PreprocessSpec
from medassist.preprocess.transforms import letterbox_for, prepare_2d

from .conftest import dev_model

SHAPES = [(373, 454), (454, 373), (2140, 1760), (100, 37), (97, 99), (448, 448)]


# --- the letterbox inverse ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_resized_region_maps_back_to_the_whole_source(shape):
    box = letterbox_for(shape, 448)
    region = np.zeros((448, 448), np.float32)
    top, left = box.pad_before
    rows, cols = box.resized_shape
    region[top : top + rows, left : left + cols] = 1.0
    back = to_source_geometry(region, box)
    assert back.shape == shape
    np.testing.assert_allclose(back, 1.0, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_letterbox_matches_what_prepare_2d_does(shape):
    image = np.full(shape, 0.75, np.float32)
    image[0, 0] = 0.0  # a percentile range to scale with
    tensor, box = prepare_2d(image, PreprocessSpec(input_size=448, percentiles=(0.0, 100.0)))
    nonzero = np.argwhere(tensor[0].numpy() > 0.5)
    assert tuple(nonzero.min(0)) == box.pad_before
    assert tuple(nonzero.max(0) - nonzero.min(0) + 1) == box.resized_shape


@pytest.mark.parametrize("shape", [(373, 454), (454, 373), (2140, 1760), (100, 37)])
def test_a_marked_source_point_maps_back_to_itself(shape):
    """A point in the source -> preprocessed input -> a blob there -> to_source peaks on the point."""
    rng = np.random.default_rng(sum(shape))
    box = letterbox_for(shape, 448)
    scale = box.resized_shape[0] / shape[0]
    for _ in range(4):
        r, c = int(rng.integers(3, shape[0] - 3)), int(rng.integers(3, shape[1] - 3))
        image = np.zeros(shape, np.float32)
        image[r, c] = 1.0
        tensor, _ = prepare_2d(image, PreprocessSpec(input_size=448, percentiles=(0.0, 100.0)))
        weights = tensor[0].numpy().astype(np.float64)
        weights /= weights.sum()
        rows, cols = np.indices(weights.shape)
        cy, cx = (weights * rows).sum(), (weights * cols).sum()  # where the point landed
        blob = np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * 3.0**2)).astype(np.float32)
        back = to_source_geometry(blob, box)
        pr, pc = np.unravel_index(int(back.argmax()), back.shape)
        tolerance = max(1.0, 0.6 / scale)  # about half an input pixel, in source pixels
        assert abs(pr - r) <= tolerance and abs(pc - c) <= tolerance, ((r, c), (pr, pc))


def test_to_source_geometry_rejects_a_wrong_size_map():
    with pytest.raises(ValueError):
        to_source_geometry(np.zeros((224, 224)), letterbox_for((300, 400), 448))


# --- the methods ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    return dev_model(input_size=128)


@pytest.mark.parametrize("method", METHODS)
def test_maps_are_non_negative_float32_in_the_input_frame(small_model, method):
    x = torch.rand(2, 1, 128, 128)
    options = {"integrated_gradients": {"n_steps": 4, "internal_batch_size": 4},
               "occlusion": {"window": 32, "stride": 32}}.get(method, {})
    maps = saliency_map(small_model, x, method=method, **options)
    assert maps.shape == (2, 128, 128)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all() and (maps >= 0).all()
    assert maps.max() > 0


def test_single_prepare_2d_output_is_accepted(small_model):
    tensor, _ = prepare_2d(np.random.rand(90, 120).astype(np.float32), small_model.spec.preprocess)
    assert saliency_map(small_model, tensor).shape == (1, 128, 128)


def test_unknown_method_and_wrong_size_are_refused(small_model):
    with pytest.raises(ValueError, match="unknown saliency method"):
        saliency_map(small_model, torch.rand(1, 1, 128, 128), method="lime")
    with pytest.raises(ValueError, match="expects 128"):
        saliency_map(small_model, torch.rand(1, 1, 96, 96))


def test_cell_max_head_is_attributed():
    model = dev_model(input_size=128, score_head="cell_max")
    x = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        expected = model.network.forward_all(x)[1].amax()
        assert torch.allclose(FindingLogit(model.network, "cell_max")(x)[0, 0], expected)
    assert saliency_map(model, x).shape == (1, 128, 128)


@pytest.mark.parametrize("score_head", ["image", "cell_max", "mean"])
def test_gradcam_from_the_scoring_pass_equals_the_full_gradcam(score_head):
    model = dev_model(input_size=128, score_head=score_head, seed=3)
    x = torch.rand(3, 1, 128, 128)
    scores, features = model.scores_and_features(x)
    assert torch.allclose(scores, model.scores(x))
    full = saliency_map(model, x, rectify=False)
    cheap = saliency_map(model, x, features=features, rectify=False)
    assert np.abs(full).max() > 0
    np.testing.assert_allclose(cheap, full, rtol=1e-4, atol=1e-5 * np.abs(full).max())


def test_mean_head_attributes_the_mean_of_both_logits():
    model = dev_model(input_size=128, score_head="mean")
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        logits, cells = model.network.forward_all(x)
        expected = (logits[:, :1] + cells.amax(dim=(1, 2, 3))[:, None]) / 2
        assert torch.allclose(FindingLogit(model.network, "mean")(x), expected)
    with pytest.raises(ValueError, match="score_head"):
        FindingLogit(model.network, "median")


def signal_model(input_size: int = 448):
    """Random conv weights, fresh batch norm, image logit = mean of the last feature map.

    A black input gives zero features everywhere, so the logit (and GradCAM) can only come from
    where the synthetic signal is.
    """
    model = dev_model(input_size=input_size, seed=1)
    with torch.no_grad():
        head = model.network.image_head
        head.weight.fill_(1.0 / head.weight.shape[1])
        head.bias.zero_()
    return model


def test_gradcam_peaks_where_the_signal_is_in_the_input_and_the_source():
    model = signal_model()
    shape = (300, 500)  # letterboxed: resized to 269 x 448, padded 89 rows above
    rows, cols = np.indices(shape)
    cases = [(200, 400), (60, 90), (150, 250)]
    images, boxes = [], []
    for r, c in cases:
        image = np.zeros(shape, np.float32)
        image[(rows - r) ** 2 + (cols - c) ** 2 <= 20**2] = 1.0
        tensor, box = prepare_2d(image, model.spec.preprocess)
        images.append(tensor)
        boxes.append(box)
    batch = torch.stack(images)
    maps = saliency_map(model, batch)  # one batch: maps must not mix between images
    sources = saliency_maps_source(model, batch, boxes)
    for (r, c), m, src, box in zip(cases, maps, sources, boxes):
        ir, ic = box.to_input(r, c)
        pr, pc = np.unravel_index(int(m.argmax()), m.shape)
        assert np.hypot(pr - ir, pc - ic) <= 40, ((ir, ic), (pr, pc))  # within ~one 32 px cell
        sr, sc = np.unravel_index(int(src.argmax()), src.shape)
        assert src.shape == shape
        assert np.hypot(sr - r, sc - c) <= 40 * shape[1] / 448, ((r, c), (sr, sc))


def test_gradcam_backpropagates_from_the_target_layer_only():
    """No graph below layer4, no parameter gradients; flags and mode restored afterwards."""
    model = dev_model(input_size=128)
    net = model.network
    below = [net.backbone.conv1, net.backbone.layer1, net.backbone.layer2, net.backbone.layer3]
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.requires_grad)) for m in below]
    x = torch.rand(2, 1, 128, 128)
    try:
        saliency_map(model, x)
    finally:
        for h in hooks:
            h.remove()
    assert seen and not any(seen)
    assert not x.requires_grad
    assert all(p.grad is None for p in net.parameters())
    assert all(p.requires_grad for p in net.parameters())
    assert not net.training


def test_frozen_restores_training_mode_and_flags():
    model = dev_model(input_size=128)
    net = model.network.train()
    first = next(net.parameters())
    first.requires_grad_(False)
    with frozen(net):
        assert not net.training
        assert not any(p.requires_grad for p in net.parameters())
    assert net.training
    assert not first.requires_grad
    assert sum(p.requires_grad for p in net.parameters()) == len(list(net.parameters())) - 1


def test_cell_probability_is_the_cell_heads_own_map_upsampled_and_the_same_from_features():
    from torch.nn import functional as F

    model = dev_model(input_size=128, seed=5)
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        cells = torch.sigmoid(model.network.forward_all(x)[1])
    expected = F.interpolate(cells, size=(128, 128), mode="bilinear", align_corners=False)[:, 0].numpy()
    full = saliency_map(model, x, method="cell_probability")
    _, features = model.scores_and_features(x)
    cheap = saliency_map(model, x, method="cell_probability", features=features)
    np.testing.assert_allclose(full, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cheap, full, rtol=1e-4, atol=1e-6)
    assert (full > 0).all() and (full < 1).all()  # probabilities, not rectified logits
    # the map's peak is the most probable cell: where a reader is pointed
    peak_cell = np.unravel_index(int(cells[0, 0].argmax()), cells.shape[-2:])
    peak = np.unravel_index(int(full[0].argmax()), full.shape[1:])
    cell_px = 128 // cells.shape[-1]
    assert abs(peak[0] // cell_px - peak_cell[0]) <= 1 and abs(peak[1] // cell_px - peak_cell[1]) <= 1


def test_method_for_takes_the_request_else_the_specs_own_and_refuses_unknown_names():
    import dataclasses

    from medassist.explain.saliency import method_for

    spec = dev_model(input_size=128).spec
    assert method_for(spec) == "gradcam"  # the spec default
    pointing = dataclasses.replace(spec, saliency_method="cell_probability")
    assert method_for(pointing) == "cell_probability"
    assert method_for(pointing, "occlusion") == "occlusion"
    with pytest.raises(ValueError, match="unknown saliency method 'lime'"):
        method_for(dataclasses.replace(spec, saliency_method="lime"))


def test_the_shipped_fracture_model_points_with_its_cell_head():
    from medassist.models.registry import spec_by_name

    assert spec_by_name("fracture_xray").saliency_method == "cell_probability"
    assert spec_by_name("tumor_mri").saliency_method == "gradcam"


def test_the_command_line_offers_exactly_the_saliency_methods():
    from medassist import cli

    assert cli.SALIENCY_METHODS == METHODS
