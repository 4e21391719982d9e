"""medassist.explain.sanity: model-parameter randomisation (Adebayo et al., NeurIPS 2018)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medassist.explain import saliency_map
from medassist.explain.sanity import (
    map_rank_correlation,
    randomisation_check,
    randomisation_stages,
    randomised_copy,
)
from medassist.preprocess.transforms import prepare_2d

from .conftest import dev_model

SPEARMAN_LIMIT = 0.5


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_stages_run_from_the_heads_to_the_stem():
    names = [name for name, _ in randomisation_stages(dev_model(128).network)]
    assert names == ["heads", "layer4", "layer3", "layer2", "layer1", "stem"]


def test_full_randomisation_changes_every_weight_and_leaves_the_original_alone():
    model = dev_model(128)
    before = _params(model.network)
    copy = randomised_copy(model, mode="full", seed=3)
    for old, new, kept in zip(before, copy.network.parameters(), model.network.parameters()):
        torch.testing.assert_close(kept.detach(), old)  # original untouched
        if old.numel() > 1 and old.std() > 0:  # BN weights reset to the constant 1 are 'changed' too
            assert not torch.equal(new.detach(), old)
    assert copy.spec.preprocess == model.spec.preprocess
    assert copy.spec.name.endswith("randomised-full") and not copy.network.training
    again = randomised_copy(model, mode="full", seed=3)  # seeded: reproducible
    for a, b in zip(copy.network.parameters(), again.network.parameters()):
        torch.testing.assert_close(a, b)


def test_cascading_randomises_the_top_stages_only():
    model = dev_model(128)
    copy = randomised_copy(model, mode="cascading", n_stages=2)
    net, rnd = model.network, copy.network
    assert not torch.equal(net.image_head.weight, rnd.image_head.weight)
    assert not torch.equal(net.backbone.layer4[0].conv1.weight, rnd.backbone.layer4[0].conv1.weight)
    assert torch.equal(net.backbone.layer3[0].conv1.weight, rnd.backbone.layer3[0].conv1.weight)
    assert torch.equal(net.backbone.conv1.weight, rnd.backbone.conv1.weight)
    with pytest.raises(ValueError):
        randomised_copy(model, mode="cascading", n_stages=99)


def test_rank_correlation_basics():
    rng = np.random.default_rng(0)
    a = rng.random((100, 80)).astype(np.float32)
    assert map_rank_correlation(a, a) == pytest.approx(1.0)
    assert map_rank_correlation(a, 2 * a + 1) == pytest.approx(1.0)
    assert map_rank_correlation(a, -a) == pytest.approx(-1.0)
    assert abs(map_rank_correlation(a, rng.random((100, 80)))) < 0.2
    assert map_rank_correlation(a, np.zeros_like(a)) == 0.0
    assert map_rank_correlation(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_trained_gradcam_differs_from_the_randomised_models(shipped_model, sample_images):
    """Adebayo et al.'s check: the maps must depend on the learned weights.

    GradCAM of the shipped model vs. the same architecture fully re-initialised (2 seeds), on the
    sample DX images, compared in source geometry by Spearman rank correlation (maps area-downsampled
    to 64 px): the signed maps (never blank) and the shipped, rectified maps where neither is blank.
    """
    prepared = [prepare_2d(img, shipped_model.spec.preprocess) for img in sample_images]
    batch = torch.stack([t for t, _ in prepared])
    result = randomisation_check(shipped_model, batch, [box for _, box in prepared], seeds=(0, 1))
    print("signed:", result["signed"]["values"])
    print("rectified:", result["rectified"]["values"], "blank pairs:", result["rectified_blank_pairs"])
    assert result["signed"]["n"] == 2 * len(sample_images)
    assert result["signed"]["mean"] < SPEARMAN_LIMIT, result["signed"]
    assert result["signed"]["median"] < SPEARMAN_LIMIT, result["signed"]
    if result["rectified"]["n"]:
        assert result["rectified"]["mean"] < SPEARMAN_LIMIT, result["rectified"]


def test_randomisation_check_runs_on_the_dev_model(sample_images):
    """The same machinery without shipped weights: a model against itself correlates perfectly."""
    model = dev_model(128)
    prepared = [prepare_2d(img, model.spec.preprocess) for img in sample_images[:2]]
    batch = torch.stack([t for t, _ in prepared])
    boxes = [box for _, box in prepared]
    result = randomisation_check(model, batch, boxes, seeds=(0,))
    assert result["signed"]["n"] == 2 and -1.0 <= result["signed"]["mean"] <= 1.0
    same = map_rank_correlation(*(boxes[0].to_source(m[0]) for m in (saliency_map(model, batch),) * 2))
    assert same == pytest.approx(1.0)
